#!/usr/bin/env bash
# The GPU paths in one run (a machine with one NVIDIA GPU and a CUDA torch; nothing here runs in CI).
#
#   OUT=/tmp/gpu-check-results bash benchmarks/gpu_check.sh   (work in $WORK; $OUT gets logs.tgz)
#
# 1. the shipped tiny checkpoint evaluated on the GPU in float32 and in bfloat16 (600 held-out items,
#    four modes): the figures should match the CPU's (docs/results-sft.md);
# 2. the KV-reuse benchmark on the GPU;
# 3. multi-turn GRPO on the GPU in bfloat16 (a short run of the tiny recipe): rewards and checkpoints;
# 4. `SWEEP` (optional, "name:override,override;..."): GRPO runs side by side on the GPU, each then
#    evaluated greedily, to compare recipes (SWEEP_STEPS each, cut at SWEEP_SECONDS; ONLY_SWEEP=1 skips 1-3).
# Missing Python packages can be installed first from wheels in .whl/ (see the device tool's notes).
set -u
RESULTS=${OUT:-/tmp/gpu-check-results}
OUT=${WORK:-/tmp/gpu-check}
mkdir -p "$OUT" "$RESULTS"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
VT="python3 -m visionthink"
SWEEP_STEPS=${SWEEP_STEPS:-300}
SWEEP_SECONDS=${SWEEP_SECONDS:-400}

python3 - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import torch, transformers, trl, accelerate
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0))
print("bf16", torch.cuda.is_bf16_supported(), "transformers", transformers.__version__, "trl", trl.__version__,
      "accelerate", accelerate.__version__)
try:
    import vllm
    print("vllm", vllm.__version__)
except ImportError:
    print("vllm not installed")
EOF

# 4 first, in the background: the sweep runs take longest.
sweep_pids=()
if [ -n "${SWEEP:-}" ]; then
  IFS=';' read -ra runs <<<"$SWEEP"
  for run in "${runs[@]}"; do
    name=${run%%:*}; overrides=${run#*:}
    ( timeout "$SWEEP_SECONDS" $VT train grpo --recipe recipes/tiny-synth.yaml max_steps=$SWEEP_STEPS save_steps=50 \
        report_to=none output_dir="$OUT/sweep/$name" ${overrides//,/ } >"$OUT/sweep-$name.log" 2>&1
      model="$OUT/sweep/$name/final"  # a run cut by the time box is evaluated at its newest checkpoint
      [ -d "$model" ] || model=$(ls -d "$OUT/sweep/$name"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1)
      echo "$model" >"$OUT/sweep/$name/evaluated"
      $VT --device cuda eval --model "$model" --bench synth --modes low,visionthink --limit 600 \
        --out "$OUT/sweep/$name/eval" --json --no-progress >"$OUT/sweep/$name/eval.json" 2>>"$OUT/sweep-$name.log"
    ) &
    sweep_pids+=($!)
  done
fi

if [ -z "${ONLY_SWEEP:-}" ]; then  # ONLY_SWEEP=1: just the sweep
for dtype in float32 bfloat16; do
  start=$(date +%s.%N)
  $VT --device cuda --dtype $dtype eval --bench synth --modes full,low,visionthink,oracle --limit 600 \
    --out "$OUT/eval-$dtype" --json --no-progress >"$OUT/eval-$dtype.json" 2>"$OUT/eval-$dtype.err"
  echo "eval $dtype: rc=$? $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"
done

python3 benchmarks/kv_reuse.py --n 64 --repeats 3 2>&1 | tail -8

start=$(date +%s.%N)
$VT train grpo --recipe recipes/tiny-synth.yaml max_steps=30 bf16=true save_steps=15 report_to=none \
  output_dir="$OUT/grpo-bf16" >"$OUT/grpo-bf16.log" 2>&1
echo "grpo bf16 30 steps: rc=$? $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"
$VT model init --preset 7b-shape-2layer --out "$OUT/7b-shape" >"$OUT/7b-shape.log" 2>&1 && $VT --device cuda --dtype bfloat16 eval --model "$OUT/7b-shape" --bench synth --modes full,low,visionthink --limit 16 --protocol release --out "$OUT/eval-7b-shape" --json --no-progress >"$OUT/eval-7b-shape.json" 2>>"$OUT/7b-shape.log"; echo "7b-shape-2layer (random weights, release protocol) bf16 eval: rc=$?"
fi

for pid in "${sweep_pids[@]}"; do wait "$pid"; done

python3 - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for report in sorted(out.glob("eval-*.json")) + sorted(out.glob("sweep/*/eval.json")):
    try:
        summary = json.loads(report.read_text())
    except ValueError:
        print(report, "unreadable"); continue
    print(report.relative_to(out), json.dumps(summary)[:1500])
log = out / "grpo-bf16" / "log.jsonl"
if log.is_file():
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r for r in rows if "rewards/accuracy/mean" in r]
    print("grpo bf16: steps logged", len(steps), "last", {k: steps[-1][k] for k in
          ("rewards/accuracy/mean", "resize_ratio", "kl", "step_time") if k in steps[-1]})
for log in sorted(out.glob("sweep/*/log.jsonl")):
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r for r in rows if "resize_ratio" in r]
    tail = steps[-50:]
    mean = lambda k: round(sum(r.get(k, 0) for r in tail) / max(1, len(tail)), 3)
    print(log.parent.name, "steps", len(steps), "evaluated", (log.parent / "evaluated").read_text().strip()[-20:]
          if (log.parent / "evaluated").is_file() else None, {k: mean(k) for k in (
        "resize_ratio/coarse", "resize_ratio/fine_small", "resize_ratio/fine_large", "accuracy/fine_large",
        "entropy", "kl", "step_time")})
EOF
tar czf "$RESULTS/logs.tgz" -C "$OUT" --exclude='*.safetensors' --exclude='checkpoint-*' --exclude='*.pt' . 2>/dev/null
