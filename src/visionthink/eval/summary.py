"""Score against cost per bench and mode from the sample records: score (the benchmark's own rule), visual
tokens, resize ratio and its precision/recall, answers missing, and time (measured per item only at batch
size 1, else batch shares and the batches' wall times)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from numpy import percentile

from visionthink.eval.samples_log import SampleLog
from visionthink.rewards.judge_base import Judge

ORACLE_LABEL = "needs_high_res"
"""The sample `meta` key that the oracle mode (and resize precision/recall) needs."""
ACTION_LABEL = "right_action"
"""The sample `meta` key with the cheapest action that shows the answer (`oracle-ladder`, the action match)."""
ACTIONS = ("answer", "zoom", "resize")


def action_metrics(records: Sequence[dict], right: Sequence[str]) -> dict[str, Any]:
    """The share of each first action (`action_mix`) and the share that took the item's right action
    (`action_match`)."""
    return {"action_mix": {action: _mean(float(r.get("action") == action) for r in records) for action in ACTIONS},
            "action_match": _mean(float(r.get("action") == a) for r, a in zip(records, right, strict=True))}


# ---------------------------------------------------------------- small statistics


def tokens_per_second(generated_tokens: float, seconds: float) -> float:
    """Generated tokens per second of wall time (0.0 when no time was spent)."""
    return float(generated_tokens) / seconds if seconds > 0 else 0.0


def resize_precision_recall(resized: Sequence[bool], needed: Sequence[bool]) -> tuple[float | None, float | None]:
    """Precision (of the resizes, the share the item needed) and recall (of the items that needed one,
    the share resized). None where the denominator is zero."""
    hits = sum(1 for r, n in zip(resized, needed, strict=True) if r and n)
    asked = sum(1 for r in resized if r)
    wanted = sum(1 for n in needed if n)
    return (hits / asked if asked else None), (hits / wanted if wanted else None)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def paired_difference(scores: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Mean of `scores[i] - baseline[i]` over items scored both ways, and its standard error (sample deviation of
    the differences over sqrt(n)): whether a gap between two modes on the same items is more than noise."""
    if len(scores) != len(baseline):
        raise ValueError(f"{len(scores)} scores against {len(baseline)} baseline scores")
    n = len(scores)
    differences = [float(a) - float(b) for a, b in zip(scores, baseline, strict=True)]
    mean = _mean(differences)
    spread = sum((d - mean) ** 2 for d in differences) / (n - 1) if n > 1 else 0.0
    return {"difference": mean, "standard_error": (spread / n) ** 0.5 if n else 0.0, "n": n}


# ---------------------------------------------------------------- summary


