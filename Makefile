# Task runner. `make bench` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# A CUDA 13 build of torch: it runs on the CPU and lets the CUDA kernels compile and link.
TORCH_SPEC ?= torch==2.14.1
BUILD_DEPS := scikit-build-core pybind11 ninja "cmake>=3.26,<4"
TEST_DEPS := pytest numpy timm scipy matplotlib lightning tensorboard transformers
CPP_BUILD := build/cpp

.PHONY: all venv install demo demo-full demo-quick test test-python test-cpp test-oldest-torch bench bench-regularizer bench-scores clean

all: install

$(VENV)/.deps:
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH_SPEC)" $(BUILD_DEPS) $(TEST_DEPS) tqdm
	touch $@

venv: $(VENV)/.deps

install: venv
	$(VPY) -m pip install -q --no-build-isolation --no-deps .

test: test-python test-cpp

test-python: install
	$(VENV)/bin/pytest -q python_tests

# The C++ tests run in two builds: one as the Python module is built (CUDA kernels when
# DSE_CUDA allows and nvcc is found; torch's BLAS/LAPACK called directly), one CPU-only
# with BLAS/LAPACK through ATen (the configuration of a CPU torch without those symbols).
# The first compiles the CUDA eigensolver without cusolverDnXsyevBatched (the fallback
# for older cuSOLVER), so that both branches of csrc/cuda/solver.cu compile and link.
DSE_CUDA ?= AUTO
test-cpp: venv
	@command -v apt-get >/dev/null && ! [ -f /usr/include/gtest/gtest.h ] && \
	  (apt-get update -qq && apt-get install -y -qq libgtest-dev >/dev/null) || true
	for config in "module:$(DSE_CUDA):ON" "cpu-only:OFF:OFF"; do \
	  IFS=: read name cuda lapack <<< "$$config" && dir=$(CPP_BUILD)-$$name && \
	  $(VENV)/bin/cmake -S . -B $$dir -G Ninja -DDSE_BUILD_TESTS=ON -DDSE_BUILD_PYTHON=OFF \
	    -DDSE_CUDA=$$cuda -DDSE_DIRECT_LAPACK=$$lapack -DDSE_CUDA_XSYEV_BATCHED=OFF -DPython_EXECUTABLE=$(abspath $(VPY)) \
	    -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) >/dev/null && \
	  $(VENV)/bin/cmake --build $$dir && \
	  (cd $$dir && $(abspath $(VENV))/bin/ctest --output-on-failure) || exit 1; \
	done

# The oldest supported torch (pyproject's floor) in a venv of its own, .venv-torch2.11: build
# against it and run the Python suite (CPU). Its wheel is the CUDA 13.0 build (what the lent
# GPU machines run), so with a CUDA 13 nvcc the CUDA kernels are compiled and linked too
# (one GPU architecture: a compile check); with another nvcc, or none, the CPU path only.
# Own build folder: a build tree holds the paths of one torch.
OLD_TORCH_SPEC ?= torch==2.11.0
OLD_VENV := .venv-torch2.11
$(OLD_VENV)/.deps:
	$(PY) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLD_VENV)/bin/python -m pip install -q "$(OLD_TORCH_SPEC)" $(BUILD_DEPS) $(TEST_DEPS) tqdm
	touch $@

test-oldest-torch: $(OLD_VENV)/.deps
	@set -e; py=$(OLD_VENV)/bin/python; \
	torch_cuda=$$($$py -c "import torch; print((torch.version.cuda or '').split('.')[0])"); \
	nvcc_cuda=$$($${CUDACXX:-nvcc} --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\..*/\1/p'); \
	echo "test-oldest-torch: $$($$py -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'), nvcc CUDA major '$$nvcc_cuda'"; \
	if [ -n "$$torch_cuda" ] && [ "$$torch_cuda" = "$$nvcc_cuda" ]; then cuda=ON; expect=1; \
	else cuda=OFF; expect=0; \
	  echo "test-oldest-torch: torch's CUDA major '$$torch_cuda' is not nvcc's '$$nvcc_cuda': building the CPU path only (DSE_CUDA=OFF)"; fi; \
	DSE_CUDA=$$cuda TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} $$py -m pip install -q --no-build-isolation --no-deps \
	  -C build-dir=build/torch-oldest-{wheel_tag} . ; \
	DSE_EXPECT_CUDA=$$expect $(OLD_VENV)/bin/pytest -q -p no:cacheprovider python_tests

# The end-to-end demo (README): synthetic data, SSL runs, label-free scores vs. probe mIoU.
demo: install
	$(VENV)/bin/dse demo --out demo-out

# The committed run in docs/demo/: 5 seeds, MoCo v3 and a beta sweep (about 48 min on 2 cores).
demo-full: install
	$(VENV)/bin/dse demo --full --out demo-out-full

demo-quick: install
	$(VENV)/bin/dse demo --quick --out demo-out-quick

bench: install
	$(VPY) bench/bench_dse.py --repeats 5

bench-scores: install
	$(VPY) bench/bench_scores.py

# lightly's DSERegularizer is timed beside ours: its module needs no more than `--no-deps`.
bench-regularizer: install
	$(VPY) -m pip install -q timm
	$(VPY) -m pip install -q --no-deps lightly
	$(VPY) bench/bench_regularizer.py --repeats 3
	OPENBLAS_NUM_THREADS=1 $(VPY) bench/bench_eigen_cpu.py

clean:
	rm -rf build dist *.egg-info
