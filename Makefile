# Every target sets itself up: a fresh machine needs only python3 and make.
#   make test    build in place and run the test suite
#   make bench   build in place and run the benchmark with its correctness check
#                (the layer suite, then on the CPU the WaveNet generation section and the
#                whole-model section: DeepLabV3-ResNet50 OS8, torchvision's against convert_model's)
#   make build-cpu   fast CPU-only rebuild for the edit-test loop
#   make gpu-check   on a machine with an NVIDIA GPU (no downloads; see bench/gpu_check.sh):
#                    GPU_CHECK_ARGS="--part 1", then "--part 2", on a borrowed machine
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# An unpinned torch downloads several GB; 2.14.1 (CUDA 13.0 build) is what this
# project is developed and tested with. The package itself needs torch >= 2.4.
TORCH_SPEC ?= torch==2.14.1
# torchvision pairs with that torch (0.29.x <-> 2.14); it is only for the models' reference tests
# (torchvision's ASPP). matplotlib draws the bench chart and the demo/receptive-field pictures;
# tqdm is the bench's progress bar. Both are optional at run time.
EXTRA_SPEC ?= torchvision==0.29.1 matplotlib tqdm
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: setup build build-cpu test bench gpu-check cmake-check clean

$(VENV)/.installed: Makefile pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(EXTRA_SPEC) setuptools wheel ninja pybind11 pytest hypothesis numpy expecttest
	touch $@

setup: $(VENV)/.installed

build: setup
	$(PY) setup.py build_ext --inplace

build-cpu: setup
	ATROUS_CPU_ONLY=1 $(PY) setup.py build_ext --inplace

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m atrous_cuda bench

# Two commands on a borrowed GPU machine: GPU_CHECK_ARGS="--part 1", then "--part 2" (see bench/gpu_check.sh).
# The script builds with all cores whatever MAX_JOBS says (GPU_CHECK_MAX_JOBS overrides).
gpu-check:
	bash bench/gpu_check.sh $(GPU_CHECK_ARGS)

cmake-check: setup
	PYTHON=$(abspath $(PY)) bash bench/cmake_check.sh

clean:
	rm -rf build atrous_cuda/_C*.so
