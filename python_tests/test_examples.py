"""The README's examples run as written."""

import importlib.util
import math
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_with_regularizers_runs():
    out = load("train_with_regularizers").main(steps=3, batch=8)
    assert math.isfinite(out["ssl"]) and math.isfinite(out["dse"])


README = EXAMPLES.parent / "README.md"


def readme_block(marker):
    """The fenced block right after ``<!-- marker -->`` in the README."""
    text = README.read_text()
    start = text.index(f"<!-- {marker} -->")
    body = text[text.index("```", start):]
    body = body[body.index("\n") + 1:]
    return body[:body.index("```")]


def test_readme_scoring_commands_run_as_written(tmp_path):
    import os
    import subprocess
    import sys

    import pytest

    pytest.importorskip("timm")
    pytest.importorskip("matplotlib")
    (tmp_path / "examples").symlink_to(EXAMPLES)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    commands = readme_block("readme-commands: scoring")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (tmp_path / "toy" / "results.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("checkpoint,epoch,step,dse")
    assert "DSE" in done.stdout and (tmp_path / "toy" / "selection.json").exists()
    assert (tmp_path / "toy" / "dse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The Python form of the same, on the files the commands made.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace = {}
        exec(readme_block("readme-python: scoring"), namespace)
    finally:
        os.chdir(cwd)
    assert namespace["selection"].best["checkpoint"].startswith("toy/checkpoint")
    assert namespace["report"].skipped  # the table existed: nothing scored twice

    # Other scores added to the same table, selection by one of them, and the comparison.
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("readme-commands: scores")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "given only the scores they lacked" in done.stderr and "by rankme" in done.stdout
    assert "Kendall" not in done.stdout and "dse_lambda" in done.stdout and "epoch" in done.stdout
    header = (tmp_path / "toy" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"rankme", "dense_rankme", "alpha_req", "lidar"} <= set(header)
    assert (tmp_path / "toy" / "compare.json").exists() and (tmp_path / "toy" / "compare.csv").exists()
