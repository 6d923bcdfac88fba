# The run-time search path (RPATH) of the installed Python module, so that it finds
# libtorch, libc10 and (with the CUDA kernels) cuSOLVER, cuBLAS and the CUDA runtime
# by itself, whatever `import torch` happened to load before.
#
# dse_set_install_rpath(TARGET DESTINATION) sets TARGET's INSTALL_RPATH (what
# `cmake --install`, and so scikit-build-core, writes into the installed file) to
# DSE_TORCH_LIB_DIR and, when DSE_WITH_CUDA, the folders in DSE_CUDA_RPATH:
#
# - folders inside torch's site-packages (torch/lib, nvidia/cu13/lib, ...) as paths
#   relative to the module, `$ORIGIN/../torch/lib`, when the module is installed into
#   that same site-packages (Python's platlib, where pip installs when it may write
#   there). Then the wheel holds no path of the build machine and a moved or copied
#   environment keeps working: the convention torch's own libraries use for the nvidia
#   wheels;
# - absolute paths otherwise: folders outside site-packages (a CUDA toolkit, used only
#   when torch's wheels lack a library), or a torch in another site-packages than the
#   one the module goes to (a venv with --system-site-packages, a user-site install).

function(dse_set_install_rpath target destination)
  set(_dirs "${DSE_TORCH_LIB_DIR}")
  if(DSE_WITH_CUDA)
    list(APPEND _dirs ${DSE_CUDA_RPATH})
  endif()
  get_filename_component(_site "${DSE_TORCH_LIB_DIR}/../.." ABSOLUTE)
  file(REAL_PATH "${_site}" _site_real)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import os, sysconfig; p = os.path.realpath(sysconfig.get_path('platlib')); print(p if os.access(p, os.W_OK) else '')"
    OUTPUT_VARIABLE _platlib OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
  # An unwritable platlib makes pip install into the user site instead: not next to torch.
  set(_relative FALSE)
  if(_rc EQUAL 0 AND _platlib STREQUAL _site_real)
    set(_relative TRUE)
  endif()
  set(_rpath "")
  foreach(_dir IN LISTS _dirs)
    file(REAL_PATH "${_dir}" _dir_real)
    string(FIND "${_dir_real}/" "${_site_real}/" _pos)
    if(_relative AND _pos EQUAL 0)
      file(RELATIVE_PATH _rel "${_site_real}/${destination}" "${_dir_real}")
      list(APPEND _rpath "$ORIGIN/${_rel}")
    else()
      list(APPEND _rpath "${_dir_real}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _rpath)
  set_target_properties(${target} PROPERTIES INSTALL_RPATH "${_rpath}")
  string(REPLACE ";" ":" _shown "${_rpath}")
  message(STATUS "dse_ext: RPATH of the installed ${target}: ${_shown}")
endfunction()
