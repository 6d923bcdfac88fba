// The Python extension module dse_ext._C. Importing it runs the static
// registrars of csrc/ops.cpp and of the device kernels, which makes
// torch.ops.dse.* available. It exposes build information, test hooks and one
// memory helper; all computation goes through the dispatcher. Import torch
// before this module.
#include <pybind11/pybind11.h>

#include "cpu/fresh_output.h"
#include "cpu/interleaved.h"
#include "cpu/lapack.h"

#include <string>

#ifdef DSE_WITH_CUDA
#include "common/eigen_solver_choice.h"
namespace dse::cuda {
EigenSolver set_eigen_solver(EigenSolver solver);
bool inject_eigen_failure(bool on);
int64_t set_css_batch_budget(int64_t bytes);
bool have_batched_syev();
void defer_eigen_status(int32_t* flag, int device);
}  // namespace dse::cuda
#endif

#ifndef DSE_VERSION
#define DSE_VERSION "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "dse_ext compiled operators (registered as torch.ops.dse.*)";
  m.attr("__version__") = DSE_VERSION;
#ifdef DSE_WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_batched_syev") = dse::cuda::have_batched_syev();  // cusolverDnXsyevBatched compiled in
  // Test hook: pin the CUDA eigensolver ("auto", "jacobi", "batched", "torch"); returns the previous one.
  m.def("_set_cuda_eigen_solver", [](const std::string& name) {
    return std::string(dse::eigen_solver_name(dse::cuda::set_eigen_solver(dse::eigen_solver_from_name(name))));
  });
  // Test hook: treat every batched cuSOLVER call as failed (the fallbacks then run); returns the previous setting.
  m.def("_inject_cuda_eigen_failure", [](bool on) { return dse::cuda::inject_eigen_failure(on); });
  // Test hook: the byte budget of a CUDA css chunk (csrc/common/css_batches.h; <= 0 restores the
  // default); returns the previous one.
  m.def("_set_cuda_css_batch_budget", [](int64_t bytes) { return dse::cuda::set_css_batch_budget(bytes); });
  // Deferred eigensolver status for this thread (cuda/solver.cuh): the address of a 0-dim int32
  // CUDA tensor the caller keeps alive, and its device index; address 0 ends it. Used by
  // dse_ext._ops.deferred_eigen_status.
  m.def("_defer_cuda_eigen_status", [](uintptr_t address, int device) {
    dse::cuda::defer_eigen_status(reinterpret_cast<int32_t*>(address), device);
  });
#else
  m.attr("with_cuda") = false;
  m.attr("cuda_batched_syev") = false;
#endif
  // Huge pages for a large CPU buffer the caller owns and has not written yet (address, bytes):
  // used by dse_ext._ops._library.empty_for_overwrite; see csrc/cpu/fresh_output.h.
  m.def("_advise_huge_pages", [](uintptr_t address, size_t bytes) {
    dse::cpu::advise_huge_pages(reinterpret_cast<void*>(address), bytes);
  });
  m.attr("direct_lapack") = dse::cpu::uses_direct_lapack();      // BLAS/LAPACK called without ATen
  m.attr("cpu_simd") = std::string(dse::cpu::interleaved_isa());  // "avx2" or "portable"
}
