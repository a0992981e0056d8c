"""The resolution ladder (issue 27): its training examples, the `oracle-ladder` mode through the real loop, eval's
action figures, and the model's own mode as the default of `ask` and a server."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import LADDER_DIR, REPO, TINY_GRID, words_of  # tests/ is on sys.path

from visionthink.data import synth
from visionthink.eval.benchmarks import get_benchmark
from visionthink.eval.summary import mode_metrics
from visionthink.modes import MODES, own_mode
from visionthink.profiles import RELEASE, VISIONTHINK, VISIONTHINK_ZOOM, mode_profile
from visionthink.tokens import IGNORE_INDEX
from visionthink.train.sft_data import listing_think, sample_ladder_example, taught_think, think_for

ZOOM_MODEL = REPO / "checkpoints" / "tiny-synth-zoom"


def _calls(example) -> list[str]:
    """The tools that answered an example's calls (its tool turns)."""
    return [m["name"] for m in example.messages if m["role"] == "tool"]


def test_ladder_examples_take_the_right_action_when_told_and_mark_every_label():
    rng = np.random.default_rng(0)
    examples = [sample_ladder_example(rng, TINY_GRID, full_res_fraction=0.0, right_action_fraction=1.0)
                for _ in range(80)]
    assert {e.family for e in examples} == set(synth.LADDER_FAMILIES)
    for example in examples:
        assert example.protocol == "visionthink-zoom" and example.start == "low"
        tool = {"answer": [], "zoom": ["zoom_image"], "resize": ["resize_image"]}[synth.RIGHT_ACTION[example.family]]
        assert _calls(example) == tool, example.family
        assert example.zoomed == (tool == ["zoom_image"]) and example.resized == (tool == ["resize_image"])
        assert example.legible == (synth.RIGHT_ACTION[example.family] == "answer")
        if example.family == "fine_spread":  # the full view after the resize: a pattern target on all three labels
            after = example.aux[1]
            assert int((after["pattern"] != IGNORE_INDEX).sum()) == synth.SPREAD_LABELS
            assert int((example.aux[0]["pattern"] != IGNORE_INDEX).sum()) == 0  # illegible at low resolution
    uninformed = [sample_ladder_example(rng, TINY_GRID, 0.0, right_action_fraction=0.0) for _ in range(120)]
    spread = [tuple(_calls(e)) for e in uninformed if e.family == "fine_spread"]
    assert len(set(spread)) == 3  # answer, zoom and resize, at random
    short = [sample_ladder_example(rng, TINY_GRID, 0.0, 0.0, perception_fraction=1.0) for _ in range(20)]
    assert all(not e.with_tools and len(e.messages) == 2 for e in short)
    assert all(e.start == "high" for e in short if synth.RIGHT_ACTION[e.family] != "answer")  # a view that shows it


def test_family_weights_draw_the_families_in_their_shares():
    rng = np.random.default_rng(1)
    drawn = [sample_ladder_example(rng, TINY_GRID, 0.0, 1.0, family_weights={"coarse": 3, "fine_small": 1}).family
             for _ in range(400)]
    assert set(drawn) == {"coarse", "fine_small"}
    assert 0.68 < drawn.count("coarse") / len(drawn) < 0.82  # 3 in 4
    framed = [sample_ladder_example(rng, TINY_GRID, 0.0, 1.0, frame_fraction=1.0) for _ in range(20)]
    questions = [next(m for m in e.messages if m["role"] == "user")["content"][-1]["text"] for e in framed]
    assert all(synth.question_type_of(q) is None for q in questions)  # no wording set holds a framed question
    assert all(any(f.replace("{question}", "") in q for f in synth.TRAIN_FRAMES) for q in questions)
    for bad in ({"moon": 1.0}, {"coarse": -1.0}, {"coarse": 0.0}):
        with pytest.raises(ValueError, match="family_weights"):
            sample_ladder_example(rng, TINY_GRID, 0.0, 1.0, family_weights=bad)


