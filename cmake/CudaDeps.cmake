# What the CUDA kernels link besides libtorch: torch's CUDA libraries, the CUDA
# runtime, cuSOLVER and cuBLAS.
#
# cuSOLVER and cuBLAS are looked for first in the nvidia pip wheels installed next
# to torch (site-packages/nvidia/cuNN/{include,lib} for CUDA >= 13, one folder per
# library for CUDA 12: nvidia/cusolver, nvidia/cublas), i.e. the very libraries
# torch itself loads, and only then in the CUDA toolkit of nvcc. Header and
# library of each are taken from the same place. The wheels ship versioned files
# (libcusolver.so.12) without the unversioned link, hence the explicit names.
#
# Before anything else, nvcc's CUDA major version must be torch's (torch.version.cuda):
# kernels built with another major would link a second, different CUDA runtime.
#
# Inputs: CMAKE_CUDA_COMPILER (checked, not enabled), DSE_TORCH_LIB_DIR, DSE_TORCH_CUDA_VERSION.
# Sets:
#   DSE_CUDA_VERSION_MISMATCH  a message when nvcc's and torch's CUDA majors differ (nothing else is set then)
#   DSE_CUDA_DEPS_MISSING      empty when everything was found
#   DSE_NVCC_CUDA_VERSION      e.g. "13.0"
#   dse::cuda_deps             INTERFACE target (headers and libraries above)
#   DSE_CUDA_RPATH             absolute folders of the CUDA shared libraries the module loads,
#                              in search order (torch's nvidia wheel folders first, then the toolkit)
#   DSE_CUDA_RPATH_IN_SITE     the subset of DSE_CUDA_RPATH inside torch's site-packages

set(DSE_CUDA_VERSION_MISMATCH "")
set(DSE_CUDA_DEPS_MISSING "")

# ---------------------------------------------------------------- nvcc vs torch
execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --version
                OUTPUT_VARIABLE _dse_nvcc_out ERROR_VARIABLE _dse_nvcc_err RESULT_VARIABLE _dse_nvcc_rc)
if(NOT _dse_nvcc_rc EQUAL 0 OR NOT _dse_nvcc_out MATCHES "release ([0-9]+)\\.([0-9]+)")
  set(DSE_CUDA_DEPS_MISSING "a working nvcc (`${CMAKE_CUDA_COMPILER} --version` failed: ${_dse_nvcc_err})")
  return()
endif()
set(DSE_NVCC_CUDA_VERSION "${CMAKE_MATCH_1}.${CMAKE_MATCH_2}")
set(_dse_nvcc_major "${CMAKE_MATCH_1}")
string(REGEX MATCH "^[0-9]+" _dse_torch_cuda_major "${DSE_TORCH_CUDA_VERSION}")
if(NOT _dse_nvcc_major STREQUAL _dse_torch_cuda_major)
  string(CONCAT DSE_CUDA_VERSION_MISMATCH
      "nvcc ${CMAKE_CUDA_COMPILER} is CUDA ${DSE_NVCC_CUDA_VERSION} but torch ${DSE_TORCH_VERSION} was built "
      "with CUDA ${DSE_TORCH_CUDA_VERSION}: the major versions must match. Put a CUDA ${_dse_torch_cuda_major}.x "
      "nvcc first on PATH (or set CUDACXX to it), install a torch built for CUDA ${_dse_nvcc_major}, "
      "or build without the CUDA kernels with DSE_CUDA=OFF")
  return()
endif()

# ---------------------------------------------------------------- toolkit (cudart)
# FindCUDAToolkit must describe the toolkit of this nvcc, not another one on the machine.
if(NOT CUDAToolkit_ROOT AND NOT DEFINED ENV{CUDAToolkit_ROOT})
  execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" -v --dryrun x.cu
                  OUTPUT_VARIABLE _dse_nvcc_v ERROR_VARIABLE _dse_nvcc_v RESULT_VARIABLE _dse_rc)
  if(_dse_nvcc_v MATCHES "#\\$ TOP=([^\r\n]*)")
    get_filename_component(CUDAToolkit_ROOT "${CMAKE_MATCH_1}" ABSOLUTE)
  endif()
endif()
find_package(CUDAToolkit QUIET)
if(NOT CUDAToolkit_FOUND)
  set(DSE_CUDA_DEPS_MISSING "the CUDA toolkit (cudart) of ${CMAKE_CUDA_COMPILER}")
  return()
endif()

# ---------------------------------------------------------------- cuSOLVER, cuBLAS
get_filename_component(_dse_site "${DSE_TORCH_LIB_DIR}/../.." ABSOLUTE)
set(_dse_roots "")   # each: a folder with include/ and lib/
if(IS_DIRECTORY "${_dse_site}/nvidia/cu${_dse_torch_cuda_major}")
  list(APPEND _dse_roots "${_dse_site}/nvidia/cu${_dse_torch_cuda_major}")
