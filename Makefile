# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install, run the demo on the shipped tiny model
#   make test   - create .venv, install, run lint and the test suite; then the fast tests again in
#                 .venv-gpustack, on the GPU stack's pins (transformers 5.17, trl 1.16) with CPU torch
# constraints/cpu.txt and constraints/gpu.txt pin the two stacks (docs/stacks.md).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
GPUSTACK_VENV ?= .venv-gpustack
GPUSTACK_BIN = $(GPUSTACK_VENV)/bin
GPUSTACK_STAMP = $(GPUSTACK_VENV)/.installed

.PHONY: demo test test-gpustack lint install install-gpustack clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints/cpu.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints/cpu.txt -e ".[train,serve,test]"
	touch $(STAMP)

install-gpustack: $(GPUSTACK_STAMP)

# The GPU stack's pins with the CPU build of its torch: everything but vllm and deepspeed, which need CUDA.
$(GPUSTACK_STAMP): pyproject.toml constraints/gpu.txt
	test -x $(GPUSTACK_BIN)/python || $(PYTHON) -m venv $(GPUSTACK_VENV)
	$(GPUSTACK_BIN)/pip install -q --upgrade pip
	$(GPUSTACK_BIN)/pip install -q -c constraints/gpu.txt torch==2.13.0
	$(GPUSTACK_BIN)/pip install -q -c constraints/gpu.txt -e ".[train,serve,test]"
	touch $(GPUSTACK_STAMP)

demo: $(STAMP)
	$(BIN)/visionthink demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: $(STAMP) lint
	$(BIN)/pytest -q
	$(MAKE) test-gpustack

test-gpustack: $(GPUSTACK_STAMP)
	$(GPUSTACK_BIN)/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(GPUSTACK_VENV) .pytest_cache .ruff_cache