def test_label_questions_asked_in_crossed_wordings_keep_the_scenes_think_answer_and_action():
    rng = np.random.default_rng(5)
    examples = [sample_ladder_example(rng, TINY_GRID, 0.0, right_action_fraction=1.0,
                                      family_weights={"fine_small": 1, "fine_spread": 1},
                                      crossed_wording_fraction=0.5) for _ in range(120)]
    def question(example) -> str:
        return next(m for m in example.messages if m["role"] == "user")["content"][-1]["text"].split("\n")[0]

    asked = {(e.family, synth.question_type_of(question(e))) for e in examples}
    assert asked == {("fine_small", "pattern"), ("fine_small", "majority"), ("fine_spread", "majority"),
                     ("fine_spread", "pattern")}
    for example in examples:
        text = next(m for m in example.messages if m["role"] == "assistant")["content"][0]["text"]
        if example.family == "fine_small":  # one label: its think and its zoom, whatever the wording
            assert "Read the pattern on the label." in text and _calls(example) == ["zoom_image"], question(example)
        else:  # three labels: theirs, and a resize
            assert "Read the patterns on the labels." in text and _calls(example) == ["resize_image"]
    plain = np.random.default_rng(3)
    assert synth.wording_type(plain, "majority") == "majority" and synth.wording_type(plain, "colour", 1.0) == "colour"
    assert plain.random() == np.random.default_rng(3).random()  # nothing drawn where nothing can cross


def test_paired_wordings_ask_each_label_family_in_the_others_forms_with_its_own_number():
    one, most = synth.paired_wordings("pattern"), synth.paired_wordings("majority")
    assert len(one) > 100 and len(most) > 100 and synth.paired_wordings("colour") == ()
    assert all("most" not in words_of(q).split() for q in one)
    assert all("most" in words_of(q).split() for q in most)
    # the forms cross: a majority sentence form asked of one label, a one-label form asked of most labels
    assert "Which pattern does the label show?" in one
    assert any(q.startswith("Which ") and q.endswith(" show?") and " do most " in q for q in synth.wordings("majority"))
    assert "Name the pattern on most labels." in most and "Name the pattern on the label." in synth.wordings("pattern")
    held = {words_of(t) for q in synth.QUESTION_TYPES for ws in ("heldout", "heldout-templates")
            for t in synth.wordings(q, ws)}
    assert not {words_of(t) for t in one + most} & held  # held-out wordings stay unseen
    assert {synth.question_type_of(q) for q in one} == {"pattern"}
    assert {synth.question_type_of(q) for q in most} == {"majority"}


def test_label_questions_in_paired_wordings_keep_the_scenes_think_answer_and_action():
    rng = np.random.default_rng(6)
    examples = [sample_ladder_example(rng, TINY_GRID, 0.0, right_action_fraction=1.0,
                                      family_weights={"fine_small": 1, "fine_spread": 1, "coarse": 1},
                                      paired_wording_fraction=1.0) for _ in range(60)]
    for example in examples:
        question = next(m for m in example.messages if m["role"] == "user")["content"][-1]["text"].split("\n")[0]
        text = next(m for m in example.messages if m["role"] == "assistant")["content"][0]["text"]
        if example.family == "fine_small":
            assert question in synth.paired_wordings("pattern") and _calls(example) == ["zoom_image"]
            assert "Read the pattern on the label." in text
        elif example.family == "fine_spread":
            assert question in synth.paired_wordings("majority") and _calls(example) == ["resize_image"]
        else:  # coarse questions keep their trained wordings
            assert question in synth.wordings(synth.question_type_of(question))
    plain = np.random.default_rng(3)
    assert synth.training_wording(plain, "pattern") in synth.wordings("pattern")
    again = np.random.default_rng(3)
    assert synth.pick_wording(again, "pattern") == synth.training_wording(np.random.default_rng(3), "pattern")
    assert plain.random() == again.random()  # a fraction of 0 draws as pick_wording does


