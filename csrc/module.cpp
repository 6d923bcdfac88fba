// The Python extension module dse_ext._C. Importing it runs the static
// registrars of csrc/ops.cpp and of the device kernels, which makes
// torch.ops.dse.* available. It exposes build information, test hooks and the
// CPU output cache (csrc/cpu/output_cache.h); all computation goes through the
// dispatcher. Import torch before this module.
#include <ATen/DLConvertor.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu/output_cache.h"
#include "cpu/interleaved.h"
#include "cpu/lapack.h"

#include <stdexcept>
#include <string>
#include <vector>

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

namespace {

at::ScalarType scalar_type_named(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  throw std::invalid_argument("dse_ext._C._empty_filled_output: unsupported dtype " + name);
}

// Destructor of a DLPack capsule: frees the tensor unless torch.from_dlpack took it (it
// renames the capsule "used_dltensor").
void free_unused_dltensor(PyObject* capsule) {
  if (!PyCapsule_IsValid(capsule, "dltensor")) return;
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
  if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
}

}  // namespace

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
  // Large CPU buffers reused across calls (csrc/cpu/output_cache.h). _empty_filled_output
  // returns one as a DLPack capsule (torch.from_dlpack makes it a tensor) for
  // dse_ext._ops._library.empty_for_overwrite; the others inspect and control the cache for
  // dse_ext.memory.
  m.attr("cached_output_min_bytes") = dse::cpu::kCachedOutputMinBytes;
  m.def("_empty_filled_output", [](const std::vector<int64_t>& shape, const std::string& dtype) {
    const at::Tensor out = dse::cpu::empty_filled_output(shape, at::TensorOptions().dtype(scalar_type_named(dtype)));
    PyObject* capsule = PyCapsule_New(at::toDLPack(out), "dltensor", &free_unused_dltensor);
    if (capsule == nullptr) throw pybind11::error_already_set();
    return pybind11::reinterpret_steal<pybind11::object>(capsule);
  });
  m.def("_output_cache_stats", []() {
    const dse::cpu::OutputCacheStats s = dse::cpu::output_cache_stats();
    return pybind11::make_tuple(s.idle_bytes, s.idle_blocks, s.limit_bytes, s.hits, s.misses);
  });
  m.def("_set_output_cache_limit", [](size_t bytes) { return dse::cpu::set_output_cache_limit(bytes); });
  m.def("_release_output_cache", []() { return dse::cpu::release_output_cache(); });
  m.attr("direct_lapack") = dse::cpu::uses_direct_lapack();      // BLAS/LAPACK called without ATen
  m.attr("cpu_simd") = std::string(dse::cpu::interleaved_isa());  // "avx2" or "portable"
}
