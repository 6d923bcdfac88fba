// Launch helpers shared by the CUDA kernels: device guard and stream, launch
// geometry and error checks. Every kernel runs on the current stream of its
// tensors' device and is checked right after launch.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

namespace dse::cuda {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t work, int threads = kThreads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 1 << 30)));
}

inline void check_on_device(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.device() == like.device(), "dse::", op, ": ", name, " is on ", t.device(), " but x is on ",
              like.device());
}

}  // namespace dse::cuda