def test_questions_in_carrier_forms_keep_the_scenes_think_answer_and_action():
    rng = np.random.default_rng(8)
    examples = [sample_ladder_example(rng, TINY_GRID, 0.0, right_action_fraction=1.0, carrier_wording_fraction=1.0)
                for _ in range(60)]
    thinks = {"fine_small": "Read the pattern on the label.", "fine_spread": "Read the patterns on the labels."}
    for example in examples:
        question = next(m for m in example.messages if m["role"] == "user")["content"][-1]["text"].split("\n")[0]
        text = next(m for m in example.messages if m["role"] == "assistant")["content"][0]["text"]
        kind = synth.question_type_of(question)
        assert question in synth.carrier_wordings(kind) + synth.do_wordings(kind)
        assert thinks.get(example.family, "<think>") in text
        tool = {"answer": [], "zoom": ["zoom_image"], "resize": ["resize_image"]}[synth.RIGHT_ACTION[example.family]]
        assert _calls(example) == tool
    again = np.random.default_rng(3)
    assert synth.training_wording(np.random.default_rng(3), "colour", carrier_fraction=0.0) == \
        synth.pick_wording(again, "colour")
    both = [synth.training_wording(rng, "pattern", paired_fraction=0.5, carrier_fraction=1.0) for _ in range(200)]
    paired = sum(q in synth.paired_wordings("pattern") for q in both)
    carried = set(synth.carrier_wordings("pattern") + synth.do_wordings("pattern"))
    assert 60 < paired < 140 and all(q in carried or q in synth.paired_wordings("pattern") for q in both)


def test_coarse_weights_draw_the_coarse_question_types_in_their_shares():
    rng = np.random.default_rng(2)
    drawn = [synth.scene_for(rng, "coarse", {"shape": 1, "count": 1})[1] for _ in range(200)]
    assert set(drawn) == {"shape", "count"} and 70 < drawn.count("shape") < 130
    assert synth.scene_for(np.random.default_rng(4), "fine_small", {"shape": 1})[1] == "pattern"
    for bad in ({"size": 1.0}, {"shape": -1.0}, {"colour": 0.0}):
        with pytest.raises(ValueError, match="coarse_weights"):
            synth.scene_for(rng, "coarse", bad)


def test_listing_thinks_name_each_shape_left_to_right_in_every_form_of_a_count_question():
    def drawn(list_shapes: bool, **forms) -> list:
        rng = np.random.default_rng(5)
        return [sample_ladder_example(rng, TINY_GRID, 0.5, 0.5, family_weights={"coarse": 1},
                                      coarse_weights={"count": 1}, list_shapes=list_shapes, **forms)
                for _ in range(40)]

    def think(example) -> str:
        text = next(m for m in example.messages if m["role"] == "assistant")["content"][0]["text"]
        return text.split("<think>")[1].split("</think>")[0]

    for forms in ({}, {"perception_fraction": 1.0}):
        listed, plain = drawn(True, **forms), drawn(False, **forms)
        calls = {tuple(_calls(e)) for e in listed}
        assert calls == ({()} if forms else {(), ("resize_image",)})  # short forms answer; protocol ones may resize
        for example, same in zip(listed, plain, strict=True):  # the same draws: only the think differs
            count = int(example.messages[-1]["content"][0]["text"].split("<answer>")[1][0])
            names = think(example).removeprefix("Count the shapes: ").removesuffix(".").split(", ")
            assert len(names) == count
            assert all(colour in synth.COLOURS and kind in synth.SHAPES for colour, kind in map(str.split, names))
            assert think(same) == "Count the shapes."
            assert [m["role"] for m in example.messages] == [m["role"] for m in same.messages]
    scene = synth.Scene(shapes=[synth.Shape("ring", "green", 80, 10, 12), synth.Shape("circle", "red", 20, 90, 22)],
                        pattern="dots", label_size="small", label_box=(0, 0, 22, 22), image=None)
    assert listing_think(scene.shapes) == "Count the shapes: red circle, green ring."
    items = synth.ladder_items("validation", 24)  # the stage's validation checks the thinks it trains
    counts = [item for item in items if item.question_type == "count"]

    def taught(item, list_shapes: bool) -> str:
        return taught_think(item.question, item.question_type, item.shapes, list_shapes)

    assert counts and all(taught(item, True).count(",") + 1 == int(item.answer) for item in counts)
    assert all(taught(item, False) == think_for(item.question, item.question_type) for item in items)
    assert all(taught(item, True) == think_for(item.question, item.question_type)
               for item in items if item.question_type != "count")


