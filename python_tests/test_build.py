"""How the installed compiled module is linked: its RPATH and the libraries it loads by itself.

The module must find libtorch and (when built with the CUDA kernels) cuSOLVER, cuBLAS and the
CUDA runtime through its own run-time search path, so that it never depends on `import torch`
having loaded the same sonames first, and a copied or moved environment keeps working.
"""

import os
import struct
import subprocess
import sys

import pytest
import torch

import dse_ext

_C = pytest.importorskip("dse_ext._C", reason="dse_ext was imported without its compiled module")

DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 1, 5, 15, 29
TORCH_LIB = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
CUDA_LIBS = ("libcusolver.so", "libcublas.so", "libcudart.so")
needs_cuda_build = pytest.mark.skipif(not dse_ext.cuda_built(),
                                      reason="dse_ext was built without the CUDA kernels (build_info()['cuda'] is "
                                             "False): no CUDA libraries to find")


def dynamic_section(path):
    """(NEEDED sonames, RPATH or RUNPATH entries) of a 64-bit little-endian ELF shared object."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        pytest.skip(f"{path} is not a 64-bit little-endian ELF file; only those are parsed here")
    e_phoff, = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(e_phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    assert dynamic is not None, f"{path} has no dynamic section"
    entries = []
    for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        entries.append((tag, val))
    strtab_vaddr = next(val for tag, val in entries if tag == DT_STRTAB)
    strtab = next(off + strtab_vaddr - vaddr for vaddr, off, size in loads if vaddr <= strtab_vaddr < vaddr + size)

    def string(offset):
        start = strtab + offset
        return data[start:data.index(b"\0", start)].decode()

    needed = [string(val) for tag, val in entries if tag == DT_NEEDED]
    paths = [p for tag, val in entries if tag in (DT_RPATH, DT_RUNPATH) for p in string(val).split(":") if p]
    return needed, paths


def resolved(paths, origin):
    return [os.path.realpath(p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)) for p in paths]


@pytest.fixture(scope="module")
def module_elf():
    path = os.path.realpath(_C.__file__)
    needed, paths = dynamic_section(path)
    return path, needed, paths


def test_rpath_reaches_torch_lib(module_elf):
    path, needed, paths = module_elf
    assert paths, f"{path} has no RPATH/RUNPATH: it only works when torch has loaded its libraries first"
    assert TORCH_LIB in resolved(paths, os.path.dirname(path)), (path, paths)
    assert any(n.startswith("libc10.so") for n in needed), needed


def test_rpath_is_origin_relative_next_to_torch(module_elf):
    # Installed into the site-packages that holds torch (what pip does), the module must not
    # carry paths of the machine it was built on: a moved or copied environment keeps working.
    path, _, paths = module_elf
    site = os.path.realpath(os.path.join(TORCH_LIB, "..", ".."))
    if os.path.dirname(os.path.dirname(path)) != site:
        pytest.skip(f"dse_ext ({path}) is not installed next to torch ({site}): absolute RPATH entries are expected")
    inside = [p for p in paths if os.path.realpath(p.replace("$ORIGIN", os.path.dirname(path))).startswith(site + os.sep)]
    assert inside and all(p.startswith("$ORIGIN/") for p in inside), paths


@needs_cuda_build
def test_rpath_reaches_every_cuda_library_the_module_needs(module_elf):
    path, needed, paths = module_elf
    dirs = resolved(paths, os.path.dirname(path))
    for soname in needed:
        if soname.startswith(CUDA_LIBS):
            assert any(os.path.exists(os.path.join(d, soname)) for d in dirs), \
                f"{soname} is in none of the RPATH folders {dirs}"
    assert any(n.startswith("libcusolver.so") for n in needed), needed
    # torch's own nvidia wheels come first (the libraries torch itself loads), the toolkit after.
    nvidia = [i for i, d in enumerate(dirs) if f"{os.sep}nvidia{os.sep}" in d]
    others = [i for i, d in enumerate(dirs) if d != TORCH_LIB and f"{os.sep}nvidia{os.sep}" not in d]
    if nvidia and others:
        assert max(nvidia) < min(others), dirs


def test_module_loads_without_torch_loaded_first(module_elf):
    # A fresh interpreter, no `import torch`, no LD_LIBRARY_PATH: every library the module needs
    # must come through its own RPATH. Loading runs the operator registrations too.
    path, needed, paths = module_elf
    code = ("import ctypes, sys; ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL); "
            "print('\\n'.join(sorted({l.split()[-1] for l in open('/proc/self/maps') if '.so' in l})))")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"loading {path} without torch failed:\n{proc.stderr[-2000:]}"
    loaded = proc.stdout.split()
    assert any(os.path.realpath(p).startswith(TORCH_LIB + os.sep) and "libc10.so" in p for p in loaded), loaded
    if dse_ext.cuda_built():
        assert any("libcusolver.so" in p for p in loaded), loaded
