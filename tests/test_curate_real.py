"""`visionthink data curate` on the `real-vocab-small` preset (the real Qwen2.5 vocabulary and image processor) with
the `release` protocol, a 256-token turn budget, the release's pixel range and an HTTP judge on loopback.

The random model is given a known chance to stop (`<|im_end|>`) at each step, so some rollouts finish and some hit
the budget; the judge grades by item (a marker in the question), so kept, cut and wrong items all occur and are
reported apart.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import QuietHandler, http_server  # tests/ is on sys.path
from PIL import Image, ImageDraw

from visionthink import cli
from visionthink.data.curate import CUT, DISCARD, KEPT, label_with_cuts
from visionthink.images import RELEASE_MAX_PIXELS, RELEASE_MIN_PIXELS

BUDGET = 256
STOP_LOGIT = 7.0
"""The `<|im_end|>` logit the random model is given: about 0.7% per step, so a rollout hits 256 tokens about 16% of
the time."""


def give_stop_chance(path, logit: float = STOP_LOGIT, seed: int = 0) -> None:
    """Make the random model at `path` write `<|im_end|>` with a fixed chance at every step: a large value bias in
    the last layer puts one constant direction into the residual stream, and the (tied) `<|im_end|>` row is set
    along it so that its logit is `logit` while every other token's stays near 0."""
    from visionthink.models import load_model

    model, processor = load_model(path, device="cpu")
    config = model.config.text_config
    text = model.model.language_model
    attention = text.layers[-1].self_attn
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bias = torch.randn(attention.v_proj.bias.shape, generator=generator) * 20
        head_dim = attention.v_proj.bias.numel() // config.num_key_value_heads
        repeated = bias.view(-1, head_dim).repeat_interleave(
            config.num_attention_heads // config.num_key_value_heads, 0).reshape(-1)
        direction = attention.o_proj.weight @ repeated
        direction = direction / direction.norm()
        attention.v_proj.bias.copy_(bias)
        stop = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        scale = float((text.norm.weight * direction).norm()) * direction.numel() ** 0.5
        text.embed_tokens.weight[stop] = direction * logit / scale
    model.save_pretrained(path)


class _Judge(QuietHandler):
    """An OpenAI-compatible judge: `Score: 1` when the question carries `[right]`, else `Score: 0`."""

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        score = 1 if "[right]" in body["messages"][-1]["content"] else 0
        self.reply(200, {"choices": [{"message": {"role": "assistant", "content": f"Score: {score}"}}]})


@pytest.fixture()
def judge_url():
    with http_server(_Judge) as server:
        yield server.url + "/v1#stub-judge"


def _pages(n: int):
    """`n` small pages (400x300: under the release's 512^2 pixels, so curation scales them up)."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    images, questions = [], []
    for i in range(n):
        image = Image.new("RGB", (400, 300), "white")
        draw = ImageDraw.Draw(image)
        for row, y in enumerate(range(10, 290, 20)):
            draw.text((10, y), f"row {row} total {i * row}", fill="black")
        images.append(image)
        questions.append(f"What is the total of row {i}? {'[right]' if i % 2 == 0 else '[wrong]'}")
    features = Features({"image": ImageFeature(), "question": Value("string"), "answer": Value("string")})
    return Dataset.from_dict({"image": images, "question": questions, "answer": [str(i) for i in range(n)]},
                             features=features)


@pytest.mark.slow
def test_curate_real_vocab_reports_kept_cut_and_wrong(tmp_path, judge_url, capsys):
    from datasets import load_from_disk

    model = tmp_path / "real-vocab-small"
    assert cli.main(["model", "init", "--preset", "real-vocab-small", "--out", str(model)]) == 0
    give_stop_chance(model)
    data = tmp_path / "pages"
    _pages(6).save_to_disk(str(data))
    out = tmp_path / "curated"
    capsys.readouterr()
    code = cli.main(["--device", "cpu", "data", "curate", "--model", str(model), "--data", str(data), "--out",
                     str(out), "--k", "2", "--seed", "0", "--protocol", "release", "--max-new-tokens", str(BUDGET),
                     "--judge", judge_url, "--batch-size", "24", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "curation.json").read_text())
    assert report["max_new_tokens"] == BUDGET and report["protocol"] == "release"
    assert report["pixel_range"] == [RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS]  # --pixel-range auto under release
    items, rollouts = report["kept_cut_wrong"], report["rollouts"]
    assert sum(items.values()) == 6 and rollouts["total"] == 24
    assert rollouts["correct"] + rollouts["cut"] + rollouts["wrong"] == 24
    assert items["kept"] > 0 and items["cut"] > 0 and items["wrong"] > 0, report
    assert rollouts["cut"] > 0 and rollouts["wrong"] > 0 and rollouts["correct"] > 0
    line = next(text for text in printed.splitlines() if text.startswith("items: "))
    assert f"kept {items['kept']}, cut {items['cut']}" in line and f"wrong {items['wrong']}" in line
    assert f"{BUDGET}-token budget" in line
    assert f"cut: {items['cut']}" in printed
    curated = load_from_disk(str(out))
    assert {name: len(rows) for name, rows in curated.items()} == {
        "train": items["kept"], "cut": items["cut"], "discarded": items["wrong"]}
    for name, labels in (("train", KEPT), ("cut", (CUT,)), ("discarded", (DISCARD,))):
        for row in curated[name].remove_columns("image"):
            assert row["label"] in labels
            assert row["label"] == label_with_cuts(row["low_correct"], row["high_correct"], row["low_cut"],
                                                   row["high_cut"], 2)
            if "[wrong]" in row["question"]:
                assert row["low_correct"] == row["high_correct"] == 0  # the judge said no; cut ones are not asked
    assert sum(row["low_cut"] + row["high_cut"] for split in curated.values()
               for row in split.remove_columns("image")) == rollouts["cut"]
    cache = (out / "judge_cache.jsonl").read_text().splitlines()
    assert cache and all(json.loads(line)["judge"] == "http" for line in cache)
