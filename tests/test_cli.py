"""The command line: `ask` and `demo` for real in a subprocess, errors and option values in-process."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO  # tests/ is on sys.path
from PIL import Image
from test_serve import png

from visionthink import protocol
from visionthink.cli import EXIT_NO_ANSWER, build_parser, main
from visionthink.data import synth

ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
HEAVY = ("torch", "transformers", "datasets", "trl", "PIL.Image")


def visionthink(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visionthink", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def in_a_fresh_interpreter(argv: list[str]) -> list[str]:
    """`cli.main(argv)` run in a new Python: its stdout lines, the last one its exit code and which of `HEAVY` it
    imported."""
    script = (f"import sys\nfrom visionthink import cli\ntry:\n    code = cli.main({argv!r})\n"
              "except SystemExit as stop:\n    code = stop.code\n"
              f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture
def loads(monkeypatch) -> list[tuple]:
    """The models the CLI loads: (dtype, device, other options, the model) per call of the loader."""
    from visionthink.engines import transformers_engine

    loaded, real = [], transformers_engine.load_model

    def spy(model_dir, dtype=None, device=None, **options):
        model, processor = real(model_dir, dtype=dtype, device=device, **options)
        loaded.append((dtype, device, options, model))
        return model, processor

    monkeypatch.setattr(transformers_engine, "load_model", spy)
    return loaded


@pytest.fixture(scope="module")
def item_png(tmp_path_factory):
    item = synth.split_items("test", 2)[1]
    path = tmp_path_factory.mktemp("img") / "item.png"
    item.image.save(path)
    return path, item


@pytest.mark.slow
def test_ask_prints_answer_and_cost(item_png, shipped_model_dir):
    path, item = item_png
    result = visionthink("ask", str(path), item.question, "--model", str(shipped_model_dir), "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert set(record) >= {"answer", "resized", "visual_tokens", "full_res_visual_tokens", "seconds"}
    full = (item.image.width // 28) * (item.image.height // 28)  # world images are on the grid already
    assert record["full_res_visual_tokens"] == full
    assert record["visual_tokens"] == (full * 5 // 4 if record["resized"] else full // 4)
    assert record["answer"] in synth.PATTERNS
    plain = visionthink("ask", str(path), item.question, "--model", str(shipped_model_dir), "--mode", "low")
    assert plain.returncode == 0, plain.stderr
    assert "answer:" in plain.stdout and f"visual tokens: {full // 4} (full resolution: {full}, 25%)" in plain.stdout


BAD_IMAGES = {
    "corrupt": lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "truncated": lambda: png(synth.make_item(0, 0).image)[:300],
    "zero-byte": lambda: b"",
    "100-megapixel": lambda: png(Image.new("1", (10_000, 10_000))),
    "not-an-image": lambda: b"just some text, not pixels\n" * 10,
}


def _fails_with_one_line(capsys, argv: list[str]) -> str:
    """Run the CLI in-process: exit code 2, nothing on stdout, one `error: ...` line on stderr, no traceback."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_bad_images_give_one_line_errors(tmp_path, capsys, kind, shipped_model_dir):
    path = tmp_path / f"{kind}.png"
    path.write_bytes(BAD_IMAGES[kind]())
    question = "What colour is the largest shape?"
    _fails_with_one_line(capsys, ["ask", str(path), question, "--model", str(shipped_model_dir)])


def test_missing_model_is_a_clear_error(item_png, tmp_path, capsys):
    path, item = item_png
    line = _fails_with_one_line(capsys, ["ask", str(path), item.question, "--model", str(tmp_path / "nowhere")])
    assert "not a model folder" in line


def test_device_and_dtype_reach_the_model(item_png, shipped_model_dir, loads, capsys):
    """`--device`/`--dtype`/`--attn-implementation` are arguments of the model loader, not environment variables."""
    import os

    import torch

    path, item = item_png
    argv = ["--device", "cpu", "--dtype", "bfloat16", "ask", str(path), item.question,
            "--model", str(shipped_model_dir), "--attn-implementation", "eager"]
    assert main(argv) == 0, capsys.readouterr().err
    assert [(dtype, device, model.dtype, str(model.device), model.config._attn_implementation)
            for dtype, device, _, model in loads] == [("bfloat16", "cpu", torch.bfloat16, "cpu", "eager")]
    assert not any(key.startswith("VISIONTHINK_D") for key in os.environ)

