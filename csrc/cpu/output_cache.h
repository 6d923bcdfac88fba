// Large CPU buffers that are written in full, reused from one call to the next: the CPU
// backward kernels' gradients (one row per token) and the Python layer's temporaries of the
// same size (the normalized tokens, their gradient, avg_l2's gradient; through
// dse_ext._ops._library.empty_for_overwrite).
//
// At 256 x 196 x 384 float32 such a buffer is 77 MB, above glibc's largest mmap threshold
// (32 MiB): a fresh mapping at every call, whose first write faults it in page by page.
// The regularizer takes about seven of them per call, and their page faults cost about a
// quarter of its time at 256 images on 2 cores (bench/RESULTS.md, 2026-12-07). Below that
// threshold glibc's heap did not keep them either: at 64 images (19 MB buffers) two to four
// per call faulted again (4 704 faults, ~8 ms of system time each). Buffers of kCachedOutputMinBytes and more are
// therefore kept when their tensor is freed and handed out again to the next request of
// the same byte size, already mapped. Smaller ones come from glibc's heap.
//
// The cache holds idle buffers only, up to a limit (kDefaultOutputCacheLimit, changeable at
// run time; 0 turns it off). A buffer goes back to it when the last tensor using its memory
// is freed (the storage's deleter), so memory in use is never handed out twice. Values do
// not depend on it: every user writes its buffer in full before reading it.
#pragma once
#include <ATen/ATen.h>

#include <cstddef>

namespace dse::cpu {

inline constexpr size_t kCachedOutputMinBytes = size_t{4} << 20;
inline constexpr size_t kDefaultOutputCacheLimit = size_t{1} << 30;

// at::empty(sizes, options), contiguous and uninitialized, for a result the caller writes in
// full. On the CPU, of kCachedOutputMinBytes or more: an idle cached buffer of the same byte
// size when there is one.
at::Tensor empty_filled_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// The same with x's sizes and options.
inline at::Tensor empty_filled_output_like(const at::Tensor& x) {
  return empty_filled_output(x.sizes(), x.options());
}

struct OutputCacheStats {
  size_t idle_bytes;   // held by the cache, not in use
  size_t idle_blocks;
  size_t limit_bytes;  // most idle bytes the cache keeps
  size_t hits;         // requests served from the cache since the process started
  size_t misses;       // cacheable requests that had to allocate
};
OutputCacheStats output_cache_stats();

// Sets the most idle bytes the cache keeps (0: keep none), freeing the oldest idle buffers
// above it. Returns the previous limit.
size_t set_output_cache_limit(size_t bytes);

// Frees every idle buffer. Returns the bytes freed.
size_t release_output_cache();

}  // namespace dse::cpu
