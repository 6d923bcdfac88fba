import os

import pytest
import torch

import dse_ext


def pytest_configure(config):
    # The suite tests the compiled operators; a silent fallback to the reference would
    # make every comparison trivially pass.
    if not dse_ext.extension_available() and not os.environ.get("DSE_ALLOW_NO_EXTENSION"):
        raise pytest.UsageError(
            f"dse_ext was imported from {dse_ext.__file__} without its compiled module "
            f"({dse_ext._ops.IMPORT_ERROR}); install it with `make install` first"
        )


def pytest_report_header(config):
    return f"dse_ext {dse_ext.__version__} from {os.path.dirname(dse_ext.__file__)}, cuda kernels: {dse_ext.cuda_built()}"


@pytest.fixture
def gen():
    """A local generator: tests never touch torch's global RNG."""
    return torch.Generator().manual_seed(1234)