def demo_tables(stdout: str) -> dict[str, list[dict[str, str]]]:
    """The demo's tables, one per wording set in the order printed: {bench: rows {column: cell}}."""
    tables: dict[str, list[dict[str, str]]] = {}
    bench = None
    for line in stdout.splitlines():
        if re.fullmatch(r"[a-z-]+: .+", line) and not line.startswith("report:"):
            bench, tables[line.split(":")[0]] = line.split(":")[0], []
        elif line.startswith("|") and bench is not None:
            tables[bench].append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return {name: [dict(zip(rows[0], row, strict=True)) for row in rows[2:]] for name, rows in tables.items()}


@pytest.mark.slow
def test_demo_prints_the_papers_modes_for_a_resize_model(shipped_model_dir, tmp_path):
    reports = tmp_path / "reports"
    result = visionthink("demo", "--n", "9", "--model", str(shipped_model_dir), "--out", str(reports))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("9 held-out synthetic test items (seed 0), each asked in 2 wording sets")
    tables = demo_tables(result.stdout)
    assert list(tables) == ["synth", "synth-heldout"]
    summary = json.loads((reports / "summary.json").read_text())  # the tables print eval's scores
    for bench, table in tables.items():
        assert [row["mode"] for row in table] == ["full", "low", "visionthink", "oracle"]
        assert [row["acc all"] for row in table] == [f"{100 * summary[bench][row['mode']]['score']:.1f}%"
                                                     for row in table]
        assert table[3]["zoom/resize fine_small"] == "0% / 100%" and table[3]["right action"].endswith("%")
    assert lines[-1] == f"report: {reports / 'report.md'}"


@pytest.mark.slow
def test_demo_prints_the_ladder_rows_for_a_model_that_can_zoom():
    """The oracle takes every item's right action: zoom on small labels, resize on spread ones, else answer."""
    result = visionthink("demo", "--n", "12", "--model", str(REPO / "checkpoints" / "tiny-synth-zoom"))
    assert result.returncode == 0, result.stderr
    tables = demo_tables(result.stdout)
    assert list(tables) == ["ladder", "ladder-heldout", "ladder-heldout-templates"]
    for table in tables.values():
        assert [row["mode"] for row in table] == ["full", "low", "zoom (ladder)", "oracle-ladder"]
        oracle = table[3]
        assert oracle["right action"] == "100.0%"
        assert (oracle["zoom/resize fine_small"], oracle["zoom/resize fine_spread"]) == ("100% / 0%", "0% / 100%")
        assert oracle["zoom/resize coarse"] == oracle["zoom/resize fine_large"] == "0% / 0%"


@pytest.mark.slow
def test_data_synth_writes_hugging_face_splits(tmp_path):
    from datasets import load_from_disk

    result = visionthink("data", "synth", "--out", str(tmp_path / "world"), "--n", "6", "--seed", "4")
    assert result.returncode == 0, result.stderr
    dataset = load_from_disk(str(tmp_path / "world"))
    assert sorted(dataset) == ["test", "train", "validation"]
    test = dataset["test"]
    assert len(test) == 6 and test[1]["family"] == "fine_small" and test[1]["needs_high_res"] is True
    expected = synth.split_items("test", 6, seed=4)
    assert [row["answer"] for row in test] == [item.answer for item in expected]
    assert [row["image"].size for row in test] == [item.image.size for item in expected]


def test_bad_recipe_override_is_a_clear_error(tmp_path, capsys):
    line = _fails_with_one_line(capsys, ["train", "sft", "no_such_field=3", f"output_dir={tmp_path}"])
    assert "unknown SFTConfig field" in line


# ---------------------------------------------------------------- option values, in-process


