"""`visionthink eval`: run modes over benchmarks, log every sample, and summarise score against cost.

The report folder holds:
- `samples.jsonl`: one record per (bench, mode, uid), appended as each batch finishes. A rerun with
  the same folder skips the records already there (an interrupted eval resumes where it stopped).
- `summary.json`: `{bench: {mode: {"score", "visual_tokens", "resize_ratio", "seconds", "no_answer", ...}}}`,
  always recomputed from the whole of `samples.jsonl` (`no_answer`: samples whose episode ended without an
  answer, e.g. a malformed final turn; each record's `answer_error` says why). Time: `seconds` (total wall
  time), `seconds_mean` (per item), `timing`: `measured` when every item ran alone (`--batch-size 1`; then
  `seconds_p50`/`seconds_p95` are per item) or `batch_share` (items ran in batches: per-item times are
  shares, the percentiles are null and `batch_seconds_p50`/`_p95` give the batches' wall times); the same
  per family in `per_family`.
- `run.json` (what was run, and notes such as skipped modes), `report.md` and the plots
  (see `visionthink.eval.report`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from visionthink.errors import ImageError, VisionThinkError
from visionthink.eval import curve
from visionthink.eval.escalation import choose_escalation
from visionthink.eval.samples_log import SampleLog
from visionthink.eval.summary import ACTION_LABEL, ORACLE_LABEL, summarise
from visionthink.protocol import images_in
from visionthink.rewards.judge_base import Judge
from visionthink.rewards.judge_cache import CachedJudge

if TYPE_CHECKING:
    from visionthink.engines.factory import EngineOptions
    from visionthink.profiles import ProtocolProfile

SAMPLES_FILE = "samples.jsonl"
CURVE_FILE = "curve.json"
CURVE_PICTURE = "curve.png"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
JUDGE_CACHE_FILE = "judge_cache.jsonl"


# ---------------------------------------------------------------- running


@dataclass
class EvalConfig:
    """What `visionthink eval` runs."""

    model: str | None
    benches: list[str]
    modes: list[str]
    out: Path
    limit: int | None = None
    data_root: Path = Path("data")
    judge: str | None = None
    batch_size: int = 32
    progress: bool = True
    device: str | None = None
    """Where the model runs (None: a GPU when visible)."""
    dtype: str | None = None
    """The weights' dtype (None: the checkpoint's own)."""
    protocol: str | None = None
    """The conversation format (`visionthink.profiles`): visionthink or release (the authors' prompts); None: what the
    model folder declares (`profiles.declared_profile`)."""
    max_new_tokens: int | None = None
    """Tokens per assistant turn (None: `SamplingConfig`'s default: enough for the tiny model, not for a 7B that
    thinks)."""
    engine: EngineOptions | None = None
    """Which engine runs the model (`engines.factory`; None: transformers, with `model`, `device`, `dtype` and
    `batch_size` above, which also fill the options' unset fields)."""
    tool_threshold: float | None = None
    """Run the modes where the model decides (`visionthink`, `zoom`) with this tool threshold (`engines.tool_decision`;
    their records are labelled `visionthink@T=<threshold>`); None: the model's own choice."""
    curve: bool = False
    """Also record every item with the path forced both ways and write the score-vs-tokens curve of every threshold
    (`eval.curve`: `curve.json`, `curve.png`)."""
    token_budget: float | None = None
    """Choose the threshold on a calibration part of each bench so that visual tokens come to this fraction of full
    resolution's, then run the rest of the bench with it (`curve.json` says what was reached)."""
    calibration_fraction: float = 0.4
    """The share of each bench's items (by a hash of the uid) that calibrates `token_budget`."""
    escalate_below: list[float] = field(default_factory=list)
    """Also run the modes where the model decides once per threshold here, first-turn answers less confident than it
    withdrawn for a `resize_image` call (`engines.confidence`; records labelled `zoom+escalate@0.6`)."""
    escalate_budget: float | None = None
    """Choose the answer-confidence threshold on a calibration part of each bench (`calibration_fraction`) so that
    visual tokens come to this fraction of full resolution's (`eval.escalation`), then run the rest with it."""


@dataclass
class EvalResult:
    summary: dict[str, dict[str, dict[str, Any]]]
    notes: list[str] = field(default_factory=list)
    out: Path = Path(".")


def _jsonable(value: Any) -> Any:
    """Meta values as JSON: primitives, lists and dicts kept, anything else (images, bytes) as text or dropped."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)) or hasattr(value, "getpixel"):
        return None
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _load_benchmark(name: str):
    try:
        from visionthink.eval.benchmarks import get_benchmark
    except ImportError as error:
        raise VisionThinkError(f"benchmark registry unavailable ({error})") from None
    bench = get_benchmark(name)
    return bench() if isinstance(bench, type) else bench


def _make_judge(spec: str | None, out: Path) -> Judge | None:
    if not spec:
        return None
    try:
        from visionthink.rewards.judges import make_judge
    except ImportError as error:
        raise VisionThinkError(f"--judge needs visionthink.rewards.judges ({error})") from None
    try:
        inner = make_judge(spec)
    except ValueError as error:
        raise VisionThinkError(f"--judge: {error}") from None
    return CachedJudge(inner, out / JUDGE_CACHE_FILE)


def _unique_uids(samples: list, bench: str, notes: list[str]) -> list:
    seen: dict[str, int] = {}
    duplicated = 0
    for sample in samples:
        uid = str(sample.uid)
        if uid in seen:
            seen[uid] += 1
            duplicated += 1
            sample.uid = f"{uid}#{seen[uid]}"
        else:
            seen[uid] = 0
            sample.uid = uid
    if duplicated:
        notes.append(f"{bench}: {duplicated} duplicate uids renamed with a '#n' suffix")
    return samples


def episode_record(bench: str, mode: str, sample, episode, score: float | None, error: str | None = None,
                   batch: BatchTiming | None = None) -> dict:
    """The samples.jsonl line for one finished sample.

    `seconds` is the episode's own account of its time; in a batch of more than one sample each turn's
    time is shared out evenly over the rows still running, so it is a share, not a measurement.
    `batch_seconds` is the wall time of the whole engine call (`batch_size` samples, image loading
    included, `batch_id` naming it): for a batch of one, the sample's own measured time."""
    truth = sample.answer if isinstance(sample.answer, str) else [str(a) for a in sample.answer]
    summary = {} if episode is None else episode.summary()
    record = {
        "bench": bench,
        "mode": mode,
        "uid": str(sample.uid),
        "question": sample.question,
        "truth": truth,
        "prediction": None if episode is None else episode.answer,
        "score": score,
        "resized": False if episode is None else bool(episode.resized),
        "action": None if episode is None else getattr(episode, "action", "resize" if episode.resized else "answer"),
        "visual_tokens": 0 if episode is None else int(episode.visual_tokens),
        "full_res_visual_tokens": 0 if episode is None else int(episode.full_res_visual_tokens),
        "generated_tokens": 0 if episode is None else int(episode.generated_tokens),
        "prompt_tokens": 0 if episode is None else int(episode.prompt_tokens),
        "seconds": 0.0 if episode is None else float(sum(episode.seconds.values())),
        "seconds_detail": {} if episode is None else {k: round(float(v), 6) for k, v in episode.seconds.items()},
        "well_formed": False if episode is None else bool(episode.well_formed),
        "answer_error": None if episode is None else episode.error,
        "turns": summary.get("turns", []),
        "p_tool": summary.get("p_tool"),
        "tool_threshold": summary.get("tool_threshold"),
        "answer_confidence": summary.get("answer_confidence"),
        "escalated": bool(summary.get("escalated", False)),
        "meta": _jsonable(dict(sample.meta)),
    }
    if episode is not None and getattr(episode, "zoom_box", None) is not None:
        record["zoom_box"] = list(episode.zoom_box)  # the zoom call's box, low-res view pixels (IoU with the truth)
    if batch is not None:
        record.update(batch_id=batch.id, batch_size=batch.size, batch_seconds=round(batch.seconds, 6))
    if error:
        record["error"] = error
    return record


clock: Callable[[], float] = time.perf_counter
"""The wall clock batches are timed with (tests replace it)."""


@dataclass
class BatchTiming:
    """One call of the engine: its wall time and how many samples it ran together."""

    id: str
    size: int
    seconds: float


def _timed_run(engine, requests: list, mode: str) -> tuple[list, BatchTiming]:
    began = clock()
    episodes = engine.run(requests, mode)
    return episodes, BatchTiming(uuid.uuid4().hex[:12], len(requests), clock() - began)


def _run_chunk(engine, requests: list, mode: str, bar) -> list[tuple[Any, str | None, BatchTiming]]:
    """Episodes for a chunk, each with the timing of the engine call it ran in. A sample that cannot run
    (a broken image, a turn that cannot be rendered again) fails alone: its episode is None and the error
    is kept; the chunk's other samples are then run (and timed) one at a time."""
    try:
        episodes, timing = _timed_run(engine, requests, mode)
    except (ImageError, ValueError):
        results = []
        for request in requests:
            began = clock()
            try:
                episode, single = _timed_run(engine, [request], mode)
                results.append((episode[0], None, single))
            except (ImageError, ValueError) as error:
                failed = BatchTiming(uuid.uuid4().hex[:12], 1, clock() - began)
                results.append((None, f"{type(error).__name__}: {error}", failed))
            if bar is not None:
                bar.update(1)
        return results
    if bar is not None:
        bar.update(len(requests))
    return [(e, None, timing) for e in episodes]


def _engine_batch_size(engine) -> int | None:
    size = getattr(engine, "batch_size", None)
    return size if isinstance(size, int) and size >= 1 else None


def _model_id(model: str | os.PathLike | None) -> str | None:
    """How run.json names a model: None for the shipped checkpoint, else its absolute path."""
    return None if model is None else str(Path(model).expanduser().resolve())


def _claim_folder(out: Path, model: str | None) -> None:
    """Refuse to resume a report folder that holds another model's samples; mark a new one as this model's."""
    run_file, samples = out / RUN_FILE, out / SAMPLES_FILE
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        previous = model
    if previous != model and samples.is_file() and samples.stat().st_size > 0:
        raise VisionThinkError(f"{out} holds results of model {previous or 'shipped'}, not {model or 'shipped'}; "
                               "resume with the same --model or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if previous != model or not run_file.is_file():
        run_file.write_text(json.dumps({"model": model}, indent=2) + "\n", encoding="utf-8")


def _box(bench, sample) -> tuple[int, int, int, int] | None:
    """The true box of a sample's answer region (`oracle-zoom`), where the benchmark knows it."""
    label_box = getattr(bench, "label_box", None)
    return None if label_box is None else label_box(sample)


def _source_size(image) -> tuple[int, int]:
    """The (width, height) of a sample's image as given (a PIL image or a path; only the header is read)."""
    if hasattr(image, "size"):
        return tuple(image.size)
    with Image.open(image) as opened:
        return opened.size


def zoom_iou(episode, truth: tuple[int, int, int, int], source_size: tuple[int, int]) -> float:
    """IoU of an episode's zoom box (low-view pixels) with the true box (source pixels, as `oracle-zoom` gets it),
    both in low-view pixels."""
    low = images_in(episode.messages)[0].size
    sx, sy = low[0] / source_size[0], low[1] / source_size[1]
    true = (truth[0] * sx, truth[1] * sy, truth[2] * sx, truth[3] * sy)
    return box_iou(tuple(float(v) for v in episode.zoom_box), true)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for empty ones."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _request(bench, sample, mode: str, threshold: float | None = None, escalate_below: float | None = None):
    """The engine's request for `sample` in `mode`, with the oracle's labels and, where its tool is aimed, the box."""
    from visionthink.engines.base import Request, oracle_aims
    from visionthink.modes import MODES

    request = Request(sample.image, sample.question, sample.meta.get(ORACLE_LABEL),
                      right_action=sample.meta.get(ACTION_LABEL), tool_threshold=threshold,
                      escalate_below=escalate_below)
    if oracle_aims(MODES[mode], request):
        request.box = _box(bench, sample)
    return request


def _oracle_ready(bench, samples: list, mode: str) -> bool:
    """Whether every sample carries the mode's oracle label and, where its oracle zooms, the true box."""
    from visionthink.engines.base import oracle_aims
    from visionthink.modes import MODES

    label = MODES[mode].oracle_label
    if not all(s.meta.get(label) is not None for s in samples):
        return False
    requests = [_request(bench, s, mode) for s in samples]
    return all(r.box is not None for r in requests if oracle_aims(MODES[mode], r))


class _Engines:
    """The engine of each mode: one per profile the modes need (the model's profile restricted to each mode's tools,
    `profiles.with_tools`), all on the same weights or server."""

    def __init__(self, config: EvalConfig, engine=None):
        self.config = config
        self.given = engine
        self.by_profile: dict[str, Any] = {}

    def options(self) -> EngineOptions:
        """The engine options, with the config's model, device, dtype and batch size where they leave them unset."""
        from visionthink.engines.factory import EngineOptions

        given = self.config.engine or EngineOptions()
        return replace(given, model=given.model or self.config.model, device=given.device or self.config.device,
                       dtype=given.dtype or self.config.dtype, batch_size=self.config.batch_size)

    @cached_property
    def model_profile(self) -> ProtocolProfile:
        """The profile the model was trained on: the given engine's, `--protocol`'s, or the model folder's
        declaration (`profiles.declared_profile`)."""
        from visionthink.profiles import declared_profile, get_profile

        if self.given is not None:
            return get_profile(getattr(self.given, "protocol", None))
        if self.config.protocol is not None:
            return get_profile(self.config.protocol)
        try:
            return declared_profile(self.options().model)
        except ValueError as error:
            raise VisionThinkError(str(error)) from None

    def profile_for(self, mode: str) -> ProtocolProfile:
        """The profile `mode` runs on (`profiles.mode_profile`): a one-line refusal when the model lacks its tools."""
        from visionthink.modes import get_mode
        from visionthink.profiles import mode_profile

        return mode_profile(self.model_profile, get_mode(mode))

    def for_mode(self, mode: str):
        """The engine whose profile offers exactly the mode's tools (`profiles.with_tools`), on the same weights."""
        from visionthink.profiles import get_profile

        wanted = self.profile_for(mode)
        if self.given is not None and get_profile(getattr(self.given, "protocol", None)) is wanted:
            return self.given
        if wanted.name in self.by_profile:
            return self.by_profile[wanted.name]
        base = self.given if self.given is not None else next(iter(self.by_profile.values()), None)
        if base is not None:  # same weights (or server), another conversation format
            from visionthink.engines.factory import with_profile

            built = with_profile(base, wanted)
        else:
            from visionthink.engines.factory import build_engine
            from visionthink.engines.kv_decoder import SamplingConfig

            sampling = SamplingConfig(max_new_tokens=self.config.max_new_tokens) if self.config.max_new_tokens else None
            built = build_engine(self.options(), sampling=sampling, protocol=wanted)
        self.by_profile[wanted.name] = built
        return built


def _check_threshold_options(config: EvalConfig, engine=None) -> None:
    """Refuse bad threshold, curve and budget settings, and an engine that cannot steer by a threshold, before any
    work."""
    from visionthink.engines.base import check_escalation, check_threshold

    try:
        check_threshold(config.tool_threshold)
    except ValueError as error:
        raise VisionThinkError(f"--tool-threshold: {error}") from None
    if config.escalate_budget is not None and not 0 < config.escalate_budget:
        raise VisionThinkError(f"--escalate-budget must be a positive fraction of full resolution's visual tokens, "
                               f"got {config.escalate_budget}")
    if config.token_budget is not None and not 0 < config.token_budget:
        raise VisionThinkError(f"--token-budget must be a positive fraction of full resolution's visual tokens, "
                               f"got {config.token_budget}")
    if not 0 < config.calibration_fraction < 1:
        raise VisionThinkError(f"--calibration-fraction must lie in (0, 1), got {config.calibration_fraction}")
    for below in config.escalate_below:
        try:
            check_escalation(below)
        except ValueError as error:
            raise VisionThinkError(f"--escalate-below: {error}") from None
    if (config.escalate_below or config.escalate_budget is not None) and not _engine_can(
            config, engine, "records_confidence"):
        raise VisionThinkError("--escalate-below and --escalate-budget need an engine that reads the answer's token "
                               "probabilities (transformers, vllm, remote)")
    steering = config.tool_threshold is not None or config.curve or config.token_budget is not None
    if not steering:
        return
    if not _engine_can(config, engine, "decides_by_threshold"):
        raise VisionThinkError("--tool-threshold, --curve and --token-budget need the transformers engine, which "
                               "reads P(tool) while it decodes")


def _engine_can(config: EvalConfig, engine, ability: str) -> bool:
    """Whether the engine has `ability` (`decides_by_threshold`, `records_confidence`): the given engine's own flag,
    else the configured engine's: every engine records the answer's confidence, only transformers decides by P(tool)."""
    if engine is not None:
        return getattr(engine, ability, False)
    return ability == "records_confidence" or config.engine is None or config.engine.engine == "transformers"


@dataclass(frozen=True)
class Run:
    """What one pass over a bench's items runs: the records' mode label, the engine's mode, the tool threshold and
    the answer-confidence threshold."""

    label: str
    mode: str
    threshold: float | None = None
    escalate_below: float | None = None


def _run_label(config: EvalConfig, engines: _Engines, samples_log: SampleLog, judge, bench, bench_name: str,
               samples: list, what: Run) -> int:
    """Run the items of `samples` that `samples_log` lacks under `what.label`, logging each batch; how many ran."""
    from tqdm import tqdm

    pending = [s for s in samples if not samples_log.done(bench_name, what.label, str(s.uid))]
    if not pending:
        return 0
    mode = what.mode
    engine = engines.for_mode(mode)
    # one chunk = one engine batch, so that a chunk's wall time is one batch's
    chunk_size = min(config.batch_size, _engine_batch_size(engine) or config.batch_size)
    with tqdm(total=len(samples), initial=len(samples) - len(pending), desc=f"{bench_name}/{what.label}",
              unit="q", disable=not config.progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start : start + chunk_size]
            requests = [_request(bench, s, mode, what.threshold, what.escalate_below) for s in chunk]
            results = _run_chunk(engine, requests, mode, bar)
            predictions = [None if e is None else e.answer for e, _, _ in results]
            per_sample = bench.score(chunk, predictions, judge).per_sample
            records = [
                episode_record(bench_name, what.label, sample, episode, float(score), error, timing)
                for sample, (episode, error, timing), score in zip(chunk, results, per_sample, strict=True)
            ]
            for sample, (episode, _, _), record in zip(chunk, results, records, strict=True):
                if "zoom_box" in record and (truth := _box(bench, sample)) is not None:
                    record["zoom_iou"] = round(zoom_iou(episode, truth, _source_size(sample.image)), 4)
            samples_log.append(records)
    return len(pending)


def escalation_label(label: str, below: float) -> str:
    """The records' mode label of a run whose unsure answers escalate: `zoom+escalate@0.6`."""
    return f"{label}+escalate@{below:.6g}"


def split_calibration(samples: list, fraction: float) -> tuple[list, list]:
    """Calibration and test parts of a bench's items, by a hash of each uid (stable across runs and limits)."""
    calibration, test = [], []
    for sample in samples:
        digest = hashlib.sha256(str(sample.uid).encode()).digest()
        (calibration if int.from_bytes(digest[:4], "big") / 2**32 < fraction else test).append(sample)
    return calibration, test


def _check_split(bench_name: str, samples: list, calibration: list, test: list) -> None:
    """Refuse a budget on a bench whose items leave its calibration or its test part empty."""
    if not calibration or not test:
        raise VisionThinkError(f"{bench_name}: {len(samples)} items cannot be split into a calibration and a test "
                               "part; give more items (--limit)")


def _part_figures(records: list[dict]) -> tuple[float, float]:
    """Visual tokens as a fraction of full resolution's, and the mean score, over a part's records."""
    tokens = sum(r["visual_tokens"] for r in records) / max(1, sum(r["full_res_visual_tokens"] for r in records))
    return tokens, sum(float(r["score"] or 0.0) for r in records) / len(records)


def _curve_items(samples_log: SampleLog, bench_name: str, samples: list) -> list[curve.Item]:
    never, always = samples_log.select(bench_name, curve.NEVER), samples_log.select(bench_name, curve.ALWAYS)
    present = [s for s in samples if str(s.uid) in never and str(s.uid) in always]
    return curve.items_from([never[str(s.uid)] for s in present], [always[str(s.uid)] for s in present],
                            [s.meta.get(ORACLE_LABEL) for s in present])


def _write_curves(out: Path, curves: dict[str, list], budgets: dict[str, dict], summary: dict,
                  notes: list[str]) -> None:
    """`curve.json` (per bench: the curve, its baselines, AUROC, the token budget's outcome) and `curve.png` (a panel
    per bench, the bench's full, low and visionthink runs marked); a note per curve."""
    result: dict[str, Any] = {bench_name: {} for bench_name in dict.fromkeys([*curves, *budgets])}
    marks: dict[str, dict[str, tuple[float, float]]] = {}
    for bench_name, items in curves.items():
        entry = result[bench_name] = curve.summarise_curve(items)
        marks[bench_name] = {}
        for mode in ("full", "low", "visionthink"):
            m = summary.get(bench_name, {}).get(mode)
            if m and m.get("full_res_visual_tokens"):
                marks[bench_name][mode] = (m["visual_tokens"] / m["full_res_visual_tokens"], m["score"])
        against = (("auroc_needs_high_res", "vs needs_high_res"),
                   ("auroc_low_wrong_full_right", "vs low wrong, full right"))
        aurocs = ", ".join(f"{name} {entry[key]:.3f}" for key, name in against if entry[key] is not None)
        notes.append(f"{bench_name}: curve of every tool threshold over {entry['n']} items ({CURVE_PICTURE}); "
                     f"AUROC of P(tool) {aurocs or 'undefined (one class only)'}; least margin over random "
                     f"calls {100 * entry['margin_over_random']:+.1f} points")
    if curves:
        curve.plot_curves({name: result[name] for name in curves}, out / CURVE_PICTURE, marks)
    for bench_name, budget in budgets.items():
        result[bench_name]["token_budget"] = budget
    (out / CURVE_FILE).write_text(json.dumps(result, indent=2) + "\n")


def run_eval(config: EvalConfig, engine=None, log: Callable[[str], None] | None = None) -> EvalResult:
    """Run every (bench, mode) still missing from the report folder, then summarise and write the report."""
    from visionthink.eval.report import write_report
    from visionthink.modes import MODES

    log = log or (lambda message: print(message, file=sys.stderr))
    unknown = [m for m in config.modes if m not in MODES]
    if unknown:
        raise VisionThinkError(f"unknown mode(s) {', '.join(unknown)}; expected some of {', '.join(MODES)}")
    engines = _Engines(config, engine)
    for mode in config.modes:  # refused in one line before any work
        engines.profile_for(mode)
    if not config.benches or not config.modes:
        raise VisionThinkError("give at least one --bench and one --mode")
    if config.batch_size < 1:
        raise VisionThinkError("--batch-size must be at least 1")
    _check_threshold_options(config, engine)
    if not config.judge:  # before any folder, data or model is touched
        judged = []
        for name in config.benches:
            bench = _load_benchmark(name)
            if getattr(bench, "needs_judge", False):
                judged.append(getattr(bench, "name", "") or name)
        if judged:
            raise VisionThinkError(f"{', '.join(dict.fromkeys(judged))}: scored only by an LLM judge; pass --judge "
                                   "(http://host/v1#model or local:DIR) or leave it out of --bench")
    out = Path(config.out)
    _claim_folder(out, _model_id(config.model))
    judge = _make_judge(config.judge, out)
    samples_log = SampleLog(out / SAMPLES_FILE)
    notes: list[str] = []
    loaded: dict[str, tuple[Any, list, list[str]]] = {}
    computed: dict[str, int] = {}
    curves: dict[str, list[curve.Item]] = {}
    budgets: dict[str, dict[str, Any]] = {}

    def run(bench, bench_name: str, samples: list, what: Run) -> None:
        computed[f"{bench_name}/{what.label}"] = _run_label(config, engines, samples_log, judge, bench, bench_name,
                                                            samples, what)

    began = time.perf_counter()
    for requested in config.benches:
        bench = _load_benchmark(requested)
        bench_name = getattr(bench, "name", "") or requested
        if bench_name in loaded:
            continue
        root = Path(config.data_root) / requested
        if not root.exists() and (Path(config.data_root) / bench_name).exists():
            root = Path(config.data_root) / bench_name
        if getattr(bench, "generated", False) and not (root.exists() and getattr(bench, "reads_folder", True)):
            root = None  # the built-in generator: the held-out synthetic test split
            log(f"{bench_name}: no folder under --data-root; generating the held-out synthetic test split"
                if getattr(bench, "reads_folder", True) else f"{bench_name}: generating the synthetic test split")
        samples = _unique_uids(bench.load(root, limit=config.limit), bench_name, notes)
        modes = []
        for mode in config.modes:
            if MODES[mode].calls == "oracle" and not _oracle_ready(bench, samples, mode):
                label = MODES[mode].oracle_label
                note = (f"{bench_name}: {mode} mode skipped: it needs the `{label}` label of every item"
                        + (" and the true box of every item its oracle zooms into" if MODES[mode].needs_box else "")
                        + " (only the synthetic world's generator knows them)")
                notes.append(note)
                log(f"note: {note}")
                continue
            modes.append(mode)
        labels = []
        for mode in modes:
            threshold = config.tool_threshold if MODES[mode].decides else None
            label = mode if threshold is None else curve.threshold_label(mode, threshold)
            run(bench, bench_name, samples, Run(label, mode, threshold))
            labels.append(label)
            for below in config.escalate_below if MODES[mode].decides else ():
                escalating = escalation_label(label, below)
                run(bench, bench_name, samples, Run(escalating, mode, threshold, below))
                labels.append(escalating)
            if config.escalate_budget is not None and MODES[mode].decides:
                calibration, test = split_calibration(samples, config.calibration_fraction)
                _check_split(bench_name, samples, calibration, test)
                plain = samples_log.select(bench_name, label)
                chosen = choose_escalation([plain[str(s.uid)] for s in calibration], config.escalate_budget)
                below = float(f"{chosen.threshold:.6g}")
                escalating = escalation_label(label, below)
                run(bench, bench_name, test, Run(escalating, mode, threshold, below))
                labels.append(escalating)
                by_uid = samples_log.select(bench_name, escalating)
                tokens, score = _part_figures([by_uid[str(s.uid)] for s in test])
                plain_score = _part_figures([plain[str(s.uid)] for s in test])[1]
                notes.append(f"{bench_name}: escalation budget {config.escalate_budget:g} of full resolution for "
                             f"{label}: threshold {below:g} chosen on {len(calibration)} calibration items "
                             f"({chosen.escalated} escalated, {chosen.token_fraction:.3f} there); {tokens:.3f} "
                             f"reached on {len(test)} test items, score {100 * score:.1f}% ({label} on them: "
                             f"{100 * plain_score:.1f}%)")
        if config.curve or config.token_budget is not None:
            calibration, test = split_calibration(samples, config.calibration_fraction)
            measured_on = samples if config.curve else calibration
            for label, threshold in ((curve.NEVER, math.inf), (curve.ALWAYS, 0.0)):
                run(bench, bench_name, measured_on, Run(label, "visionthink", threshold))
            if config.curve:
                labels += [curve.NEVER, curve.ALWAYS]
                curves[bench_name] = _curve_items(samples_log, bench_name, samples)
            if config.token_budget is not None:
                _check_split(bench_name, samples, calibration, test)
                chosen = curve.choose_threshold(_curve_items(samples_log, bench_name, calibration),
                                                config.token_budget)
                threshold = chosen.threshold if chosen.threshold == math.inf else float(f"{chosen.threshold:.6g}")
                label = curve.threshold_label("visionthink", threshold)
                run(bench, bench_name, test, Run(label, "visionthink", threshold))
                labels.append(label)
                by_uid = samples_log.select(bench_name, label)
                test_tokens, test_score = _part_figures([by_uid[str(s.uid)] for s in test])
                budgets[bench_name] = {
                    "token_budget": config.token_budget, "threshold": "inf" if threshold == math.inf else threshold,
                    "label": label, "calibration_items": len(calibration), "test_items": len(test),
                    "calibration_token_fraction": chosen.token_fraction, "calibration_score": chosen.score,
                    "test_token_fraction": test_tokens, "test_score": test_score,
                }
        loaded[bench_name] = (bench, samples, list(dict.fromkeys(labels)))
    summary = summarise(loaded, samples_log, judge)
    for bench_name, entry in budgets.items():
        notes.append(f"{bench_name}: token budget {entry['token_budget']:g} of full resolution: threshold "
                     f"{entry['threshold']} chosen on {entry['calibration_items']} calibration items "
                     f"({entry['calibration_token_fraction']:.3f} there); {entry['test_token_fraction']:.3f} reached "
                     f"on {entry['test_items']} test items, score {100 * entry['test_score']:.1f}%")
    if curves or budgets:
        _write_curves(out, curves, budgets, summary, notes)
    meta = {
        "model": _model_id(config.model),
        "benches": config.benches,
        "modes": config.modes,
        "limit": config.limit,
        "data_root": str(config.data_root),
        "judge": config.judge,
        "batch_size": config.batch_size,
        "computed": computed,
        "last_run_seconds": round(time.perf_counter() - began, 3),
    }
    notes = write_report(out, summary, notes, meta)
    return EvalResult(summary=summary, notes=notes, out=out)
