// Output tensors of the CPU kernels that are written in full and are large: the
// backward kernels' gradients, one per token (77 MB at 256 x 196 x 384 float32).
//
// A buffer that size comes from glibc as a fresh mmap at every call, and its first
// write faults in one 4 KiB page at a time: about a fifth of the regularizer's
// backward at 256 images on 2 cores. Where the kernel allows transparent huge pages
// on request (Linux, "madvise" mode), the whole 2 MiB pages inside the buffer are
// asked for before anything touches them, so that the same write faults 512 times
// fewer. Only memory the kernel itself allocated and fills is advised; nothing else
// in the process changes, and the values are the same either way.
#pragma once
#include <ATen/ATen.h>

namespace dse::cpu {

// Asks for huge pages on the whole 2 MiB pages of [data, data + bytes) when bytes is at least
// 32 MiB (smaller blocks are reused from glibc's heap, see fresh_output.cpp) and the platform has the request (Linux); nothing otherwise. For memory
// that the caller owns and has not written yet (the Python layer's large temporaries too).
void advise_huge_pages(void* data, size_t bytes);

// at::empty(sizes, options), contiguous and uninitialized, with huge pages requested for
// the part of it that spans whole 2 MiB pages (advise_huge_pages).
at::Tensor empty_filled_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// The same with x's sizes and options.
inline at::Tensor empty_filled_output_like(const at::Tensor& x) {
  return empty_filled_output(x.sizes(), x.options());
}

}  // namespace dse::cpu
