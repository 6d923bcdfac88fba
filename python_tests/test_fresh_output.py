"""empty_for_overwrite: the large temporaries of the token normalization and avg_l2, with huge pages
asked for before their first write (csrc/cpu/fresh_output.h). What must hold whatever the kernel
grants: a plain contiguous tensor, and memory that the request never alters."""

import pytest
import torch

from dse_ext._ops import _library
from dse_ext._ops._library import empty_for_overwrite

LARGE = (9, 1031, 1027)  # 38 MB of float32: above the 32 MiB threshold, not a multiple of 2 MiB


@pytest.mark.parametrize("shape", [(2, 3, 5), LARGE, (0, 384)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contiguous_of_the_shape_and_dtype_and_writable_throughout(shape, dtype):
    like = torch.zeros(1, dtype=dtype)
    out = empty_for_overwrite(shape, like)
    assert out.shape == shape and out.dtype == dtype and out.device == like.device and out.is_contiguous()
    out.copy_(torch.arange(out.numel(), dtype=dtype).view(shape))
    assert torch.equal(out.view(-1), torch.arange(out.numel(), dtype=dtype))


def test_without_the_compiled_module_it_is_a_plain_empty_tensor(monkeypatch):
    monkeypatch.setattr(_library, "_C", None)
    out = empty_for_overwrite(LARGE, torch.zeros(1))
    assert out.shape == LARGE and out.is_contiguous()


@pytest.mark.skipif(_library._C is None, reason="dse_ext was imported without its compiled module")
def test_the_request_never_changes_memory_already_written():
    values = torch.randn(LARGE, generator=torch.Generator().manual_seed(0))
    copy = values.clone()
    _library._C._advise_huge_pages(values.data_ptr(), values.nbytes)       # whole buffer, odd ends
    _library._C._advise_huge_pages(values.data_ptr() + 4096, 33 << 20)     # a range inside it
    _library._C._advise_huge_pages(values.data_ptr(), 100)                 # below the threshold: nothing
    assert torch.equal(values, copy)
