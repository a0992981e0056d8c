#!/usr/bin/env bash
# The GPU paths in one run, on a bare GPU box (torch with CUDA, transformers, accelerate and peft; no trl, no network),
# in under 8 minutes, with one JSON of results.
#
#   bash benchmarks/gpu_check.sh [--json FILE] [--work DIR]       # default JSON: $WORK/gpu_check.json
#   bash benchmarks/gpu_check.sh --cpu-dry-run                    # the same steps on the CPU at tiny shapes
#
# Packages the box lacks are installed, with no index, from the wheels in wheels/ (`bash benchmarks/fetch_wheels.sh`
# fetches them here; carry that folder with the checkout) into $WORK/site. The steps, their time limits and what
# each records: benchmarks/gpu_check_steps.py. Exit status 0 when every step passed.
set -u
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
exec "$py" benchmarks/gpu_check_steps.py "$@"