def test_a_stage_with_the_vision_tower_frozen_trains_only_the_text_model(tmp_path, tiny_dir):
    from visionthink.models import load_model
    from visionthink.train.sft import SFTConfig, train_sft

    final = train_sft(SFTConfig(init_from=str(tiny_dir), output_dir=str(tmp_path / "run"), world="ladder", steps=2,
                                batch_size=8, warmup_steps=1, eval_every=2, save_every=2, eval_items=4, threads=1,
                                perception_fraction=1.0, family_weights={"coarse": 1.0},
                                coarse_weights={"shape": 1.0}, train_vision=False))
    before, _ = load_model(tiny_dir, dtype=torch.float32)
    after, _ = load_model(final, dtype=torch.float32)
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    vision = [name for name in old if ".visual." in f".{name}"]
    assert vision and all(torch.equal(old[name], new[name]) for name in vision)
    assert any(not torch.equal(old[name], new[name]) for name in old if name not in vision)
    merged = train_sft(SFTConfig(init_from=str(tiny_dir), output_dir=str(tmp_path / "merger"), world="ladder",
                                 steps=2, batch_size=8, warmup_steps=1, eval_every=2, save_every=2, eval_items=4,
                                 threads=1, perception_fraction=1.0, family_weights={"coarse": 1.0},
                                 coarse_weights={"count": 1.0}, train_vision=False, train_merger=True))
    after, _ = load_model(merged, dtype=torch.float32)
    new = dict(after.named_parameters())
    merger = [name for name in vision if ".merger." in name]
    assert merger and all(not torch.equal(old[name], new[name]) for name in merger if "weight" in name)
    assert all(torch.equal(old[name], new[name]) for name in vision if name not in merger)


def test_a_ladder_stage_trains_only_the_grounding_heads_it_names(tmp_path, tiny_dir):
    import json

    from visionthink.errors import VisionThinkError
    from visionthink.train.sft import SFTConfig, train_sft

    config = SFTConfig(init_from=str(tiny_dir), output_dir=str(tmp_path / "run"), world="ladder", steps=2,
                       batch_size=8, warmup_steps=1, eval_every=2, save_every=2, eval_items=4, threads=1,
                       right_action_fraction=1.0, grounding_fraction=0.5, grounding_weight=1.0,
                       grounding_heads=["token_position"], family_weights={"fine_small": 1.0})
    train_sft(config)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all("grounding/token_position_acc" in r and "grounding/label_cell_acc" not in r for r in log)
    with pytest.raises(VisionThinkError, match="unknown grounding heads"):
        train_sft(SFTConfig(init_from=str(tiny_dir), output_dir=str(tmp_path / "bad"), world="ladder", steps=1,
                            grounding_weight=1.0, grounding_heads=["label_everywhere"], threads=1))


def test_the_models_own_mode_and_the_profile_each_mode_runs_on():
    assert own_mode(VISIONTHINK_ZOOM) == "zoom"
    assert own_mode(VISIONTHINK) == own_mode(RELEASE) == "visionthink"
    for name in ("full", "low"):  # never calls: the prompts the model was trained on
        assert mode_profile(VISIONTHINK_ZOOM, MODES[name]) is VISIONTHINK_ZOOM
        assert mode_profile(RELEASE, MODES[name]) is RELEASE
    assert mode_profile(VISIONTHINK_ZOOM, MODES["visionthink"]) is VISIONTHINK
    assert mode_profile(VISIONTHINK_ZOOM, MODES["oracle-ladder"]) is VISIONTHINK_ZOOM


