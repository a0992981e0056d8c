"""The `visionthink` command line."""

from __future__ import annotations

import argparse
import os
import sys

from visionthink.errors import VisionThinkError
from visionthink.modes import MODES, PAPER_MODES

DEFAULT_MAX_INPUT_PIXELS = 50_000_000
"""`visionthink.images.DEFAULT_MAX_INPUT_PIXELS`, written out so that `--help` loads no PIL (a test compares)."""
EXIT_BAD_INPUT = 2
"""Bad input: a bad option value, image, model folder or recipe (one `error: ...` line on stderr)."""
EXIT_NO_ANSWER = 3
"""`ask`: the model ran but gave no answer (its final turn was malformed); the reason is reported."""
ASK_EXIT_CODES = (
    "exit codes: 0 answered; 2 bad input (option value, image, model folder); "
    "3 the model gave no answer (malformed final turn: `error` in --json, else an `error: ...` line on stderr)"
)
PROTOCOLS = ("visionthink", "release", "visionthink-zoom")
"""`visionthink.profiles.NAMES`, written out so that parsing the command line imports nothing (a test compares)."""
PROTOCOL_HELP = ("conversation format: visionthink (this project's), visionthink-zoom (with zoom_image) or release "
                 "(the authors' prompts, for their released checkpoints); default: what the model folder declares in "
                 "its visionthink.json, else visionthink")
MAX_NEW_TOKENS_HELP = ("tokens per assistant turn (default: the protocol's, 64 for visionthink, the tiny model's; "
                       "8192 for release, its evaluation's)")
PRESET_NAMES = ("tiny", "real-vocab-small", "7b-shape-2layer")
"""`visionthink.models.presets.NAMES`, written out for the same reason."""


# ---------------------------------------------------------------- option values (argparse `type=`)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _checked(parse, ok, message: str):
    """An argparse `type=`: `parse` the text, then refuse a value that is not `ok` with `message` (formatted with
    `text` and `value`)."""
    def check(text: str):
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(message.format(text=text, value=value))
        return value

    return check


positive_int = _checked(_integer, lambda v: v >= 1, "{value} is not positive (give 1 or more)")
"""An integer >= 1 (counts, sizes, limits)."""
non_negative_int = _checked(_integer, lambda v: v >= 0, "{value} is negative (give 0 or more)")
"""An integer >= 0 (seeds)."""
port_number = _checked(_integer, lambda v: 1 <= v <= 65535, "{value} is not a port (give 1-65535)")
positive_float = _checked(_finite, lambda v: v > 0, "{text} is not positive")
"""A finite number > 0 (timeouts, temperatures)."""
non_negative_float = _checked(_finite, lambda v: v >= 0, "{text} is negative")
"""A finite number >= 0 (waits)."""
tool_threshold = _checked(_finite, lambda v: 0 <= v <= 1, "{text} is not in [0, 1]")
"""A tool threshold, 0-1: call the tool when P(tool) >= it."""


