"""`benchmarks/gpu_check.sh --cpu-dry-run`: every step of the GPU check runs on the CPU at tiny shapes and one JSON
holds the results (what the GPU run writes too)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("install", "model_init", "ask_release", "eval_release", "kv_reuse", "decoder_on_device", "grpo_lora",
         "serve_remote")


def _steps_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check_steps
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_check_steps


def test_wheels_are_chosen_by_name_and_version():
    steps = _steps_module()
    wheel = Path("pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_x86_64.whl")
    assert steps._dist_of(wheel) == "pydantic-core" and steps._version_of(wheel) == "2.50.5"
    assert steps._older(None, "1.0") and steps._older("4.12.2", "4.16.0")
    assert not steps._older("4.16.0", "4.16.0") and not steps._older("5.0", "4.16.0")
    assert steps._fits(Path("trl-1.16.0-py3-none-any.whl"))
    assert not steps._fits(Path("jiter-0.19.0-cp27-cp27m-manylinux2014_x86_64.whl"))


def test_fetch_script_names_one_version_of_each_package():
    text = (ROOT / "benchmarks" / "fetch_wheels.sh").read_text()
    pins = [token for token in text.split() if "==" in token]
    names = [pin.split("==")[0].lower().replace("_", "-") for pin in pins]
    assert len(names) == len(set(names)) and "trl" in names and "datasets" in names
    assert "/wheels/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.slow
def test_cpu_dry_run_writes_one_json_of_passing_steps(tmp_path):
    out = tmp_path / "results.json"
    began = time.perf_counter()
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-dry-run", "--work",
                           str(tmp_path / "work"), "--json", str(out)], capture_output=True, text=True, timeout=1500)
    seconds = time.perf_counter() - began
    results = json.loads(out.read_text())
    assert done.returncode == 0, (done.stdout[-3000:], json.dumps(results)[-3000:])
    assert results["mode"] == "cpu-dry-run" and results["ok"] is True and results["seconds"] <= seconds
    steps = results["steps"]
    assert all(steps[name]["ok"] for name in STEPS), {name: steps[name] for name in STEPS if not steps[name]["ok"]}
    assert results["env"]["torch"] and results["env"]["gpu"] is None
    assert steps["model_init"]["preset"] == "real-vocab-small"
    assert steps["ask_release"]["visual_tokens"] > 0 and steps["ask_release"]["image"] == [1700, 2200]
    modes = steps["eval_release"]["modes"]
    assert {"full", "low", "visionthink"} <= set(modes) and modes["full"]["n"] == 4
    assert 0.22 <= modes["low_over_full"] <= 0.28
    assert steps["kv_reuse"]["same_turns"] is True
    assert steps["decoder_on_device"]["greedy_equal"] is True and steps["decoder_on_device"]["device"] == "cpu"
    assert steps["grpo_lora"]["steps"] == 2 and steps["grpo_lora"]["adapter_saved"] is True
    remote = steps["serve_remote"]
    assert remote["n"] == 72 and remote["agree"] == remote["n"] and remote["visual_tokens_equal"] == remote["n"]


def test_install_takes_missing_wheels_into_its_own_site(tmp_path):
    """A wheel of a package this Python lacks goes into `<work>/site` (pip, no index, no dependencies)."""
    import argparse
    import zipfile

    steps = _steps_module()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    name, version = "vt_gpu_check_probe", "1.0"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheels / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "VALUE = 7\n")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    args = argparse.Namespace(cpu_dry_run=True, work=str(tmp_path / "work"), wheels=str(wheels), json=None, only=None)
    check = steps.Check(args)
    check.install()
    step = check.results["steps"]["install"]
    assert step["ok"] and step["installed"] == ["vt-gpu-check-probe"], step
    assert (tmp_path / "work" / "site" / name / "__init__.py").is_file()
    probe = subprocess.run([sys.executable, "-c", f"import {name}; print({name}.VALUE)"], env=check.env(),
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "7"