def test_action_figures_per_family_from_the_records():
    bench = get_benchmark("ladder")
    samples = bench.load(None, limit=12)  # one whole mix: 5 coarse, 4 large, 2 small, 1 spread
    actions = {"coarse": "answer", "fine_large": "zoom", "fine_small": "zoom", "fine_spread": "resize"}
    records = [{"prediction": s.answer, "visual_tokens": 4, "full_res_visual_tokens": 16, "generated_tokens": 1,
                "resized": actions[s.meta["family"]] == "resize", "well_formed": True,
                "action": actions[s.meta["family"]], "seconds": 0.1} for s in samples]
    metrics = mode_metrics(bench, samples, records)
    assert metrics["action_match"] == pytest.approx(8 / 12)  # every large label zoomed for nothing
    assert metrics["action_mix"] == pytest.approx({"answer": 5 / 12, "zoom": 6 / 12, "resize": 1 / 12})
    family = metrics["per_family"]
    assert [family[f]["action_match"] for f in synth.LADDER_FAMILIES] == [1.0, 1.0, 0.0, 1.0]
    assert family["fine_large"]["action_mix"] == {"answer": 0.0, "zoom": 1.0, "resize": 0.0}
    for sample in samples:  # items that do not know their right action get no action figures
        sample.meta.pop("right_action")
    unranked = mode_metrics(bench, samples, records)
    assert "action_match" not in unranked and "action_match" not in unranked["per_family"]["coarse"]


def test_ladder_benches_ask_the_same_images_in_three_wording_sets():
    loaded = {name: get_benchmark(name).load(None, limit=12)
              for name in ("ladder", "ladder-heldout", "ladder-heldout-templates")}
    plain = loaded["ladder"]
    for samples in loaded.values():
        assert [s.uid for s in samples] == [s.uid for s in plain]
        assert [s.meta["right_action"] for s in samples] == [synth.RIGHT_ACTION[f] for f in
                                                            (synth.LADDER_MIX[i] for i in range(12))]
    assert len({s.question for group in loaded.values() for s in group if s.uid == plain[0].uid}) == 3
    bench = get_benchmark("ladder")
    small = next(s for s in plain if s.meta["family"] == "fine_small")
    assert bench.label_box(small) == synth.make_ladder_item(6, int(small.uid.split("-")[1])).label_box
    with pytest.raises(Exception, match="reads no folder"):
        bench.load("some/folder")


def test_the_validation_bench_asks_other_images_in_the_trained_wordings():
    validation, test = (get_benchmark(name).load(None, limit=24) for name in ("ladder-validation", "ladder"))
    assert all(s.uid.startswith("l5-") for s in validation) and all(s.uid.startswith("l6-") for s in test)
    pixels = {s.image.tobytes() for s in test}
    assert not any(s.image.tobytes() in pixels for s in validation)
    assert all(synth.is_held_out(s.question) is False for s in validation)
    small = next(s for s in validation if s.meta["family"] == "fine_small")  # the oracle's box comes from its stream
    assert get_benchmark("ladder-validation").label_box(small) == synth.make_ladder_item(
        5, int(small.uid.split("-")[1])).label_box


@pytest.fixture(scope="module")
def zoom_engine():
    from visionthink.engines.transformers_engine import TransformersEngine

    torch.manual_seed(0)
    return TransformersEngine.from_pretrained(ZOOM_MODEL)


def test_oracle_ladder_takes_each_items_right_action_through_the_loop(zoom_engine):
    from visionthink.engines.base import Request

    items = synth.ladder_items("test", 12)
    requests = [Request(item.image, item.question, item.needs_high_res, box=item.label_box,
                        right_action=item.right_action) for item in items]
    episodes = zoom_engine.run(requests, "oracle-ladder")
    assert [e.action for e in episodes] == [item.right_action for item in items]
    for item, episode in zip(items, episodes, strict=True):
        high = TINY_GRID.tokens(*item.image.size)
        low = high // 4
        if item.right_action == "resize":
            assert episode.visual_tokens == low + high
        elif item.right_action == "answer":
            assert episode.visual_tokens == low
        else:  # a crop of 2x2 cells around the true label
            assert episode.visual_tokens == low + 4
            x1, y1, x2, y2 = item.label_box
            bx1, by1, bx2, by2 = episode.zoom_box
            assert bx1 <= x1 / 2 and by1 <= y1 / 2 and bx2 >= x2 / 2 and by2 >= y2 / 2