def confidence_thresholds(text: str) -> list[float]:
    """Comma-separated answer-confidence thresholds, each in [0, 1] (`--escalate-below 0.5,0.6`)."""
    values = [tool_threshold(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} names no threshold")
    return values


ESCALATE_HELP = ("withdraw a first-turn answer the model gave less than this confidence (the least probability of "
                 "its answer's tokens) and call resize_image in its place, so that the model answers again on the "
                 "full view (default: answers stand; transformers engine only)")
TOOL_THRESHOLD_HELP = ("call the tool when the model's P(tool) at its first-turn decision is at least T (0: always, "
                       "1: only when certain; default: the model's own greedy choice; transformers engine only)")


# ---------------------------------------------------------------- commands


def _train_sft(args: argparse.Namespace) -> int:
    from visionthink.recipes import load_recipe
    from visionthink.train.sft import SFTConfig, train_sft

    config = load_recipe(args.recipe, args.section or "sft", SFTConfig, args.overrides)
    final = train_sft(config)  # one process: it refuses a multi-process launch
    print(f"final model: {final}")
    return 0


def _train_grpo(args: argparse.Namespace) -> int:
    from visionthink.recipes import load_recipe
    from visionthink.train import leave_distributed
    from visionthink.train.grpo import train_grpo
    from visionthink.train.grpo_config import VisionThinkGRPOConfig

    overrides = [*args.overrides, *([f"protocol={args.protocol}"] if args.protocol else [])]
    config = load_recipe(args.recipe, args.section or "grpo", VisionThinkGRPOConfig, overrides)
    final = train_grpo(config)
    if int(os.environ.get("RANK", "0")) == 0:  # one line, not one per launched process
        print(f"final model: {final}")
    return leave_distributed(0)


def _ask(args: argparse.Namespace) -> int:
    import time

    if args.server:
        return _ask_server(args)
    from visionthink.engines.base import Request
    from visionthink.engines.factory import build_engine
    from visionthink.images import load_image

    options = engine_options(args, batch_size=1)
    began = time.perf_counter()
    image = load_image(args.image, max_input_pixels=args.max_input_pixels)
    from visionthink.engines.kv_decoder import SamplingConfig
    from visionthink.modes import get_mode, own_mode
    from visionthink.profiles import declared_profile, get_profile, mode_profile

    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens) if args.max_new_tokens else None
    model_profile = get_profile(args.protocol) if args.protocol else declared_profile(options.model)
    mode = get_mode(args.mode or own_mode(model_profile))
    engine = build_engine(options, sampling=sampling, protocol=mode_profile(model_profile, mode))
    request = Request(image, args.question, tool_threshold=args.tool_threshold, escalate_below=args.escalate_below)
    episode = engine.run([request], mode.name)[0]
    summary = episode.summary()
    result = {key: summary[key] for key in ("answer", "resized", "action", "visual_tokens", "full_res_visual_tokens",
                                            "p_tool", "tool_threshold", "answer_confidence", "escalate_below",
                                            "escalated", "turns", "error")}
    result["zoom_box"] = list(episode.zoom_box) if episode.zoomed else None
    return _print_answer(result, time.perf_counter() - began, args.json)


def _ask_server(args: argparse.Namespace) -> int:
    """`ask --server`: the episode runs in a running `visionthink serve`; nothing heavy is imported here."""
    import time

    from visionthink.serve.client import ask_server

    if args.model is not None or args.protocol is not None or args.engine != "transformers":
        raise VisionThinkError("--model, --protocol and --engine choose a model; with --server the server's answers "
                               "(set them when starting `visionthink serve`)")
    began = time.perf_counter()
    api_key = args.remote_api_key or os.environ.get("VISIONTHINK_API_KEY") or None
    result = ask_server(args.server, args.image, args.question, args.mode, api_key, args.max_new_tokens,
                        tool_threshold=args.tool_threshold, escalate_below=args.escalate_below)
    return _print_answer(result, time.perf_counter() - began, args.json)


def _print_answer(result: dict, seconds: float, as_json: bool) -> int:
    """`ask`'s output: one JSON object, or lines; the exit code (`EXIT_NO_ANSWER` when there is no answer)."""
    import json

    if as_json:
        print(json.dumps({**{k: v for k, v in result.items() if k != "zoom_box"}, "seconds": round(seconds, 3)}))
    else:
        print(f"answer: {result['answer']}")
        print(f"resized: {'yes' if result['resized'] else 'no'}")
        if result.get("p_tool") is not None:
            threshold = result.get("tool_threshold")
            rule = "the model's own choice" if threshold is None else f"threshold {threshold}"
            print(f"P(tool): {result['p_tool']:.3f} ({rule})")
        if result.get("answer_confidence") is not None:
            below = result.get("escalate_below")
            then = "" if below is None else (
                f" (under {below}: withdrawn, resize_image called)" if result.get("escalated") else f" (>= {below})")
            print(f"first answer's confidence: {result['answer_confidence']:.3f}{then}")
        if result["zoom_box"] is not None:
            print(f"zoomed on: {result['zoom_box']} (low-res pixels)")
        share = 100 * result["visual_tokens"] / result["full_res_visual_tokens"]
        print(f"visual tokens: {result['visual_tokens']} (full resolution: {result['full_res_visual_tokens']}, "
              f"{share:.0f}%)")
        print(f"seconds: {seconds:.2f}")
        if result["error"]:
            print(f"error: {result['error']}", file=sys.stderr)
    return EXIT_NO_ANSWER if result["error"] else 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from visionthink.eval.synth_run import demo_plan, format_table, run_demo, timing_line

    plan = demo_plan(args.model)
    print(f"{args.n} held-out synthetic test items (seed 0), each asked in {len(plan.benches)} wording sets "
          f"({', '.join(plan.benches)}); greedy, model {args.model or 'shipped'}")
    with tempfile.TemporaryDirectory(prefix="visionthink-demo-") as scratch:
        result = run_demo(Path(args.out or scratch), args.n, args.model, args.batch_size, device=args.device,
                          dtype=args.dtype, plan=plan)
    for bench, title in plan.benches.items():
        print(f"\n{bench}: {title}\n")
        print(format_table(result.summary[bench]))
        print(f"\n{timing_line(result.records[bench])}")
    if args.out:
        print(f"\nreport: {result.report}")
    return 0