def summarise(loaded: dict[str, tuple[Any, list, list[str]]], samples_log: SampleLog,
              judge: Judge | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """`{bench: {mode: metrics}}` over the loaded samples, from the records of the whole log. Beside a `full` mode,
    every other mode's metrics get `vs_full`: its per-item score minus full resolution's on the items both scored
    (`paired_difference`)."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for bench_name, (bench, samples, modes) in loaded.items():
        summary[bench_name] = {}
        scores: dict[str, dict[str, float]] = {}
        for mode in modes:
            by_uid = samples_log.select(bench_name, mode)
            present = [s for s in samples if str(s.uid) in by_uid]
            if not present:
                continue
            records = [by_uid[str(s.uid)] for s in present]
            summary[bench_name][mode] = mode_metrics(bench, present, records, judge)
            scores[mode] = {str(s.uid): float(r.get("score") or 0.0) for s, r in zip(present, records, strict=True)}
        full = scores.pop("full", {})
        for mode, by_item in scores.items():
            shared = [uid for uid in by_item if uid in full]
            if shared:
                summary[bench_name][mode]["vs_full"] = paired_difference([by_item[u] for u in shared],
                                                                         [full[u] for u in shared])
    return summary


def _official(bench, samples: list, records: list[dict], judge: Judge | None) -> tuple[float, dict[str, float]]:
    scores = bench.score(samples, [r["prediction"] for r in records], judge)
    extra = {k: float(v) for k, v in scores.summary.items()
             if isinstance(v, (int, float)) and k not in ("score", "n")}
    return float(scores.summary["score"]), extra


def no_answer(record: dict[str, Any]) -> bool:
    """Whether the model ran on the sample but gave no answer (a malformed final turn; scored as wrong).

    Samples that could not run (`error`, e.g. a broken image) are not counted; logs written before
    `answer_error` existed fall back to a missing prediction.
    """
    if record.get("error"):
        return False
    if "answer_error" in record:
        return bool(record["answer_error"])
    return record.get("prediction") is None


MEASURED = "measured"
BATCH_SHARE = "batch_share"


def measured(records: list[dict[str, Any]]) -> bool:
    """Whether every record ran in an engine batch of its own, so that its wall time is its own."""
    return bool(records) and all(r.get("batch_size") == 1 and r.get("batch_seconds") is not None for r in records)


def item_seconds(record: dict[str, Any]) -> float:
    """A sample's time: measured when it ran alone (its batch's wall time), else its episode's share of a
    batch (each turn's time split evenly over the rows still running)."""
    if record.get("batch_size") == 1 and record.get("batch_seconds") is not None:
        return float(record["batch_seconds"])
    return float(record["seconds"])


def timing_note(timing: str, batch_size: float | None = None, batch_seconds: Sequence[float] = ()) -> str:
    """What the per-item times are: measured (every item ran alone) or shares of batches, then with the
    batches' wall times (p50, p95) when given."""
    if timing == MEASURED:
        return "per-item times measured: every item ran alone (batch size 1); p50/p95 are over items"
    size = f" (up to {batch_size:g} items per batch)" if batch_size else ""
    walls = (f"; wall time per batch: p50 {percentile(batch_seconds, 50):.3f} s, "
             f"p95 {percentile(batch_seconds, 95):.3f} s") if len(batch_seconds) else ""
    return (f"per-item times are shares of a batch's wall time{size}, not measurements: no per-item p50/p95 "
            f"(--batch-size 1 measures them){walls}")


def time_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Total wall time, mean per item, and per-item p50/p95 where measured (every item ran alone); in
    batches, the batches' wall times instead. Records without batch timing (older logs) count their
    episode time and make the per-item figures shares."""
    batches: dict[str, list[float]] = {}  # id -> [size, wall seconds, items present]
    loose = 0.0
    for record in records:
        if record.get("batch_id") is None or record.get("batch_seconds") is None:
            loose += float(record["seconds"])
            continue
        entry = batches.setdefault(str(record["batch_id"]),
                                   [max(1, int(record.get("batch_size") or 1)), float(record["batch_seconds"]), 0])
        entry[2] += 1
    # a batch whose items are not all in this summary (a smaller --limit on resume) counts pro rata
    total = loose + sum(wall * min(1.0, present / size) for size, wall, present in batches.values())
    walls = [wall for _, wall, _ in batches.values()]
    is_measured = measured(records)
    per_item = [item_seconds(r) for r in records] if is_measured else []
    largest = max((size for size, _, _ in batches.values()), default=None)
    return {
        "seconds": total,
        "seconds_mean": total / len(records) if records else 0.0,
        "timing": MEASURED if is_measured else BATCH_SHARE,
        "timing_note": timing_note(MEASURED if is_measured else BATCH_SHARE, largest, walls),
        "seconds_p50": float(percentile(per_item, 50)) if is_measured else None,
        "seconds_p95": float(percentile(per_item, 95)) if is_measured else None,
        "batches": len(batches),
        "batch_seconds_mean": _mean(walls) if walls else None,
        "batch_seconds_p50": float(percentile(walls, 50)) if walls else None,
        "batch_seconds_p95": float(percentile(walls, 95)) if walls else None,
    }


def family_time_metrics(records: list[dict[str, Any]], is_measured: bool) -> dict[str, Any]:
    """A family's total and mean time per item (measured, or the sum of its items' batch shares), and
    p50/p95 per item only where measured (batches mix families: there is no per-family batch time)."""
    times = [item_seconds(r) for r in records]
    return {
        "seconds": sum(times),
        "seconds_mean": _mean(times),
        "seconds_p50": float(percentile(times, 50)) if is_measured else None,
        "seconds_p95": float(percentile(times, 95)) if is_measured else None,
    }


def mode_metrics(bench, samples: list, records: list[dict], judge: Judge | None = None) -> dict[str, Any]:
    """Score (the benchmark's official metric), visual tokens, resize ratio, time and throughput.

    Time: `seconds` is the total wall time, `seconds_mean` per item; `timing` says whether per-item
    times were measured (`measured`: batch size 1, `seconds_p50`/`seconds_p95` per item) or are
    shares of batches (`batch_share`: per-item percentiles null, `batch_seconds_*` per batch instead).
    `per_family` has the same figures per family."""
    score, official = _official(bench, samples, records, judge)
    timing = time_metrics(records)
    total_seconds = timing["seconds"]
    visual = _mean(r["visual_tokens"] for r in records)
    full = _mean(r["full_res_visual_tokens"] for r in records)
    generated = sum(r["generated_tokens"] for r in records)
    metrics: dict[str, Any] = {
        "n": len(records),
        "score": score,
        "visual_tokens": visual,
        "full_res_visual_tokens": full,
        "visual_tokens_pct_of_full": 100 * visual / full if full else None,
        "resize_ratio": _mean(float(bool(r["resized"])) for r in records),
        **timing,
        "generated_tokens": generated / len(records),
        "tokens_per_second": tokens_per_second(generated, total_seconds),
        "well_formed": _mean(float(bool(r.get("well_formed"))) for r in records),
        "answered": _mean(float(r["prediction"] is not None) for r in records),
        "errors": sum(1 for r in records if r.get("error")),
        "no_answer": sum(1 for r in records if no_answer(r)),
    }
    if official:
        metrics["official"] = official
    escalating = any(r.get("escalated") for r in records)
    if escalating:  # unsure answers withdrawn for a resize (`engines.confidence`)
        metrics["escalated"] = _mean(float(bool(r.get("escalated"))) for r in records)
    if any(r.get("action") == "zoom" for r in records):  # zoom figures only where a zoom ran
        metrics["zoom_ratio"] = _mean(float(r.get("action") == "zoom") for r in records)
        metrics.update(zoom_box_metrics(records))
    labelled = all(s.meta.get(ORACLE_LABEL) is not None for s in samples)
    ranked = all(s.meta.get(ACTION_LABEL) is not None for s in samples)
    if ranked:
        metrics.update(action_metrics(records, [s.meta[ACTION_LABEL] for s in samples]))
    if labelled:
        needed = [bool(s.meta[ORACLE_LABEL]) for s in samples]
        precision, recall = resize_precision_recall([bool(r["resized"]) for r in records], needed)
        metrics["resize_precision"], metrics["resize_recall"] = precision, recall
    families = [s.meta.get("family") for s in samples]
    if all(f is not None for f in families):
        per_family: dict[str, dict[str, Any]] = {}
        for family in dict.fromkeys(str(f) for f in families):
            indices = [i for i, f in enumerate(families) if str(f) == family]
            subset = [samples[i] for i in indices]
            rows = [records[i] for i in indices]
            entry: dict[str, Any] = {
                "score": _official(bench, subset, rows, judge)[0],
                "resize_ratio": _mean(float(bool(r["resized"])) for r in rows),
                "n": len(rows),
                "visual_tokens": _mean(r["visual_tokens"] for r in rows),
                **family_time_metrics(rows, timing["timing"] == MEASURED),
            }
            if "zoom_ratio" in metrics:
                entry["zoom_ratio"] = _mean(float(r.get("action") == "zoom") for r in rows)
                entry.update(zoom_box_metrics(rows))
            if escalating:
                entry["escalated"] = _mean(float(bool(r.get("escalated"))) for r in rows)
            if ranked:
                entry.update(action_metrics(rows, [s.meta[ACTION_LABEL] for s in subset]))
            if labelled:
                precision, recall = resize_precision_recall([bool(r["resized"]) for r in rows],
                                                            [bool(s.meta[ORACLE_LABEL]) for s in subset])
                entry["resize_precision"], entry["resize_recall"] = precision, recall
            per_family[family] = entry
        metrics["per_family"] = per_family
    return metrics


ZOOM_HIT_IOU = 0.5
"""A zoom call finds its region when its box has at least this IoU with the true box."""


def zoom_box_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean IoU of the zoom calls' boxes with the true region and the share with IoU >= `ZOOM_HIT_IOU`, over the
    records where both are known (`zoom_iou`); nothing when there are none."""
    ious = [float(r["zoom_iou"]) for r in records if r.get("zoom_iou") is not None]
    if not ious:
        return {}
    return {"zoom_iou": sum(ious) / len(ious), "zoom_hit_rate": sum(i >= ZOOM_HIT_IOU for i in ious) / len(ious),
            "zoom_calls_with_truth": len(ious)}
