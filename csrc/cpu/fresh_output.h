// Large buffers that are written in full: the CPU backward kernels' gradients, one row
// per token, and the Python layer's temporaries of the same size (the normalized tokens,
// their gradient, avg_l2's gradient; dse_ext._ops._library.empty_for_overwrite).
//
// At 256 x 196 x 384 float32 such a buffer is 77 MB, above glibc's largest mmap
// threshold (32 MiB), so it is a fresh mapping at every call and its first write faults
// one 4 KiB page at a time: together about a sixth of the regularizer's time at 256
// images on 2 cores, in a process that does nothing else (with other large allocations
// in between, 2 MiB pages may not be free and the saving disappears: bench/RESULTS.md,
// 2026-12-06). Where the kernel grants transparent huge pages on request (Linux,
// "madvise" mode), the whole 2 MiB pages inside such a buffer are asked for before
// anything touches it, so that the same write faults 512 times fewer. Only those buffers
// are advised; nothing else in the process changes, and the values are the same either way.
#pragma once
#include <ATen/ATen.h>

namespace dse::cpu {

// Asks for huge pages on the whole 2 MiB pages of [data, data + bytes) when bytes is at
// least 32 MiB (smaller blocks are reused from glibc's heap, see fresh_output.cpp) and the
// platform has the request (Linux); nothing otherwise. For memory that the caller owns and
// has not written yet.
void advise_huge_pages(void* data, size_t bytes);

// at::empty(sizes, options), contiguous and uninitialized, with huge pages requested for
// the part of it that spans whole 2 MiB pages (advise_huge_pages).
at::Tensor empty_filled_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// The same with x's sizes and options.
inline at::Tensor empty_filled_output_like(const at::Tensor& x) {
  return empty_filled_output(x.sizes(), x.options());
}

}  // namespace dse::cpu
