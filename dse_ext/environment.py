"""What this installation is and what it can run on: the block ``dse env`` prints for bug reports."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

__all__ = ["environment", "format_environment"]

# Packages whose versions matter to dse_ext's results or features (absent ones are reported so).
PACKAGES = ("torch", "numpy", "timm", "transformers", "safetensors", "pillow", "scipy", "matplotlib", "lightning",
            "tqdm")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _devices() -> list[dict]:
    devices = [{"device": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"device": f"cuda:{i}", "name": props.name, "capability": f"{props.major}.{props.minor}",
                            "memory_gib": round(props.total_memory / 2**30, 1)})
    return devices


def environment() -> dict:
    """Versions, the build of the compiled operators and the devices seen, as a JSON-able dict.

    ``cuda_kernels`` says whether CUDA kernels were compiled into this build (``compiled``),
    whether they have passed the test table on a GPU (``validated``, see
    :data:`dse_ext._ops._library.CUDA_VALIDATED`) and whether they can run here (``usable``:
    compiled and a GPU visible to torch).
    """
    from . import __version__
    from ._ops import build_info, cuda_built, has_kernel
    from ._ops._library import CUDA_VALIDATED

    usable = cuda_built() and torch.cuda.is_available() and has_kernel(torch.device("cuda"))
    return {
        "dse_ext": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: torch.__version__ if name == "torch" else _version(name) for name in PACKAGES},
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "build": build_info(),
        "cuda_kernels": {"compiled": cuda_built(), "validated": CUDA_VALIDATED, "usable": bool(usable)},
        "devices": _devices(),
    }


def format_environment(env: dict | None = None) -> str:
    """:func:`environment` as the text block to paste into a bug report."""
    env = environment() if env is None else env
    lines = [f"dse_ext {env['dse_ext']}", f"python {env['python']} on {env['platform']}"]
    packages = env["packages"]
    lines.append("packages: " + ", ".join(f"{name} {version or '(not installed)'}" for name, version in packages.items()))
    lines.append(f"torch built with CUDA {env['torch_cuda'] or '(none: CPU build)'}; "
                 f"torch.cuda.is_available(): {env['cuda_available']}")
    build = env["build"]
    if build.get("extension"):
        lines.append("compiled operators: " + ", ".join(f"{k}={v}" for k, v in build.items() if k != "extension"))
    else:
        lines.append(f"compiled operators: NOT LOADED ({build.get('error')})")
    cuda = env["cuda_kernels"]
    lines.append(f"CUDA kernels: compiled={cuda['compiled']}, validated on a GPU={cuda['validated']}, "
                 f"usable here={cuda['usable']}")
    for device in env["devices"]:
        details = ", ".join(f"{k}={v}" for k, v in device.items() if k != "device")
        lines.append(f"device {device['device']}: {details}")
    return "\n".join(lines)
