// Large CPU outputs with huge pages requested before their first write (cpu/fresh_output.h).
#include "cpu/fresh_output.h"

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace dse::cpu {
namespace {
constexpr uintptr_t kHugePage = uintptr_t{1} << 21;  // 2 MiB, x86-64's and most aarch64 kernels'
// Smaller blocks come from glibc's heap once one of their size was freed (its mmap threshold
// follows freed blocks up to 32 MiB on 64-bit): their pages are reused, not faulted afresh, and
// asking for huge pages there only measured slower (64 x 196 x 384 float32 tokens, 19 MB).
constexpr size_t kHugePageMinBytes = size_t{32} << 20;
}  // namespace

void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (data == nullptr || bytes < kHugePageMinBytes) return;
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1), last = (begin + bytes) & ~(kHugePage - 1);
  // A request, not a requirement: where the kernel says no (THP off, old kernel) the
  // pages stay 4 KiB and nothing else changes, so the result is not checked.
  if (last > first) (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

at::Tensor empty_filled_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
  advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
}

}  // namespace dse::cpu