def test_a_server_of_a_model_that_can_zoom_runs_zoom_when_no_mode_is_asked(zoom_engine):
    from test_serve import call, chat_body, data_url, serving  # tests/ is on sys.path

    from visionthink.serve.config import ServeConfig

    item = next(i for i in synth.ladder_items("test", 12) if i.family == "fine_small")
    with serving(zoom_engine, ServeConfig(model_name="tiny", api_key="k", max_batch=4)) as server:
        body = chat_body(data_url(item.image), item.question)
        status, reply, _ = call(server.url, "POST", "/v1/chat/completions", body, key="k")
        assert status == 200, reply
        assert reply["visionthink"]["mode"] == "zoom"  # the model's own mode, not the paper's resize-only one
        body = chat_body(data_url(item.image), item.question, visionthink_mode="visionthink")
        status, reply, _ = call(server.url, "POST", "/v1/chat/completions", body, key="k")
        assert status == 200 and reply["visionthink"]["mode"] == "visionthink"


def test_the_ladder_recipe_is_one_chain_that_exports_the_shipped_model():
    from visionthink.recipes import load_recipe
    from visionthink.train.grpo_config import VisionThinkGRPOConfig
    from visionthink.train.sft import SFTConfig

    recipe = str(REPO / "recipes" / "tiny-synth.yaml")
    stages = [load_recipe(recipe, section, SFTConfig) for section in ("sft_ladder", "sft_ladder_read",
                                                                       "sft_ladder_refresh", "sft_ladder_ground",
                                                                       "sft_ladder_coarse", "sft_ladder_polish")]
    grpo = load_recipe(recipe, "grpo_ladder", VisionThinkGRPOConfig)
    assert stages[0].init_from == "checkpoints/tiny-synth-zoom"
    for before, after in zip(stages, stages[1:], strict=False):
        assert after.init_from == f"{before.output_dir}/final"
    assert grpo.model == f"{stages[-1].output_dir}/final"
    assert all(stage.world == "ladder" and stage.export_dir is None for stage in stages)
    assert stages[1].perception_fraction == 1.0 and stages[2].grounding_weight == 0.0
    assert "label_where" not in stages[3].grounding_heads and stages[3].grounding_weight > 0
    assert not stages[4].train_vision and stages[4].coarse_weights["shape"] > stages[4].coarse_weights["colour"]
    assert stages[4].family_weights == {"coarse": 1} and not stages[5].train_vision  # one tower from ground on
    assert stages[5].frame_fraction > 0 and grpo.frame_fraction > 0
    assert (grpo.data, grpo.protocol, grpo.penalty_variant) == ("ladder", "visionthink-zoom", "cost")
    assert grpo.export_dir == "checkpoints/tiny-ladder" and grpo.cost_weight > 0
    layers = {path: json.loads((path / "config.json").read_text())["text_config"]["num_hidden_layers"]
              for path in (ZOOM_MODEL, LADDER_DIR)}
    assert layers[LADDER_DIR] == layers[ZOOM_MODEL] + stages[4].add_text_layers > layers[ZOOM_MODEL]  # grown there