def _usage_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process on `argv`; it must stop with exit code 2 and one `error:` line naming the option."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["data", "synth", "--out", "x", "--seed", "-1"], "--seed"),
        (["data", "synth", "--out", "x", "--n", "0"], "--n"),
        (["data", "synth", "--out", "x", "--n", "ten"], "--n"),
        (["demo", "--n", "-5"], "--n"),
        (["demo", "--batch-size", "0"], "--batch-size"),
        (["eval", "--out", "x", "--limit", "0"], "--limit"),
        (["eval", "--out", "x", "--batch-size", "-1"], "--batch-size"),
        (["data", "curate", "--data", "d", "--out", "x", "--k", "0"], "--k"),
        (["data", "curate", "--data", "d", "--out", "x", "--temperature", "0"], "--temperature"),
        (["data", "curate", "--data", "d", "--out", "x", "--temperature", "nan"], "--temperature"),
        (["data", "curate", "--data", "d", "--out", "x", "--seed", "-2"], "--seed"),
        (["serve", "--port", "0"], "--port"),
        (["serve", "--port", "65536"], "--port"),
        (["serve", "--timeout", "-1"], "--timeout"),
        (["serve", "--batch-wait-ms", "-0.5"], "--batch-wait-ms"),
        (["serve", "--max-queue", "0"], "--max-queue"),
        (["ask", "img.png", "q", "--max-input-pixels", "0"], "--max-input-pixels"),
        (["--threads", "0", "demo"], "--threads"),
    ],
)
def test_bad_option_values_are_usage_errors(capsys, argv, option):
    assert f"argument {option}: " in _usage_error(capsys, argv)


def test_good_edge_values_parse():
    args = build_parser().parse_args(["data", "synth", "--out", "x", "--seed", "0", "--n", "1"])
    assert (args.seed, args.n) == (0, 1)
    args = build_parser().parse_args(["serve", "--port", "65535", "--batch-wait-ms", "0", "--timeout", "0.5"])
    assert (args.port, args.batch_wait_ms, args.timeout) == (65535, 0.0, 0.5)


# ---------------------------------------------------------------- no answer, in-process with a fake engine


class _OneTurnEngine:
    """Replies with one fixed assistant turn (parsed by the real protocol)."""

    def __init__(self, text: str):
        self.text = text

    def run(self, requests, mode, progress=None):
        turn = protocol.parse_turn(self.text)
        return [protocol.Episode(
            messages=[protocol.assistant_turn(self.text)], answer=turn.answer if turn.kind == "answer" else None,
            turns=[turn], visual_tokens_per_turn=[4], full_res_visual_tokens=16, mode=mode)
            for _ in requests]


@pytest.fixture
def fake_ask(monkeypatch, item_png):
    from visionthink.engines.transformers_engine import TransformersEngine

    def ask(text: str, *extra: str) -> int:
        fake = classmethod(lambda cls, *args, **kwargs: _OneTurnEngine(text))
        monkeypatch.setattr(TransformersEngine, "from_pretrained", fake)
        return main(["ask", str(item_png[0]), "What pattern is on the label?", *extra])

    return ask


def test_ask_without_a_model_runs_the_default_ladder_model_in_its_own_protocol():
    """No `--model`: the default folder's declared protocol (zoom and resize), not the resize-only one; before, the
    default model's zoom call was refused as an unknown tool."""
    small = visionthink("ask", str(REPO / "examples" / "small-label.png"), "What texture does the tag show", "--json")
    spread = visionthink("ask", str(REPO / "examples" / "spread-labels.png"),
                         "Name the texture shared by most stickers", "--json")
    for result in (small, spread):
        assert result.returncode == 0, result.stderr
    small, spread = (json.loads(result.stdout.splitlines()[-1]) for result in (small, spread))
    assert (small["action"], small["error"]) == ("zoom", None)
    assert (spread["action"], spread["error"], spread["resized"]) == ("resize", None, True)


