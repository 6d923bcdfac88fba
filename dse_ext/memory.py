"""The CPU output cache: large buffers that dse_ext's CPU kernels reuse from one call to the next.

A buffer of 4 MiB or more that a CPU kernel writes in full (a gradient with one row per token,
the normalized tokens: 77 MB each at 256 × 196 × 384 float32) is kept when its tensor is freed,
and the next request of the same size gets it back, already mapped in memory. Without it each of
the regularizer's ~7 such buffers per call is fresh memory whose first write page-faults: about a
quarter of its time at 256 images on 2 CPU cores. Only idle buffers are kept, up to a limit
(1 GiB by default); memory in use is never handed out twice, and no value depends on the cache.

Like ``torch.cuda.empty_cache``, :func:`empty_cpu_cache` gives the idle buffers back to the
system, and :func:`set_cpu_cache_limit` bounds (or, with 0, turns off) what is kept::

    import dse_ext.memory
    dse_ext.memory.set_cpu_cache_limit(0)   # keep nothing
    dse_ext.memory.cpu_cache_info()         # {'idle_bytes': 0, ...}
"""

from __future__ import annotations

from ._ops import _library


def _module():
    if _library._C is None:
        raise RuntimeError(f"dse_ext's compiled module is not available ({_library.IMPORT_ERROR}): "
                           "there is no CPU output cache without it")
    return _library._C


def cpu_cache_info() -> dict:
    """The cache's state: ``idle_bytes`` and ``idle_blocks`` (kept, not in use), ``limit_bytes``,
    and since the process started ``hits`` (requests served from it) and ``misses`` (requests of
    cacheable size that allocated)."""
    idle_bytes, idle_blocks, limit_bytes, hits, misses = _module()._output_cache_stats()
    return {"idle_bytes": idle_bytes, "idle_blocks": idle_blocks, "limit_bytes": limit_bytes, "hits": hits,
            "misses": misses}


def set_cpu_cache_limit(limit_bytes: int) -> int:
    """Keep at most ``limit_bytes`` of idle buffers (0: none, the cache is off); the oldest idle
    buffers above it are freed now. Returns the previous limit."""
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 0:
        raise ValueError(f"limit_bytes must be a non-negative int, got {limit_bytes!r}")
    return int(_module()._set_output_cache_limit(limit_bytes))


def empty_cpu_cache() -> int:
    """Free every idle buffer; returns the bytes freed. Buffers in use are not affected (they
    return to the cache when freed, while the limit allows)."""
    return int(_module()._release_output_cache())


__all__ = ["cpu_cache_info", "set_cpu_cache_limit", "empty_cpu_cache"]
