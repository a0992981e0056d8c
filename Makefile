# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install, run the demo on the shipped tiny models (the ladder, then the paper's)
#   make test   - create .venv, install, run lint and the test suite; beside it the fast tests again in
#                 .venv-gpustack, on the GPU stack's pins (transformers 5.17, trl 1.16) with CPU torch, and the
#                 lmms-eval adapter's tests in .venv-lmms-eval, beside the real lmms-eval 0.7.3
# constraints/cpu.txt and constraints/gpu.txt pin the two stacks (docs/stacks.md).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
GPUSTACK_VENV ?= .venv-gpustack
GPUSTACK_BIN = $(GPUSTACK_VENV)/bin
GPUSTACK_STAMP = $(GPUSTACK_VENV)/.installed
LMMS_VENV ?= .venv-lmms-eval
LMMS_BIN = $(LMMS_VENV)/bin
LMMS_STAMP = $(LMMS_VENV)/.installed

.PHONY: demo test test-gpustack test-lmms-eval lint install install-gpustack install-lmms-eval clean

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

install-lmms-eval: $(LMMS_STAMP)

# lmms-eval 0.7.3 beside CPU torch 2.13.0: its own pins (filelock<4) instead of constraints/cpu.txt, and PyPI's
# torchvision, which it requires but which needs a CUDA torch, uninstalled again (docs/lmms-eval.md).
$(LMMS_STAMP): pyproject.toml
	test -x $(LMMS_BIN)/python || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_BIN)/pip install -q --upgrade pip
	$(LMMS_BIN)/pip install -q -c constraints/cpu.txt torch==2.13.0
	$(LMMS_BIN)/pip install -q -e ".[train,serve,test,lmms-eval]"
	$(LMMS_BIN)/pip uninstall -q -y torchvision
	touch $(LMMS_STAMP)

demo: $(STAMP)
	$(BIN)/visionthink demo --n 240
	$(BIN)/visionthink demo --n 240 --model checkpoints/tiny-synth

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# The other two stacks install and test in the background while the main suite runs (it waits on servers and
# subprocesses much of the time); their output is printed after it, and any failure fails the target.
test: $(STAMP) lint
	@($(MAKE) --no-print-directory test-gpustack && $(MAKE) --no-print-directory test-lmms-eval) \
		> .test-other-stacks.log 2>&1 & other=$$!; \
	$(BIN)/pytest -q; main=$$?; \
	wait $$other; others=$$?; \
	echo "--- the GPU stack's pins and the lmms-eval adapter (.test-other-stacks.log):"; \
	grep -v "^WARNING: Location" .test-other-stacks.log; \
	test $$main -eq 0 && test $$others -eq 0

# The files left out test what no transformers or TRL version touches (HTTP hardening, image decoding, metrics,
# grading, judges over HTTP, the browser page); the main run covers them.
STACK_AGNOSTIC = test_benchmarks test_metrics test_grading test_images test_pixels test_judges test_judge_startup \
	test_serve_abuse test_serve_hardening test_serve_examples test_web_page

test-gpustack: $(GPUSTACK_STAMP)
	$(GPUSTACK_BIN)/pytest -q -m "not slow" $(foreach name,$(STACK_AGNOSTIC),--ignore=tests/$(name).py)

test-lmms-eval: $(LMMS_STAMP)
	$(LMMS_BIN)/pytest -q tests/test_lmms_eval_adapter.py

clean:
	rm -rf $(VENV) $(GPUSTACK_VENV) $(LMMS_VENV) .pytest_cache .ruff_cache
