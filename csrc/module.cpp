// The Python extension module dse_ext._C. Importing it runs the static
// registrars of csrc/ops.cpp and of the device kernels, which makes
// torch.ops.dse.* available. It exposes only build information; all
// computation goes through the dispatcher. Import torch before this module.
#include <pybind11/pybind11.h>

#include "cpu/interleaved.h"
#include "cpu/lapack.h"

#include <string>

#ifndef DSE_VERSION
#define DSE_VERSION "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "dse_ext compiled operators (registered as torch.ops.dse.*)";
  m.attr("__version__") = DSE_VERSION;
#ifdef DSE_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("direct_lapack") = dse::cpu::uses_direct_lapack();      // BLAS/LAPACK called without ATen
  m.attr("cpu_simd") = std::string(dse::cpu::interleaved_isa());  // "avx2" or "portable"
}
