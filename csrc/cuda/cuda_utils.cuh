// Launch helpers shared by the CUDA kernels: device guard and stream, launch
// geometry and error checks. Every kernel runs on the current stream of its
// tensors' device and is checked right after launch. (Argument checks: common/<op>_args.h.)
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

}  // namespace dse::cuda