endif()
foreach(_name cusolver cublas cuda_runtime)
  if(IS_DIRECTORY "${_dse_site}/nvidia/${_name}")
    list(APPEND _dse_roots "${_dse_site}/nvidia/${_name}")
  endif()
endforeach()
foreach(_dir IN LISTS CUDAToolkit_INCLUDE_DIRS)   # the toolkit last: <root>/include
  get_filename_component(_root "${_dir}/.." ABSOLUTE)
  list(APPEND _dse_roots "${_root}")
endforeach()
list(REMOVE_DUPLICATES _dse_roots)

# Results of earlier configurations (other search order) must not stick.
foreach(_var DSE_CUSOLVER_INCLUDE_DIR DSE_CUBLAS_INCLUDE_DIR DSE_CUSOLVER_LIB DSE_CUBLAS_LIB)
  unset(${_var} CACHE)
endforeach()

# _dse_find_in_roots(PREFIX HEADER NAME...): the first root holding HEADER and a library
# NAME sets PREFIX_INCLUDE_DIR and PREFIX_LIB.
function(_dse_find_in_roots prefix header)
  foreach(_root IN LISTS _dse_roots)
    find_path(_dse_inc ${header} PATHS "${_root}/include" NO_DEFAULT_PATH NO_CACHE)
    find_library(_dse_lib NAMES ${ARGN} NAMES_PER_DIR
                 PATHS "${_root}/lib" "${_root}/lib64" "${_root}/targets/x86_64-linux/lib"
                       "${_root}/targets/sbsa-linux/lib"
                 NO_DEFAULT_PATH NO_CACHE)
    if(_dse_inc AND _dse_lib)
      set(${prefix}_INCLUDE_DIR "${_dse_inc}" PARENT_SCOPE)
      set(${prefix}_LIB "${_dse_lib}" PARENT_SCOPE)
      return()
    endif()
    unset(_dse_inc)
    unset(_dse_lib)
  endforeach()
endfunction()

_dse_find_in_roots(DSE_CUSOLVER cusolverDn.h
                   cusolver libcusolver.so.12 libcusolver.so.11 libcusolver.so.13)
_dse_find_in_roots(DSE_CUBLAS cublas_v2.h
                   cublas libcublas.so.${_dse_torch_cuda_major} libcublas.so.13 libcublas.so.12)
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
  string(REPLACE ";" ", " _dse_where "${_dse_roots}")
  string(APPEND DSE_CUDA_DEPS_MISSING " (searched ${_dse_where})")
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

# ---------------------------------------------------------------- run-time folders
# Where the loader should find cuSOLVER, cuBLAS and the CUDA runtime: the folder each
# was linked from, except that the runtime (linked from the toolkit) is taken from
# torch's wheels when they have its soname (the one torch itself uses); the toolkit's
# folder is added only for what the wheels lack.
set(DSE_CUDA_RPATH "")
foreach(_lib ${DSE_CUSOLVER_LIB} ${DSE_CUBLAS_LIB})
  get_filename_component(_dir "${_lib}" DIRECTORY)
  list(APPEND DSE_CUDA_RPATH "${_dir}")
endforeach()
set(_dse_cudart_in_wheels FALSE)
foreach(_root IN LISTS _dse_roots)
  string(FIND "${_root}" "${_dse_site}/" _pos)
  if(_pos EQUAL 0)
    file(GLOB _dse_cudart "${_root}/lib/libcudart.so.${_dse_torch_cuda_major}*")
    if(_dse_cudart)
      list(APPEND DSE_CUDA_RPATH "${_root}/lib")
      set(_dse_cudart_in_wheels TRUE)
      break()
    endif()
  endif()
endforeach()
if(NOT _dse_cudart_in_wheels)
  list(APPEND DSE_CUDA_RPATH "${CUDAToolkit_LIBRARY_DIR}")
endif()
list(REMOVE_DUPLICATES DSE_CUDA_RPATH)
set(DSE_CUDA_RPATH_IN_SITE "")
foreach(_dir IN LISTS DSE_CUDA_RPATH)
  string(FIND "${_dir}" "${_dse_site}/" _pos)
  if(_pos EQUAL 0)
    list(APPEND DSE_CUDA_RPATH_IN_SITE "${_dir}")
  endif()
endforeach()
message(STATUS "dse_ext: nvcc CUDA ${DSE_NVCC_CUDA_VERSION}; cuSOLVER ${DSE_CUSOLVER_LIB}, cuBLAS ${DSE_CUBLAS_LIB}")
