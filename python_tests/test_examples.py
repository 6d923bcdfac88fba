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
