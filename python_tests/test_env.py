"""`dse env`: the block users paste into bug reports."""

import json

import torch

import dse_ext
from dse_ext import cli, environment


def test_env_prints_versions_build_and_devices(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"dse_ext {dse_ext.__version__}\n")
    assert f"torch {torch.__version__}" in out
    assert f"compiled=" in out and "validated on a GPU=" in out and "usable here=" in out
    assert "device cpu:" in out
    assert (f"device cuda:0" in out) == torch.cuda.is_available()


def test_env_json_agrees_with_the_library(capsys):
    assert cli.main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["build"] == dse_ext.build_info()
    assert env["cuda_kernels"]["compiled"] == dse_ext.cuda_built()
    assert env["cuda_kernels"]["usable"] == (dse_ext.cuda_built() and torch.cuda.is_available())
    assert env["packages"]["torch"] is not None and env["torch_cuda"] == torch.version.cuda
    assert env["devices"][0]["threads"] == torch.get_num_threads()


def test_env_names_missing_packages_and_a_missing_build(monkeypatch):
    monkeypatch.setattr(environment, "_version", lambda name: None if name == "transformers" else "1.0")
    env = environment.environment()
    env["build"] = {"extension": False, "error": "No module named 'dse_ext._C'"}
    text = environment.format_environment(env)
    assert "transformers (not installed)" in text
    assert "compiled operators: NOT LOADED (No module named 'dse_ext._C')" in text
