# Locate libtorch through the Python interpreter that will import the module.
#
# We do not call find_package(Torch): with a CUDA build of torch its config
# probes the CUDA toolkit (and, without TORCH_CUDA_ARCH_LIST, a GPU) even for a
# CPU-only extension. The extension only needs torch's headers and libraries.
#
# Defines:
#   dse::torch          INTERFACE target (headers + libtorch, libtorch_cpu, libc10)
#   DSE_TORCH_LIB_DIR   directory holding torch's shared libraries
#   DSE_TORCH_HAS_CUDA  TRUE when torch was built with CUDA
#   DSE_TORCH_CUDA_VERSION  e.g. "13.0" (empty for a CPU torch)

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import torch, os; from torch.utils import cpp_extension as c; print(';'.join(c.include_paths())); print(os.path.join(os.path.dirname(torch.__file__), 'lib')); print(torch.version.cuda or ''); print(torch.__version__)"
  OUTPUT_VARIABLE _dse_torch_info
  RESULT_VARIABLE _dse_torch_rc
  ERROR_VARIABLE _dse_torch_err
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _dse_torch_rc EQUAL 0)
  message(FATAL_ERROR "dse_ext needs torch importable from ${Python_EXECUTABLE} at build time "
                      "(build with `pip install --no-build-isolation .` in an environment that has torch):\n${_dse_torch_err}")
endif()
string(REPLACE "\n" ";" _dse_torch_lines "${_dse_torch_info}")
list(LENGTH _dse_torch_lines _n)
# include_paths is itself ';'-separated, so read the fixed fields from the end.
math(EXPR _i_ver "${_n} - 1")
math(EXPR _i_cuda "${_n} - 2")
math(EXPR _i_lib "${_n} - 3")
list(GET _dse_torch_lines ${_i_ver} DSE_TORCH_VERSION)
list(GET _dse_torch_lines ${_i_cuda} DSE_TORCH_CUDA_VERSION)
list(GET _dse_torch_lines ${_i_lib} DSE_TORCH_LIB_DIR)
list(SUBLIST _dse_torch_lines 0 ${_i_lib} _dse_torch_includes)
if(DSE_TORCH_CUDA_VERSION)
  set(DSE_TORCH_HAS_CUDA TRUE)
else()
  set(DSE_TORCH_HAS_CUDA FALSE)
endif()
message(STATUS "dse_ext: torch ${DSE_TORCH_VERSION} (CUDA: ${DSE_TORCH_HAS_CUDA} ${DSE_TORCH_CUDA_VERSION}) from ${DSE_TORCH_LIB_DIR}")

foreach(_lib torch torch_cpu c10)
  find_library(DSE_LIB_${_lib} NAMES ${_lib} PATHS "${DSE_TORCH_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
endforeach()

add_library(dse_torch INTERFACE)
add_library(dse::torch ALIAS dse_torch)
target_include_directories(dse_torch SYSTEM INTERFACE ${_dse_torch_includes})
target_link_libraries(dse_torch INTERFACE ${DSE_LIB_torch} ${DSE_LIB_torch_cpu} ${DSE_LIB_c10})
