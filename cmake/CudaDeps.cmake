# What the CUDA kernels link besides libtorch: torch's CUDA libraries, the CUDA
# runtime (from the toolkit of nvcc), cuSOLVER and cuBLAS. The last two come from
# the toolkit when it has them, else from the pip nvidia wheels that come with a
# CUDA build of torch (site-packages/nvidia/cu13/{include,lib} and older per-library
# layouts), which ship versioned libcusolver.so.N files without the unversioned link.
#
# Sets DSE_CUDA_DEPS_MISSING (empty when everything was found) and, when found,
# the INTERFACE target dse::cuda_deps and DSE_CUDA_RPATH (directories of the libraries).

find_package(CUDAToolkit QUIET)
set(DSE_CUDA_DEPS_MISSING "")
if(NOT CUDAToolkit_FOUND)
  set(DSE_CUDA_DEPS_MISSING "the CUDA toolkit (cudart)")
  return()
endif()

get_filename_component(_dse_site "${DSE_TORCH_LIB_DIR}/../.." ABSOLUTE)
file(GLOB _dse_nv_roots LIST_DIRECTORIES true
     "${_dse_site}/nvidia/cu[0-9]*" "${_dse_site}/nvidia/cusolver" "${_dse_site}/nvidia/cublas")
set(_dse_inc_hints ${CUDAToolkit_INCLUDE_DIRS})
set(_dse_lib_hints ${CUDAToolkit_LIBRARY_DIR})
foreach(_root IN LISTS _dse_nv_roots)
  list(APPEND _dse_inc_hints "${_root}/include")
  list(APPEND _dse_lib_hints "${_root}/lib")
endforeach()

find_path(DSE_CUSOLVER_INCLUDE_DIR cusolverDn.h HINTS ${_dse_inc_hints} NO_DEFAULT_PATH)
find_path(DSE_CUBLAS_INCLUDE_DIR cublas_v2.h HINTS ${_dse_inc_hints} NO_DEFAULT_PATH)
find_library(DSE_CUSOLVER_LIB NAMES cusolver libcusolver.so.12 libcusolver.so.11
             HINTS ${_dse_lib_hints} NO_DEFAULT_PATH)
find_library(DSE_CUBLAS_LIB NAMES cublas libcublas.so.13 libcublas.so.12
             HINTS ${_dse_lib_hints} NO_DEFAULT_PATH)
find_library(DSE_LIB_torch_cuda NAMES torch_cuda PATHS "${DSE_TORCH_LIB_DIR}" NO_DEFAULT_PATH)
find_library(DSE_LIB_c10_cuda NAMES c10_cuda PATHS "${DSE_TORCH_LIB_DIR}" NO_DEFAULT_PATH)
foreach(_var DSE_CUSOLVER_INCLUDE_DIR DSE_CUBLAS_INCLUDE_DIR DSE_CUSOLVER_LIB DSE_CUBLAS_LIB
             DSE_LIB_torch_cuda DSE_LIB_c10_cuda)
  if(NOT ${_var})
    list(APPEND DSE_CUDA_DEPS_MISSING "${_var}")
  endif()
endforeach()
if(DSE_CUDA_DEPS_MISSING)
  string(REPLACE ";" ", " DSE_CUDA_DEPS_MISSING "${DSE_CUDA_DEPS_MISSING}")
  return()
endif()

add_library(dse_cuda_deps INTERFACE)
add_library(dse::cuda_deps ALIAS dse_cuda_deps)
target_include_directories(dse_cuda_deps SYSTEM INTERFACE ${DSE_CUSOLVER_INCLUDE_DIR} ${DSE_CUBLAS_INCLUDE_DIR})
target_link_libraries(dse_cuda_deps INTERFACE ${DSE_LIB_torch_cuda} ${DSE_LIB_c10_cuda} ${DSE_CUSOLVER_LIB}
                                              ${DSE_CUBLAS_LIB} CUDA::cudart)
# cusolverDnXsyevBatched (batched eigensolver for any n) is in newer cuSOLVER
# releases only; without it matrices above 32 x 32 go through torch's linalg_eigh.
option(DSE_CUDA_XSYEV_BATCHED "Use cusolverDnXsyevBatched when cusolverDn.h declares it" ON)
file(STRINGS "${DSE_CUSOLVER_INCLUDE_DIR}/cusolverDn.h" _dse_xsyev_batched REGEX "cusolverDnXsyevBatched[ ]*\\(")
if(DSE_CUDA_XSYEV_BATCHED AND _dse_xsyev_batched)
  target_compile_definitions(dse_cuda_deps INTERFACE DSE_HAVE_XSYEV_BATCHED=1)
  message(STATUS "dse_ext: eigensolver cusolverDnXsyevBatched for n > 32")
else()
  message(STATUS "dse_ext: eigensolver torch linalg_eigh for n > 32 (no cusolverDnXsyevBatched)")
endif()
set(DSE_CUDA_RPATH "")
foreach(_lib ${DSE_CUSOLVER_LIB} ${DSE_CUBLAS_LIB})
  get_filename_component(_dir "${_lib}" DIRECTORY)
  list(APPEND DSE_CUDA_RPATH "${_dir}")
endforeach()
list(APPEND DSE_CUDA_RPATH "${CUDAToolkit_LIBRARY_DIR}")
list(REMOVE_DUPLICATES DSE_CUDA_RPATH)
message(STATUS "dse_ext: cuSOLVER ${DSE_CUSOLVER_LIB}, cuBLAS ${DSE_CUBLAS_LIB}")