def test_ask_escalates_an_unsure_answer_to_full_resolution():
    """The ladder model answers the count from the low view with a confidence of about 0.7: under a higher
    threshold that answer is withdrawn and the model answers again with the full view (both views' tokens)."""
    args = (str(REPO / "examples" / "count.png"), "How many shapes are there?", "--json")
    plain, escalated = visionthink("ask", *args), visionthink("ask", *args, "--escalate-below", "0.9")
    for result in (plain, escalated):
        assert result.returncode == 0, result.stderr
    plain, escalated = (json.loads(result.stdout.splitlines()[-1]) for result in (plain, escalated))
    assert (plain["action"], plain["escalated"], plain["escalate_below"]) == ("answer", False, None)
    assert 0 < plain["answer_confidence"] < 0.9
    assert (escalated["action"], escalated["escalated"], escalated["escalate_below"]) == ("resize", True, 0.9)
    assert escalated["answer_confidence"] == plain["answer_confidence"]
    assert escalated["visual_tokens"] == plain["visual_tokens"] + escalated["full_res_visual_tokens"]
    assert escalated["turns"][0].endswith("</tool_call>") and escalated["error"] is None


@pytest.mark.parametrize("value", ["1.5", "-0.1", "x", ","])
def test_escalation_thresholds_outside_0_1_are_refused_by_the_parser(value, capsys):
    for command in (["ask", "img.png", "q?", "--escalate-below", value],
                    ["eval", "--out", "o", "--escalate-below", value]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(command)
        assert exit_info.value.code == 2
    assert "--escalate-below" in capsys.readouterr().err


def test_ask_malformed_final_turn_is_reported_with_exit_3(fake_ask, capsys):
    assert fake_ask("<think>no idea</think>", "--json") == EXIT_NO_ANSWER == 3
    record = json.loads(capsys.readouterr().out)
    assert record["answer"] is None
    assert record["error"] == "final turn malformed: no <answer> and no tool call"
    assert fake_ask("<think>no idea</think>") == 3
    captured = capsys.readouterr()
    assert "answer: None" in captured.out
    assert captured.err.strip() == "error: final turn malformed: no <answer> and no tool call"


def test_ask_answer_has_null_error_and_exit_0(fake_ask, capsys):
    assert fake_ask("<think>t</think>\n<answer>dots</answer>", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["answer"], record["error"]) == ("dots", None)
    assert fake_ask("dots</answer>") == 0  # a lone closing tag still answers
    captured = capsys.readouterr()
    assert "answer: dots" in captured.out and captured.err == ""


# ---------------------------------------------------------------- cold start: import only what a command needs

@pytest.mark.parametrize("argv", [["--help"], ["ask", "--help"], ["eval", "--help"], ["demo", "--help"]])
def test_help_imports_no_torch(argv):
    *printed, last = in_a_fresh_interpreter(argv)
    assert any("usage: visionthink" in line for line in printed)
    assert last == "0 []", printed


@pytest.fixture(scope="module")
def running_server(shipped_model):
    """The shipped model behind a real server on loopback, with an API key."""
    from test_serve import serving  # tests/ is on sys.path

    from visionthink.engines.transformers_engine import TransformersEngine
    from visionthink.serve.app import ServeConfig

    with serving(TransformersEngine(*shipped_model), ServeConfig(model_name="tiny-synth", api_key="ask-key")) as server:
        yield server


@pytest.mark.parametrize("mode", ["visionthink", "full"])
def test_ask_server_gives_the_local_episode_and_imports_no_torch(running_server, shipped_model, item_png, mode):
    """`ask --server` in a fresh interpreter: the server's episode, equal to the local engine's, and none of torch,
    transformers or PIL loaded on the asking side."""
    from visionthink.engines.transformers_engine import Request, TransformersEngine

    path, item = item_png
    *reply, last = in_a_fresh_interpreter(["ask", str(path), item.question, "--server", running_server.url,
                                           "--api-key", "ask-key", "--json", "--mode", mode])
    assert last == "0 []"
    record = json.loads(reply[-1])
    local = TransformersEngine(*shipped_model).run([Request(item.image, item.question)], mode)[0].summary()
    for key in ("answer", "resized", "action", "visual_tokens", "full_res_visual_tokens", "turns", "error"):
        assert record[key] == local[key], key


def test_ask_server_errors_are_one_line_and_exit_2(running_server, item_png, capsys):
    path, item = item_png
    assert main(["ask", str(path), item.question, "--server", running_server.url, "--api-key", "wrong"]) == 2
    assert "the server refused the request (401)" in capsys.readouterr().err
    assert main(["ask", str(path), item.question, "--server", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the server at http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["ask", str(path) + ".missing", item.question, "--server", running_server.url]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["ask", str(path), item.question, "--server", running_server.url, "--model", "x"]) == 2
    assert "with --server the server's answers" in capsys.readouterr().err
    not_an_image = path.parent / "notes.png"
    not_an_image.write_text("hello")
    assert main(["ask", str(not_an_image), item.question, "--server", running_server.url,
                 "--api-key", "ask-key"]) == 2
    assert "the server refused the request (400)" in capsys.readouterr().err


def test_cli_copies_of_constants_match():
    from visionthink import cli, images

    assert cli.DEFAULT_MAX_INPUT_PIXELS == images.DEFAULT_MAX_INPUT_PIXELS


def test_ask_from_the_command_line_leaves_at_once_after_flushing(fake_ask, monkeypatch, item_png, capsys):
    """`ask` run as a command skips the interpreter's ~1.4 s finalization (os._exit) once its reply is out;
    called in-process with argv it returns as before (the tests above)."""
    from visionthink import cli

    left: list[int] = []
    monkeypatch.setattr(cli.os, "_exit", left.append)
    fake_ask("x")  # installs the fake engine
    monkeypatch.setattr(sys, "argv", ["visionthink", "ask", str(item_png[0]), "What pattern?", "--json"])
    flushed: list[bool] = []
    real_flush = sys.stdout.flush
    monkeypatch.setattr(sys.stdout, "flush", lambda: (flushed.append(True), real_flush())[1])
    main()
    assert left == [EXIT_NO_ANSWER] and flushed
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["error"].startswith("final turn malformed")


def test_serve_passes_device_and_dtype_to_the_model(shipped_model_dir, loads, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # load, build the app, do not listen
    argv = ["--device", "cpu", "--dtype", "float32", "serve", "--model", str(shipped_model_dir), "--port", "8765",
            "--device-map", "cpu"]
    assert main(argv) == 0
    assert [(dtype, device, options) for dtype, device, options, _ in loads] == [
        ("float32", "cpu", {"attn_implementation": None, "device_map": "cpu"})]


def test_ask_on_vllm_without_vllm_is_one_line_and_exit_2(item_png, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    path, item = item_png
    assert main(["ask", str(path), item.question, "--engine", "vllm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the vLLM engine needs vLLM")


@pytest.mark.parametrize(("argv", "says"), [
    (["--engine", "remote"], "--engine remote needs --base-url"),
    (["--base-url", "http://127.0.0.1:9/v1"], "--base-url and --served-model belong to --engine remote"),
])
def test_engine_options_are_checked_before_any_work(item_png, capsys, argv, says):
    path, item = item_png
    assert main(["ask", str(path), item.question, *argv]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {says}")


def test_eval_on_the_remote_engine_equals_the_local_eval(shipped_model, shipped_model_dir, tmp_path, capsys):
    """`eval --engine remote` against a real server on loopback: the same answers, resizes and tokens."""
    from test_serve import serving  # tests/ is on sys.path

    from visionthink.engines.transformers_engine import TransformersEngine
    from visionthink.serve.app import ServeConfig

    local = ["eval", "--bench", "synth", "--modes", "low,visionthink", "--limit", "12", "--json", "--no-progress",
             "--model", str(shipped_model_dir)]
    assert main([*local, "--out", str(tmp_path / "local")]) == 0
    want = json.loads(capsys.readouterr().out)
    with serving(TransformersEngine(*shipped_model), ServeConfig(model_name="tiny", max_batch=8)) as server:
        assert main([*local, "--out", str(tmp_path / "remote"), "--engine", "remote", "--base-url",
                     server.url + "/v1", "--concurrency", "4"]) == 0
    got = json.loads(capsys.readouterr().out)
    for mode in ("low", "visionthink"):
        for key in ("score", "visual_tokens", "resize_ratio", "no_answer"):
            assert got["synth"][mode][key] == want["synth"][mode][key], (mode, key)