def test_grpo_prompts_from_the_ladder_world():
    from visionthink.train.grpo_env import prompt_dataset

    rows = prompt_dataset(TINY_GRID, 8, world="ladder", protocol="visionthink-zoom")
    assert list(rows["family"]) == list(synth.LADDER_TRAIN_MIX) * 2
    assert all(uid.startswith("l4-") for uid in rows["uid"])  # the ladder's train stream
    with pytest.raises(KeyError):
        prompt_dataset(TINY_GRID, 2, world="moon")
    framed = prompt_dataset(TINY_GRID, 16, world="ladder", protocol="visionthink-zoom", frame_fraction=0.5)
    plain = prompt_dataset(TINY_GRID, 16, world="ladder", protocol="visionthink-zoom")
    changed = [a != b for a, b in zip(framed["question"], plain["question"], strict=True)]
    assert 2 <= sum(changed) <= 14 and framed["answer"] == plain["answer"]
    assert all(b in a for a, b in zip(framed["question"], plain["question"], strict=True))
    asked = prompt_dataset(TINY_GRID, 32, world="ladder", protocol="visionthink-zoom", crossed_wording_fraction=1.0)
    plain = prompt_dataset(TINY_GRID, 32, world="ladder", protocol="visionthink-zoom")
    for row, before in zip(asked, plain, strict=True):
        kind, was = synth.question_type_of(row["question"]), synth.question_type_of(before["question"])
        assert kind == synth.CROSSED_WORDINGS.get(was, was)
        if kind == was:
            assert row["question"] == before["question"]
        assert row["answer"] == before["answer"] and row["family"] == before["family"]
    paired = prompt_dataset(TINY_GRID, 32, world="ladder", protocol="visionthink-zoom", paired_wording_fraction=1.0)
    for row, before in zip(paired, plain, strict=True):
        kind = synth.question_type_of(before["question"])
        assert row["answer"] == before["answer"] and row["family"] == before["family"]
        if kind in ("pattern", "majority"):
            assert row["question"] in synth.paired_wordings(kind)
        else:
            assert row["question"] == before["question"]
    carried = prompt_dataset(TINY_GRID, 32, world="ladder", protocol="visionthink-zoom",
                             carrier_wording_fraction=0.5, paired_wording_fraction=0.5)
    kinds = [synth.question_type_of(before["question"]) for before in plain]
    # a "do" question may also be a paired wording ("Which pattern do you find on the label?"): counted as paired
    asked = [(row["question"] in synth.carrier_wordings(kind) + synth.do_wordings(kind),
              row["question"] in synth.paired_wordings(kind))
             for row, kind in zip(carried, kinds, strict=True)]
    assert not any(c and p and row["question"] not in synth.do_wordings(kind)
                   for (c, p), row, kind in zip(asked, carried, kinds, strict=True))
    assert 4 <= sum(c and not p for c, p in asked) <= 24
    assert carried["answer"] == plain["answer"] and carried["family"] == plain["family"]
    noised = prompt_dataset(TINY_GRID, 32, world="ladder", protocol="visionthink-zoom", noise_word_fraction=0.5)
    pairs = list(zip(noised["question"], plain["question"], strict=True))
    changed = [words_of(b) in words_of(a) and a != b for a, b in pairs]
    assert 6 <= sum(changed) <= 26 and all(c or a == b for c, (a, b) in zip(changed, pairs, strict=True))


def test_the_default_model_is_the_ladder_model_and_the_demo_runs_the_ladder_on_it():
    from visionthink.eval.synth_run import LADDER_PLAN, demo_plan
    from visionthink.models.loading import default_model_dir
    from visionthink.profiles import declared_profile

    assert declared_profile(default_model_dir()).offers("zoom_image")
    assert demo_plan(None) is LADDER_PLAN
    assert demo_plan(str(REPO / "checkpoints" / "tiny-synth")) is not LADDER_PLAN  # the paper's model: its modes


def test_a_true_box_regenerates_its_item_once(monkeypatch):
    from visionthink.eval.benchmarks.synth import LadderValidation

    bench = LadderValidation()  # its own cache: the registry's instance is shared
    samples = bench.load(None, limit=24)
    small = [s for s in samples if s.meta["family"] == "fine_small"]
    calls = []
    regenerate = bench.regenerate
    monkeypatch.setattr(bench, "regenerate", lambda *key: calls.append(key) or regenerate(*key))
    first = [bench.label_box(s) for s in small]
    assert [bench.label_box(s) for s in small] == first and all(first)
    assert len(calls) == len(small)
    small[0].answer = "not the answer"  # a folder whose item differs from the generator's gets no box
    assert bench.label_box(small[0]) is None and len(calls) == len(small)
