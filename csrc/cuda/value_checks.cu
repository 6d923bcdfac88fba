#include "cuda/value_checks.cuh"

#include "cuda/cuda_utils.cuh"

namespace dse::cuda {
namespace {

// One message per check: the device prints the asserted expression, so each reads as a
// sentence. (Device assertions take only string literals.)
__global__ void value_check_kernel(const bool* __restrict__ ok, int what) {
  const bool pass = *ok;
  switch (static_cast<ValueCheck>(what)) {
    case ValueCheck::kLabelRange:
      CUDA_KERNEL_ASSERT(pass && "dse: labels must lie in [-1, k) (-1 = ignored point); run the op on the CPU "
                                 "for the offending values");
      break;
    case ValueCheck::kRankIndexRange:
      CUDA_KERNEL_ASSERT(pass && "dse::effective_rank: index must lie in [0, rows of x)");
      break;
    case ValueCheck::kKmeansCounts:
      CUDA_KERNEL_ASSERT(pass && "dse::kmeans: every counts[p] must lie in [k, M]; pass counts on the CPU for "
                                 "a message naming the problem");
      break;
    case ValueCheck::kCssSizes:
      CUDA_KERNEL_ASSERT(pass && "dse::cluster_css: sizes must equal the member counts of labels");
      break;
  }
}

}  // namespace

void enforce_on_device(const PendingChecks& checks) {
  for (const PendingCheck& check : checks) {
    TORCH_INTERNAL_ASSERT(check.ok.is_cuda() && check.ok.scalar_type() == at::kBool && check.ok.numel() == 1);
    value_check_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(check.ok.const_data_ptr<bool>(),
                                                                       static_cast<int>(check.what));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace dse::cuda