def _model_init(args: argparse.Namespace) -> int:
    from visionthink.models.presets import init_model

    out = init_model(args.preset, args.out, seed=args.seed)
    print(f"wrote {out} (preset {args.preset}, random weights, seed {args.seed})")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from visionthink.data.export import write_synth_dataset

    path = write_synth_dataset(args.out, args.n, args.seed, args.splits.split(","))
    print(f"wrote {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from visionthink.eval.report import table2
    from visionthink.eval.runner import EvalConfig, run_eval

    config = EvalConfig(
        model=args.model,
        benches=list(dict.fromkeys(b.strip() for b in args.bench.split(",") if b.strip())),
        modes=list(dict.fromkeys(m.strip() for m in args.modes.split(",") if m.strip())),
        out=Path(args.out),
        limit=args.limit,
        data_root=Path(args.data_root),
        judge=args.judge,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        device=args.device,
        dtype=args.dtype,
        protocol=args.protocol,
        max_new_tokens=args.max_new_tokens,
        engine=engine_options(args),
        tool_threshold=args.tool_threshold,
        curve=args.curve,
        token_budget=args.token_budget,
        calibration_fraction=args.calibration_fraction,
        escalate_below=args.escalate_below or [],
        escalate_budget=args.escalate_budget,
    )
    result = run_eval(config)
    if args.json:
        print(json.dumps(result.summary))
    else:
        print(table2(result.summary))
        for bench, modes in result.summary.items():
            for mode, metrics in modes.items():
                if metrics.get("no_answer"):
                    print(f"note: {bench}/{mode}: {metrics['no_answer']} of {metrics['n']} samples got no answer "
                          "(malformed final turn; scored wrong)")
        for note in result.notes:
            print(f"note: {note}")
        print(f"report: {result.out / 'report.md'}")
    return 0


def _data_curate(args: argparse.Namespace) -> int:
    import datasets

    from visionthink.data.curate import curate, format_confusion

    datasets.disable_progress_bars()
    curation = curate(args.model, args.data, args.out, k=args.k, split=args.split, seed=args.seed,
                      temperature=args.temperature, limit=args.limit, batch_size=args.batch_size,
                      progress=not args.no_progress, engine_options=engine_options(args),
                      max_new_tokens=args.max_new_tokens, judge=args.judge,
                      pixel_range=_pixel_range(args.pixel_range, args.protocol))
    print(format_confusion(curation))
    for note in curation.notes:
        print(f"note: {note}")
    print(curation.counts_line())
    items = curation.items()
    print(f"wrote {curation.out} (train: {items['kept']} items, cut: {items['cut']}, discarded: {items['wrong']})")
    return 0


def _pixel_range(text: str, protocol: str | None) -> tuple[int, int] | None:
    """`data curate --pixel-range`: `release` (the release's [512^2, 2048^2]), `none`, `MIN,MAX`, or `auto`
    (release under --protocol release, else none)."""
    from visionthink.images import RELEASE_MAX_PIXELS, RELEASE_MIN_PIXELS

    if text == "auto":
        text = "release" if protocol == "release" else "none"
    if text == "none":
        return None
    if text == "release":
        return RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS
    low, _, high = text.partition(",")
    try:
        bounds = positive_int(low), positive_int(high)
    except argparse.ArgumentTypeError as error:
        raise VisionThinkError(f"--pixel-range {text!r}: {error} (give release, none, auto or MIN,MAX)") from None
    if bounds[0] > bounds[1]:
        raise VisionThinkError(f"--pixel-range {text!r}: MIN is over MAX")
    return bounds


def _serve(args: argparse.Namespace) -> int:
    try:
        from visionthink.serve.server import serve
    except ImportError as error:
        hint = "pip install 'visionthink[serve]'"
        raise VisionThinkError(f"serving needs FastAPI and uvicorn: {hint} ({error})") from None
    from pathlib import Path

    from visionthink.models.loading import default_model_dir
    from visionthink.serve.config import ServeConfig

    api_key = args.api_key or os.environ.get("VISIONTHINK_API_KEY") or None
    if args.api_key:
        print("note: --api-key shows in the process list; set VISIONTHINK_API_KEY instead", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {args.host} without an API key (VISIONTHINK_API_KEY)", file=sys.stderr)
    if args.tool_threshold is not None and args.engine != "transformers":
        raise VisionThinkError("--tool-threshold needs the transformers engine, which reads P(tool) while it decodes")
    name = args.served_model_name or Path(args.model or default_model_dir()).name
    limits = {field: getattr(args, field) for _, field, _, _ in SERVE_LIMITS}
    config = ServeConfig(model_name=name, api_key=api_key, allow_remote_images=args.allow_remote_images,
                         allowed_hosts=tuple(args.allowed_host), tool_threshold=args.tool_threshold,
                         escalate_below=args.escalate_below, **limits)
    serve(engine_options(args), host=args.host, port=args.port, config=config, log_level=args.log_level)
    return 0


ENGINES = ("transformers", "vllm", "remote")
"""`visionthink.engines.factory.ENGINES`, written out so that parsing the command line imports nothing."""
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")


def add_engine_options(parser: argparse.ArgumentParser, api_key: str = "--api-key") -> None:
    """`--engine` and what each engine needs; `api_key` names the remote server's key option."""
    group = parser.add_argument_group("engine (where the model's turns are written)")
    group.add_argument("--engine", default="transformers", choices=ENGINES,
                       help="transformers: this process (default); vllm: vLLM in this process (GPU, the [vllm] "
                       "extra); remote: an OpenAI-compatible server (vllm serve, transformers serve, visionthink "
                       "serve)")
    group.add_argument("--attn-implementation", default=None, choices=ATTN_IMPLEMENTATIONS,
                       help="transformers: attention kernel (default: transformers' choice)")
    group.add_argument("--device-map", default=None, metavar="MAP",
                       help="transformers: 'auto' spreads a model larger than one GPU over the visible ones")
    group.add_argument("--tensor-parallel-size", type=positive_int, default=None, help="vllm: GPUs per model")
    group.add_argument("--gpu-memory-utilization", type=positive_float, default=None,
                       help="vllm: share of GPU memory it may take")
    group.add_argument("--base-url", default=None, metavar="URL",
                       help="remote: the server, e.g. http://127.0.0.1:8000/v1 (--model names the folder it serves: "
                       "its processor gives the pixel grid and the rendering check)")
    group.add_argument(api_key, dest="remote_api_key", default=None,
                       help="the key of the server asked (--engine remote, ask --server; or set "
                       "VISIONTHINK_REMOTE_API_KEY, VISIONTHINK_API_KEY for ask --server)")
    group.add_argument("--served-model", default=None,
                       help="remote: the model id on the server (default: the first one /v1/models lists)")
    group.add_argument("--concurrency", type=positive_int, default=8, help="remote: requests in flight (default 8)")


def engine_options(args: argparse.Namespace, batch_size: int = 32):
    """The `EngineOptions` of a command's arguments."""
    from visionthink.engines.factory import EngineOptions

    options = EngineOptions(
        engine=args.engine, model=args.model, protocol=getattr(args, "protocol", None),
        batch_size=getattr(args, "batch_size", None) or batch_size, device=args.device, dtype=args.dtype,
        attn_implementation=args.attn_implementation, device_map=args.device_map,
        tensor_parallel_size=args.tensor_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
        base_url=args.base_url, api_key=args.remote_api_key, served_model=args.served_model,
        concurrency=args.concurrency)
    options.check()
    return options


SERVE_LIMITS = (
    # (flag, ServeConfig field, type, help); the defaults are ServeConfig's
    ("--max-body-bytes", "max_body_bytes", positive_int, "request body size"),
    ("--max-image-pixels", "max_image_pixels", positive_int,
     "pixels of one image, refused from its header before decoding"),
    ("--max-request-pixels", "max_request_pixels", positive_int, "pixels of all images of one request"),
    ("--max-images", "max_images", positive_int, "images per request"),
    ("--max-new-tokens", "max_new_tokens", positive_int, "upper bound of a request's max_tokens"),
    ("--timeout", "timeout", positive_float, "seconds per request (work still running after it is stopped)"),
    ("--max-batch", "max_batch", positive_int, "requests batched into one forward pass"),
    ("--batch-wait-ms", "batch_wait_ms", non_negative_float, "how long a batch waits for company"),
    ("--max-queue", "max_queue", positive_int, "waiting requests before 429"),
    ("--remote-fetch-timeout", "remote_fetch_timeout", positive_float, "seconds for a whole remote image fetch"),
    ("--max-connections", "max_connections", positive_int, "open connections; more are closed at once"),
    ("--header-timeout", "header_timeout", positive_float, "seconds a connection may take to send its headers"),
    ("--body-timeout", "body_timeout", positive_float,
     "seconds a request body may take after its headers, plus 1 s per 256 KiB received"),
    ("--max-inflight-body-bytes", "max_inflight_body_bytes", positive_int,
     "bytes of request bodies held at once; more are refused with 503"),
)


def build_parser() -> argparse.ArgumentParser:
    from visionthink.serve.config import ServeConfig

    parser = argparse.ArgumentParser(prog="visionthink", description=__doc__)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: 1, or $VISIONTHINK_THREADS; training recipes set "
                        "their own). The tiny model is fastest on one thread; extra threads collapse when a "
                        "core is busy.")
    parser.add_argument("--device", default=None,
                        help="where models run: auto (a GPU when visible), cpu, cuda, cuda:1 ... "
                        "(default: auto); training uses its recipe")
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                        help="model weights' dtype (default: the checkpoint's own); training uses its recipe")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model").add_subparsers(dest="trainer", required=True)
    sft = train.add_parser("sft", help="supervised warm start of the tiny model on the synthetic world")
    sft.add_argument("--recipe", default=None, help="YAML recipe (section `sft:`)")
    sft.add_argument("--section", default=None, help="recipe section to read instead of `sft:` (e.g. sft_refresh)")
    sft.add_argument("overrides", nargs="*", help="recipe overrides as key=value")
    sft.set_defaults(handler=_train_sft)
    grpo = train.add_parser("grpo", help="multi-turn GRPO on TRL: learn when to resize (accuracy, format, penalty)")
    grpo.add_argument("--recipe", default=None, help="YAML recipe (section `grpo:`)")
    grpo.add_argument("--section", default=None, help="recipe section to read instead of `grpo:`")
    grpo.add_argument("overrides", nargs="*",
                      help="recipe overrides as key=value (any trl.GRPOConfig field by its TRL name)")
    grpo.add_argument("--protocol", default=None, choices=PROTOCOLS,
                      help="conversation format (default: the recipe's `protocol`, else visionthink)")
    grpo.set_defaults(handler=_train_grpo)

    ask = commands.add_parser("ask", help="ask one image a question", epilog=ASK_EXIT_CODES)
    ask.add_argument("image", help="image file")
    ask.add_argument("question")
    ask.add_argument("--model", default=None, help="model folder (default: the shipped tiny checkpoint)")
    asked = [mode for mode in MODES.values() if mode.calls != "oracle"]  # an arbitrary image has no label
    ask.add_argument("--mode", default=None, choices=[mode.name for mode in asked],
                     help="; ".join(f"{mode.name}: {mode.help}" for mode in asked) + " (default: the model's own, "
                     "zoom for a model whose protocol offers zoom_image, else visionthink)")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.add_argument("--tool-threshold", type=tool_threshold, default=None, metavar="T", help=TOOL_THRESHOLD_HELP)
    ask.add_argument("--escalate-below", type=tool_threshold, default=None, metavar="C", help=ESCALATE_HELP)
    ask.add_argument("--protocol", default=None, choices=PROTOCOLS, help=PROTOCOL_HELP)
    ask.add_argument("--max-new-tokens", type=positive_int, default=None, help=MAX_NEW_TOKENS_HELP)
    ask.add_argument("--max-input-pixels", type=positive_int, default=DEFAULT_MAX_INPUT_PIXELS,
                     help="refuse larger images (decompression bombs)")
    ask.add_argument("--server", default=None, metavar="URL",
                     help="ask a running `visionthink serve` at URL (e.g. http://127.0.0.1:8000): the episode runs "
                          "there and this process loads no model, so it starts in a fraction of a second")
    add_engine_options(ask)
    ask.set_defaults(handler=_ask)

    demo = commands.add_parser("demo", help="the shipped model on held-out synthetic test items in trained wordings "
                               "and in held-out ones: full, low, the model's own choice (answer, zoom or resize) and "
                               "the oracle (a resize-only model: the paper's four modes)")
    demo.add_argument("--model", default=None, help="model folder (default: the shipped tiny checkpoint)")
    demo.add_argument("--n", type=positive_int, default=300,
                      help="test items per wording set (the same items are asked in each)")
    demo.add_argument("--batch-size", type=positive_int, default=32)
    demo.add_argument("--out", default=None, metavar="DIR",
                      help="keep eval's report in DIR, new or empty (default: a temporary folder)")
    demo.set_defaults(handler=_demo)

    model = commands.add_parser("model", help="model folders").add_subparsers(dest="model_command", required=True)
    init = model.add_parser("init", help="a randomly initialised Qwen2.5-VL at a preset shape (save_pretrained)")
    init.add_argument("--preset", required=True, choices=PRESET_NAMES,
                      help="tiny (the project's), real-vocab-small (the real Qwen2.5 vocabulary and image processor, "
                           "small widths), 7b-shape-2layer (Qwen2.5-VL-7B widths, 2 layers)")
    init.add_argument("--out", required=True, help="model folder to write")
    init.add_argument("--seed", type=non_negative_int, default=0)
    init.set_defaults(handler=_model_init)

    data = commands.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the synthetic world as Hugging Face datasets")
    synth.add_argument("--out", required=True)
    synth.add_argument("--n", type=positive_int, default=600, help="items per split")
    synth.add_argument("--seed", type=non_negative_int, default=0)
    synth.add_argument("--splits", default="train,validation,test")
    synth.set_defaults(handler=_data_synth)

    curate = data.add_parser("curate", help="label items by k sampled rollouts at each resolution (paper 3.5)")
    curate.add_argument("--model", default=None, help="model folder (default: the shipped tiny checkpoint)")
    curate.add_argument("--data", required=True, help="a `visionthink data synth` folder (save_to_disk)")
    curate.add_argument("--split", default="train")
    curate.add_argument("--k", type=positive_int, default=8, help="sampled rollouts per item and resolution")
    curate.add_argument("--out", required=True, help="where to save the labelled training set")
    curate.add_argument("--seed", type=non_negative_int, default=0)
    curate.add_argument("--temperature", type=positive_float, default=1.0)
    curate.add_argument("--limit", type=positive_int, default=None, help="only the first N items")
    curate.add_argument("--batch-size", type=positive_int, default=64)
    curate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    curate.add_argument("--protocol", default=None, choices=PROTOCOLS, help=PROTOCOL_HELP)
    curate.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help=MAX_NEW_TOKENS_HELP + "; a turn that hits it is counted as cut, not wrong")
    curate.add_argument("--judge", default=None,
                        help="judge spec as for eval (rule, http://host/v1#model, local:DIR; default: exact match)")
    curate.add_argument("--pixel-range", default="auto", metavar="RANGE",
                        help="scale every image into a pixel range before its views: release (the authors' "
                        "[512^2, 2048^2], as their training data), none, MIN,MAX, or auto (default: release under "
                        "--protocol release, else none)")
    add_engine_options(curate)
    curate.set_defaults(handler=_data_curate)

    evaluate = commands.add_parser("eval", help="score, visual tokens, resize ratio and time per bench and mode")
    evaluate.add_argument("--model", default=None, help="model folder (default: the shipped tiny checkpoint)")
    evaluate.add_argument("--bench", default="synth",
                          help="comma-separated benchmarks (synth, synth-heldout: the same images in held-out "
                          "question wordings, chartqa, ...)")
    evaluate.add_argument("--modes", default=",".join(PAPER_MODES),
                          help="comma-separated modes: " + "; ".join(f"{m.name}: {m.help}" for m in MODES.values()))
    evaluate.add_argument("--out", required=True, help="report folder (rerun with the same folder to resume)")
    evaluate.add_argument("--limit", type=positive_int, default=None, help="only the first N samples of each bench")
    evaluate.add_argument("--data-root", default="data", help="benchmark folders live in DATA_ROOT/<bench>")
    evaluate.add_argument("--judge", default=None, help="judge spec for judge-scored benchmarks")
    evaluate.add_argument("--batch-size", type=positive_int, default=32)
    evaluate.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    evaluate.add_argument("--protocol", default=None, choices=PROTOCOLS, help=PROTOCOL_HELP)
    evaluate.add_argument("--max-new-tokens", type=positive_int, default=None, help=MAX_NEW_TOKENS_HELP)
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    evaluate.add_argument("--tool-threshold", type=tool_threshold, default=None, metavar="T",
                          help=TOOL_THRESHOLD_HELP + "; records are labelled visionthink@T=<T>")
    evaluate.add_argument("--curve", action="store_true",
                          help="also run every item with the tool forced and refused at the decision, and write the "
                          "score-vs-tokens curve of every threshold (curve.json, curve.png)")
    evaluate.add_argument("--token-budget", type=positive_float, default=None, metavar="F",
                          help="choose the threshold on a calibration part of each bench so that visual tokens come to "
                          "F of full resolution's (0.25-1.25 for resize), then run the rest with it")
    evaluate.add_argument("--escalate-below", type=confidence_thresholds, default=None, metavar="C[,C...]",
                          help="also run the modes where the model decides once per threshold C: " + ESCALATE_HELP
                          + "; records are labelled <mode>+escalate@C")
    evaluate.add_argument("--escalate-budget", type=positive_float, default=None, metavar="F",
                          help="choose the answer-confidence threshold (--escalate-below) on a calibration part of "
                          "each bench so that visual tokens come to F of full resolution's, then run the rest with it")
    evaluate.add_argument("--calibration-fraction", type=positive_float, default=0.4, metavar="P",
                          help="the share of items that calibrates --token-budget and --escalate-budget (default 0.4)")
    add_engine_options(evaluate)
    evaluate.set_defaults(handler=_eval)
    serve = commands.add_parser("serve", help="OpenAI-compatible VisionThink server with a web page")
    serve.add_argument("--model", default=None, help="model folder (default: the shipped tiny checkpoint)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=8000)
    serve.add_argument("--served-model-name", default=None, help="model id in the API (default: folder name)")
    serve.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' on /v1/*; better set VISIONTHINK_API_KEY, which "
                       "the process list does not show")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a host name a server without an API key answers, besides IP addresses and localhost "
                       "(repeatable; '*' for any)")
    serve.add_argument("--allow-remote-images", action="store_true",
                       help="fetch http(s) image URLs (public addresses only); default: data: URLs only")
    serve_defaults = ServeConfig()
    for flag, field, kind, text in SERVE_LIMITS:
        default = getattr(serve_defaults, field)
        serve.add_argument(flag, dest=field, type=kind, default=default, help=f"{text} (default: {default})")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--protocol", default=None, choices=PROTOCOLS, help=PROTOCOL_HELP)
    serve.add_argument("--tool-threshold", type=tool_threshold, default=None, metavar="T",
                       help=TOOL_THRESHOLD_HELP + "; a request's visionthink_tool_threshold overrides it")
    serve.add_argument("--escalate-below", type=tool_threshold, default=None, metavar="C",
                       help=ESCALATE_HELP + "; a request's visionthink_escalate_below overrides it")
    add_engine_options(serve, api_key="--remote-api-key")
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "server", None):  # `ask --server` runs nothing here
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        import torch

        torch.set_num_threads(args.threads or int(os.environ.get("VISIONTHINK_THREADS", "1")))
    try:
        code = args.handler(args)
    except VisionThinkError as error:
        print(f"error: {error}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    if argv is None and args.command == "ask":  # the command line, not a caller in this process
        _leave_now(code)
    return code


def _leave_now(code: int) -> None:
    """End the process as soon as `ask` has printed its reply: the interpreter's own finalization of the
    ~2,600 modules torch and transformers load takes ~1.4 s (0.6 s for torch alone) and does nothing an
    `ask` needs; `ask` writes no files, so flushing the streams and the logs is all there is to do."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
