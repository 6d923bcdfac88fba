"""The CPU output cache (csrc/cpu/output_cache.h, dse_ext.memory): large buffers written in full,
reused from one call to the next. What must hold: plain contiguous tensors of the asked shape and
dtype, memory in use never handed out twice, the limit obeyed, and values that do not depend on it."""

import threading

import pytest
import torch

import dse_ext
import dse_ext.memory as memory
from dse_ext._ops import _library
from dse_ext._ops._library import empty_for_overwrite

LARGE = (9, 1031, 1027)  # 38 MB of float32: above the 4 MiB threshold
needs_module = pytest.mark.skipif(_library._C is None, reason="dse_ext was imported without its compiled module")


@pytest.fixture
def fresh_cache():
    """An empty cache with the default limit, restored afterwards."""
    previous = memory.set_cpu_cache_limit(1 << 30)
    memory.empty_cpu_cache()
    yield
    memory.empty_cpu_cache()
    memory.set_cpu_cache_limit(previous)


@pytest.mark.parametrize("shape", [(2, 3, 5), LARGE, (0, 384)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_contiguous_of_the_shape_and_dtype_and_writable_throughout(shape, dtype):
    like = torch.zeros(1, dtype=dtype)
    out = empty_for_overwrite(shape, like)
    assert out.shape == shape and out.dtype == dtype and out.device == like.device and out.is_contiguous()
    values = torch.arange(out.numel(), dtype=torch.float64).remainder(251).to(dtype).view(shape)
    out.copy_(values)
    assert torch.equal(out, values)


def test_without_the_compiled_module_it_is_a_plain_empty_tensor(monkeypatch):
    monkeypatch.setattr(_library, "_C", None)
    out = empty_for_overwrite(LARGE, torch.zeros(1))
    assert out.shape == LARGE and out.is_contiguous()
    with pytest.raises(RuntimeError, match="compiled module is not available"):
        memory.cpu_cache_info()


@needs_module
def test_a_freed_buffer_is_handed_out_again_and_a_live_one_never(fresh_cache):
    a = empty_for_overwrite(LARGE, torch.zeros(1))
    address = a.data_ptr()
    b = empty_for_overwrite(LARGE, torch.zeros(1))  # a is alive: b is other memory
    assert b.data_ptr() != address
    info = memory.cpu_cache_info()
    assert info["idle_blocks"] == 0 and info["misses"] >= 2
    del a
    assert memory.cpu_cache_info()["idle_bytes"] == 9 * 1031 * 1027 * 4
    c = empty_for_overwrite(LARGE, torch.zeros(1))
    assert c.data_ptr() == address and memory.cpu_cache_info()["idle_blocks"] == 0
    other = empty_for_overwrite((9, 1031, 1028), torch.zeros(1))  # another size: not that block
    assert other.data_ptr() not in (address, b.data_ptr())


@needs_module
@pytest.mark.parametrize("batch", [16, 64])
def test_the_batches_of_a_regularizer_step_are_kept_too(fresh_cache, batch):
    # 4.8 MB and 19 MB of float32 tokens: below glibc's mmap threshold, but its heap gave such
    # buffers back to the system between calls, and they page-faulted again on every call.
    shape = (batch, 196, 384)
    address = empty_for_overwrite(shape, torch.zeros(1)).data_ptr()  # freed at once
    assert memory.cpu_cache_info()["idle_bytes"] == batch * 196 * 384 * 4
    assert empty_for_overwrite(shape, torch.zeros(1)).data_ptr() == address


@needs_module
def test_a_view_keeps_its_buffer_in_use(fresh_cache):
    a = empty_for_overwrite(LARGE, torch.zeros(1))
    view = a[1:3]
    view.fill_(7.0)
    del a
    assert memory.cpu_cache_info()["idle_blocks"] == 0  # the view still uses the memory
    b = empty_for_overwrite(LARGE, torch.zeros(1))
    b.fill_(-1.0)
    assert bool((view == 7.0).all())
    del view
    assert memory.cpu_cache_info()["idle_blocks"] == 1


@needs_module
def test_the_limit_bounds_what_is_kept_and_zero_turns_the_cache_off(fresh_cache):
    block = 9 * 1031 * 1027 * 4
    assert memory.set_cpu_cache_limit(block + 1) == 1 << 30
    a, b = empty_for_overwrite(LARGE, torch.zeros(1)), empty_for_overwrite(LARGE, torch.zeros(1))
    del a, b
    assert memory.cpu_cache_info()["idle_blocks"] == 1  # the second did not fit
    memory.set_cpu_cache_limit(0)
    assert memory.cpu_cache_info()["idle_bytes"] == 0  # lowering the limit frees at once
    c = empty_for_overwrite(LARGE, torch.zeros(1))
    del c
    assert memory.cpu_cache_info()["idle_bytes"] == 0
    memory.set_cpu_cache_limit(1 << 30)
    d = empty_for_overwrite(LARGE, torch.zeros(1))
    del d
    assert memory.empty_cpu_cache() == block and memory.cpu_cache_info()["idle_bytes"] == 0
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="limit_bytes"):
            memory.set_cpu_cache_limit(bad)


@needs_module
def test_threads_never_share_a_buffer(fresh_cache):
    shape = (8, 1024, 1025)  # 33.6 MB
    errors = []

    def worker(value: float):
        try:
            for _ in range(10):
                t = empty_for_overwrite(shape, torch.zeros(1))
                t.fill_(value)
                if not bool((t == value).all()):
                    errors.append(value)
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(float(i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert memory.cpu_cache_info()["hits"] > 0


@needs_module
def test_the_regularizer_gives_the_same_bits_with_and_without_the_cache(fresh_cache):
    # 8 x 196 x 5376 float32 is 33.7 MB: the token-sized buffers go through the cache.
    tokens = torch.randn(8, 196, 5376, generator=torch.Generator().manual_seed(0), requires_grad=True)
    reg = dse_ext.DSERegularizer(seed=0)
    results = []
    for limit in (0, 1 << 30, 1 << 30):  # off; on and empty; on and warm
        memory.set_cpu_cache_limit(limit)
        loss = reg(tokens)
        loss.backward()
        results.append((loss.detach().clone(), tokens.grad.clone()))
        tokens.grad = None
    assert memory.cpu_cache_info()["hits"] > 0
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])
