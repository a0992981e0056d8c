"""Supervised warm start of the tiny model: perception of the synthetic world and the protocol's turns.

Images are drawn fresh every step (nothing stored). The loss is the assistant tokens'
cross-entropy plus an auxiliary perception loss on the merged visual tokens (see
`sft_data.aux_targets`; the heads are dropped after training). Resumable: a killed run
started again with the same command goes on from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from visionthink.data import synth
from visionthink.errors import VisionThinkError
from visionthink.images import make_views
from visionthink.models import TinyModelConfig, build_tiny_model, build_tiny_tokenizer, load_model
from visionthink.models.grow import add_text_layers
from visionthink.profiles import declare_profile, get_profile
from visionthink.recipes import to_dict
from visionthink.tokens import IGNORE_INDEX, collate, encode_for_training
from visionthink.train import newest_checkpoint
from visionthink.train.sft_data import (
    AUX_HEADS,
    GROUNDING_CLASSES,
    ZOOM_PROFILE,
    box_position,
    conversation,
    decision_position,
    direct_answer_logits,
    mask_first_turn,
    sample_example,
    sample_ladder_example,
    taught_think,
    tokenizer_corpus,
    zoom_conversation,
)
from visionthink.train.shared_prefix import forward_with_shared_prefix


@dataclass
class SFTConfig:
    """Supervised warm start (`visionthink train sft`)."""

    output_dir: str = "runs/sft-tiny"
    """Checkpoints, log.jsonl and the final model (`final/`) go here."""
    export_dir: str | None = None
    """If set, the final model is also copied here (the shipped checkpoint)."""
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 2e-3
    min_lr_ratio: float = 0.05
    """Cosine decay ends at learning_rate * min_lr_ratio."""
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_weight: float = 1.0
    """Weight of the auxiliary perception loss (privileged generator labels; training only)."""
    init_from: str | None = None
    """Start from this model folder (weights and tokenizer) instead of a fresh tiny model: a second stage."""
    add_text_layers: int = 0
    """With `init_from`: append this many decoder layers to its text model, each starting as an identity
    (`models.grow`), so the stage trains a deeper text model that begins as `init_from`'s. 0: as loaded."""
    mask_illegible_first_turns: bool = False
    """Leave out of the loss the first turn of low-res conversations about a small label, whose pattern the
    image cannot show: the model is then taught neither to guess it nor when to resize (both choices stay
    untaught there). Without it, guessing teaches the model to hedge on every label at low resolution."""
    legibility_weight: float = 0.0
    """Weight of an auxiliary head on the last hidden state at the first turn's decision token (where
    `<answer>` or `<tool_call>` is chosen), trained to tell whether the first image shows the answer. It
    shapes what that position knows, not what it decides: the decision's targets stay uninformed
    (`resize_fraction`), the head is dropped after training and GRPO learns the decision. A pretrained VLM
    knows when a detail is too small to make out; a from-scratch tiny model must be taught. 0: off."""
    perception_only: bool = False
    """Train on the short form of direct answers (image, question -> think, answer; no tool block, no
    instruction) on views that show the answer: a first stage that teaches a from-scratch model to look.
    In the full protocol the image is ~16 of ~300 tokens, and the text model did not learn to attend to
    it in 1000 steps (answers independent of the image); in the short form it does."""
    resize_fraction: float = 0.5
    """Share of low-res conversations that call resize_image, at random and regardless of need."""
    full_res_fraction: float = 0.25
    """Share of conversations that start at full resolution (what `full` mode shows the model)."""
    zoom_fraction: float = 0.0
    """Region zoom (docs/zoom.md): > 0 renders the protocol conversations in the `visionthink-zoom`
    profile, and this share of the low-res calls about the label zoom on its true box (`sample_zoom_example`);
    validation then also reports held-out direct answers at low resolution under the zoom prompts
    (`val_zoom_heldout/low/...`). 0: the recipe's conversations, byte for byte."""
    grounding_weight: float = 0.0
    """Weight of two heads on the low view's merged visual tokens (`sft_data.grounding_targets`): where each token
    sits in the image, and where the label is to within half a token. They make the tokens carry what a zoom's box
    must say. Privileged generator labels, dropped after training, like `aux_weight`'s heads (docs/zoom.md). 0: off
    (no head is built)."""
    grounding_heads: list[str] | None = None
    """Which grounding heads `grounding_weight` trains (names of `sft_data.GROUNDING_CLASSES`); None: all three.
    `label_where` makes every image token say where the label is, and that cost the ladder model its coarse
    questions; `token_position` and `label_cell` ask only where a token sits and, on the label's token, where in it
    the label is (docs/ladder.md)."""
    box_head_weight: float = 0.0
    """Weight of a head on the last hidden state where a zoom call's box starts (the token before its first digit),
    trained to name the label's half-token cell (`label_where`): it makes the text model gather from the image what
    the box's digits must say, as `legibility_weight` does for the decision. Dropped after training. 0: off."""
    grounding_fraction: float = 0.0
    """With `zoom_fraction` > 0: the share of examples that are the short form of a zoom call on the label's true box
    (`sft_data.sample_grounding_example`: low view and label question, no tool block)."""
    perception_fraction: float = 0.0
    """With `zoom_fraction` > 0: the share of examples in the short form of a direct answer (`perception_only`'s), so
    that a stage heavy in `grounding_fraction` keeps reading every question type."""
    stop_at: int | None = None
    """Stop after this many steps while the learning-rate schedule still spans `steps` (the first part of a longer
    run, e.g. the zoom model's grounding stage). None: `steps`."""
    label_call_fraction: float | None = None
    """With `zoom_fraction` > 0: the share of low-res label questions that call a tool (None: `resize_fraction`).
    Small and large labels alike, so it says nothing about when a call is needed; more calls give the box more
    examples."""
    world: str = "synth"
    """`synth`: the world of the shipped models (`sample_example`). `ladder`: the ladder world's four families in
    the `visionthink-zoom` profile (`sft_data.sample_ladder_example`, issue 27), with `right_action_fraction`,
    `perception_fraction`, `grounding_fraction` and `full_res_fraction`; validation then reads the ladder's
    families."""
    family_weights: dict[str, float] | None = None
    """With `world: ladder`: relative weights of the four families in training (None: equally often); a family left
    out is not drawn."""
    coarse_weights: dict[str, float] | None = None
    """With `world: ladder`: relative weights of the coarse question types (`colour`, `shape`, `count`; None: equally
    often). The ladder model read colour well and the largest shape's kind at chance."""
    train_vision: bool = True
    """False: the vision tower and its merger stay as they are (no gradient), so a stage teaches the text model to
    read what the tower already sees: linear probes on the ladder model's image tokens read the largest shape's kind
    (100%) and the count (84%) that its text model answered at chance (docs/ladder.md)."""
    train_merger: bool = False
    """With `train_vision: false`: the merger (the MLP that turns each 2x2 block of the tower's patches into one of
    the text model's image tokens) still trains, so the text model's reading can shape what its image tokens say
    while the tower's features stay as the ground stage left them. Tried in the ladder's coarse stage and polish: the
    count read better at full resolution, not from the low view (docs/ladder.md); off in the recipe."""
    frame_fraction: float = 0.0
    """With `world: ladder`: the share of training questions asked inside a frame of words that leaves the question
    as it was (`synth.TRAIN_FRAMES`: "Quick question: ...", "... Thanks!"), so that words around a question stop
    moving the decision and the reading (held-out sentence structures)."""
    crossed_wording_fraction: float = 0.0
    """With `world: ladder`: the share of label questions asked in the other label family's wording
    (`synth.CROSSED_WORDINGS`: one label asked "which pattern do most labels show?", three asked "what pattern is on
    the label?"); the think, the answer and the right action follow the scene, so the action must follow the image
    (one label: zoom; three: resize), not the words. The think named the action from the words alone: small labels
    asked in held-out sentence structures were read as "the labels" and resized (docs/ladder.md)."""
    paired_wording_fraction: float = 0.0
    """With `world: ladder`: the share of label questions asked in the other label family's sentence forms with their
    own number (`synth.PAIRED_TEMPLATES`: "which pattern does the label show?" beside "which pattern do most labels
    show?"), so that no sentence form, only "the label" against "most labels", tells a zoom from a resize."""
    carrier_wording_fraction: float = 0.0
    """With `world: ladder`: the share of questions (of those not paired) asked in a carrier sentence form around the
    question's noun phrase (`synth.CARRIER_TEMPLATES`: "Give the number of shapes.", "Can you name the colour of the
    largest shape?"), so that the phrase, not the sentence around it, says what is asked: the model answered a count
    to "DESCRIBE THE KIND OF THE LARGEST SHAPE IN ONE WORD" (held-out sentence structures, docs/ladder.md)."""
    noise_word_fraction: float = 0.0
    """With `world: ladder`: the share of questions that get one or two nonsense words (`synth.noise_wording`), so
    that words the model cannot read stop moving its reading: "DESCRIBE THE KIND OF THE LARGEST SHAPE IN ONE WORD"
    falls apart into single letters (" ON", "E", " ", "W", "OR", "D") and was read as a count (docs/ladder.md)."""
    right_action_fraction: float = 0.0
    """With `world: ladder`: the share of low-res starts that take the family's right action; the rest take an
    action at random."""
    list_shapes: bool = False
    """With `world: ladder`: a count question's think names the shapes left to right ("Count the shapes: green ring,
    orange circle.", `sft_data.listing_think`), so that the text model counts one shape at a time instead of reading
    the count off all image tokens at once (it read the count from the low view at 51-67% where linear probes on the
    tokens read 83-89%). Tried in the coarse stage: the lists came out garbled and every coarse reading fell
    (docs/ladder.md); off in the recipe."""
    vocab_size: int = 2048
    save_every: int = 200
    eval_every: int = 200
    eval_items: int = 240
    keep_checkpoints: int = 2
    seed: int = 0
    threads: int = 2
    model: TinyModelConfig = field(default_factory=TinyModelConfig)


class AuxHeads(nn.Module):
    """Linear heads on merged visual tokens, one per `AUX_HEADS` target."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(width, classes) for name, classes in AUX_HEADS.items()})

    def loss(self, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = [
            nn.functional.cross_entropy(head(features), targets[name], ignore_index=IGNORE_INDEX)
            for name, head in self.heads.items()
            if (targets[name] != IGNORE_INDEX).any()
        ]
        return torch.stack(losses).sum()


class PositionHead(nn.Module):
    """Linear head on the hidden state at one position per row: whether the first image shows the answer (at the
    decision token), or where the label is (where a zoom's box starts)."""

    def __init__(self, width: int, classes: int = 2):
        super().__init__()
        self.linear = nn.Linear(width, classes)

    def loss(self, hidden: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Cross-entropy and accuracy of the head at `positions` (one per row) of `hidden` (batch, seq, width)."""
        logits = self.linear(hidden[torch.arange(len(positions)), positions])
        accuracy = (logits.argmax(-1) == targets).float().mean().item()
        return nn.functional.cross_entropy(logits, targets), accuracy


def grounding(head: nn.Module, features: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cross-entropy of a grounding head on the tokens that have a target, and its accuracy on the tokens whose
    target is not 0 (for `label_cell`: the token that holds the label, the part a box depends on)."""
    known = cells != IGNORE_INDEX
    if not known.any():
        return features.sum() * 0, float("nan")
    logits = head(features[known])
    holds = cells[known] > 0
    accuracy = (logits[holds].argmax(-1) == cells[known][holds]).float().mean().item() if holds.any() else float("nan")
    return nn.functional.cross_entropy(logits, cells[known]), accuracy


@contextlib.contextmanager
def vision_features(model):
    """Collects the vision tower's merged features (a row per image token, images in order) of the forward
    passes run inside. The model's outputs carry them only from transformers 5.24 on."""
    seen: list[torch.Tensor] = []
    handle = model.model.visual.register_forward_hook(lambda _module, _args, out: seen.append(out.pooler_output))
    try:
        yield seen
    finally:
        handle.remove()


def learning_rate(config: SFTConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.min_lr_ratio
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def teacher_forced_accuracy(model, processor, items: list[synth.Item], start: str,
                            profile: str | None = None, list_shapes: bool = False) -> dict[str, float]:
    """Share of items whose whole direct-answer turn is the arg-max at every token (tool call banned).

    Equals greedy decoding in the `low`/`full` modes, at a tenth of the cost of `generate()`. `profile`
    "visionthink-zoom": under the zoom profile's prompts (default: `visionthink`'s). `list_shapes`: count questions'
    thinks name the shapes (`sft_data.listing_think`), as such a stage trains them.
    """
    model.eval()
    hits: dict[str, list[bool]] = {}
    zoom = profile is not None and get_profile(profile).offers("zoom_image")
    for chunk in range(0, len(items), 32):
        part = items[chunk : chunk + 32]
        views = [make_views(item.image, processor.grid) for item in part]
        if zoom:
            conversations = [zoom_conversation(item.question, item.answer, view, start, "none", processor.grid,
                                               item.question_type,
                                               think=taught_think(item.question, item.question_type, item.shapes,
                                                                  list_shapes))
                             for item, view in zip(part, views, strict=True)]
        else:
            conversations = [conversation(item.question, item.answer, view, start, resize=False,
                                          question_type=item.question_type) for item, view in zip(part, views,
                                                                                                  strict=True)]
        logits, targets = direct_answer_logits(model, processor, conversations, profile)
        correct = ((logits.argmax(-1) == targets) | (targets == IGNORE_INDEX)).all(dim=1)
        for item, ok in zip(part, correct.tolist(), strict=True):
            hits.setdefault(item.family, []).append(ok)
    model.train()
    return {family: sum(v) / len(v) for family, v in sorted(hits.items())}



STATE_FILE = "trainer_state.pt"
"""Step, optimizer and heads of an SFT checkpoint; written last, so its presence marks a complete save."""


def save_checkpoint(path: Path, model, processor, heads: nn.ModuleDict, optimizer, step: int,
                    config: SFTConfig) -> None:
    partial = path.with_name(f"tmp-{path.name}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    torch.save({"step": step, "heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                "config": to_dict(config)}, partial / STATE_FILE)
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)


def train_sft(config: SFTConfig) -> Path:
    """Run (or resume) supervised training; returns the folder of the final model."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would train and write the same folders
        raise VisionThinkError("SFT of the tiny model runs in one process (its `threads` field sets the "
                               "CPU threads); start it without `accelerate launch`/`torchrun`")
    torch.set_num_threads(config.threads)
    if config.add_text_layers and not config.init_from:
        raise VisionThinkError("add_text_layers grows the model of init_from; set init_from (a fresh tiny model "
                               "takes its depth from model.text_layers)")
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resume = newest_checkpoint(output_dir, STATE_FILE)
    if resume:
        model, processor = load_model(resume, dtype=torch.float32)
        state = torch.load(resume / STATE_FILE, weights_only=False)
        start = state["step"]
    elif config.init_from:
        model, processor = load_model(config.init_from, dtype=torch.float32, device="cpu")
        add_text_layers(model, config.add_text_layers)
        state, start = None, 0
    else:
        tokenizer = build_tiny_tokenizer(tokenizer_corpus(), config.vocab_size)
        model, processor = build_tiny_model(tokenizer, config.model)
        state, start = None, 0
    model.train()
    if not config.train_vision:
        model.model.visual.requires_grad_(False)
        model.model.visual.merger.requires_grad_(config.train_merger)
    width = model.config.text_config.hidden_size
    heads = nn.ModuleDict({"perception": AuxHeads(width), "legibility": PositionHead(width)})
    if config.box_head_weight > 0:
        heads["box"] = PositionHead(width, GROUNDING_CLASSES["label_where"])
    if config.grounding_weight > 0:
        chosen = config.grounding_heads or list(GROUNDING_CLASSES)
        unknown = sorted(set(chosen) - set(GROUNDING_CLASSES))
        if unknown:
            raise VisionThinkError(f"unknown grounding heads {unknown}; expected some of "
                                   f"{', '.join(GROUNDING_CLASSES)}")
        heads["grounding"] = nn.ModuleDict({name: nn.Linear(width, GROUNDING_CLASSES[name]) for name in chosen})
    optimizer = torch.optim.AdamW(
        list(model.parameters()) + list(heads.parameters()), lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    if state:
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
    teach_legibility = config.legibility_weight > 0
    teach_box = config.box_head_weight > 0
    tool_call_id = processor.tokenizer.convert_tokens_to_ids("<tool_call>")
    digit_ids = processor.tokenizer.convert_tokens_to_ids([str(d) for d in range(10)])
    decision_ids = processor.tokenizer.convert_tokens_to_ids(["<answer>", "<tool_call>"])
    ladder = config.world == "ladder"
    if config.world not in synth.WORLDS:
        raise VisionThinkError(f"unknown world {config.world!r}; expected one of {', '.join(synth.WORLDS)}")
    validation = {wording: synth.WORLDS[config.world]("validation", config.eval_items, seed=config.seed,
                                                      wordings=wording)
                  for wording in synth.WORDING_SETS}
    grid = processor.grid
    log = (output_dir / "log.jsonl").open("a")
    last = config.stop_at or config.steps
    progress = tqdm(range(start, last), initial=start, total=last, desc="sft", dynamic_ncols=True)
    began = time.time()
    for step in progress:
        rng = np.random.default_rng([config.seed, 9173, step])
        if ladder:
            examples = [sample_ladder_example(rng, grid, config.full_res_fraction, config.right_action_fraction,
                                              config.perception_fraction, config.grounding_fraction,
                                              config.family_weights, config.frame_fraction,
                                              config.crossed_wording_fraction, config.coarse_weights,
                                              config.paired_wording_fraction, config.carrier_wording_fraction,
                                              config.noise_word_fraction, config.list_shapes)
                        for _ in range(config.batch_size)]
        else:
            examples = [sample_example(rng, grid, config.resize_fraction, config.full_res_fraction,
                                       config.perception_only, config.zoom_fraction, config.label_call_fraction,
                                       config.grounding_fraction, config.perception_fraction)
                        for _ in range(config.batch_size)]
        encoded = [encode_for_training(processor, e.messages, e.with_tools, protocol=e.protocol) for e in examples]
        if teach_legibility:  # before the mask below, which can hide the first turn's choice
            positions = torch.tensor([decision_position(e["labels"][0], decision_ids) for e in encoded])
        boxed = [i for i, e in enumerate(examples) if e.zoomed] if teach_box else []
        box_positions = torch.tensor([box_position(encoded[i]["labels"][0], tool_call_id, digit_ids) for i in boxed],
                                     dtype=torch.long)
        if config.mask_illegible_first_turns:
            for example, encoding in zip(examples, encoded, strict=True):
                if not example.legible:
                    encoding["labels"] = mask_first_turn(encoding["labels"][0])[None]
        batch = collate(processor, encoded)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        with vision_features(model) as seen:
            outputs, prefix = forward_with_shared_prefix(model, batch,
                                                         output_hidden_states=teach_legibility or teach_box)
        features = torch.cat(seen)
        targets = {name: torch.cat([t[name] for e in examples for t in e.aux]) for name in AUX_HEADS}
        aux_loss = heads["perception"].loss(features, targets)
        loss = outputs.loss + config.aux_weight * aux_loss
        extra = {}
        if config.grounding_weight > 0:
            losses = []
            for name, head in heads["grounding"].items():
                cells = torch.cat([t[name] for e in examples for t in e.aux])
                part, extra[f"grounding/{name}_acc"] = grounding(head, features, cells)
                losses.append(part)
            loss = loss + config.grounding_weight * sum(losses)
        if teach_legibility:
            legible = torch.tensor([e.legible for e in examples], dtype=torch.long)
            legibility_loss, extra["legibility_acc"] = heads["legibility"].loss(
                outputs.hidden_states[-1], positions - prefix, legible)
            loss = loss + config.legibility_weight * legibility_loss
        if boxed:
            cells = torch.stack([examples[i].aux[0]["label_where"][0] for i in boxed])
            box_loss, extra["box_head_acc"] = heads["box"].loss(
                outputs.hidden_states[-1][torch.tensor(boxed)], box_positions - prefix, cells)
            loss = loss + config.box_head_weight * box_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        progress.set_postfix(loss=f"{outputs.loss.item():.3f}", aux=f"{aux_loss.item():.3f}")
        record = {"step": step + 1, "loss": outputs.loss.item(), "aux_loss": aux_loss.item(),
                  "lr": learning_rate(config, step), "elapsed_s": round(time.time() - began, 1), **extra}
        done = step + 1 == last
        if (step + 1) % config.eval_every == 0 or done:
            checks = (("train", "high"), ("train", "low"), ("heldout", "low"))
            if ladder:
                checks = (("train", "high"), ("train", "low"), ("heldout", "high"), ("heldout-templates", "high"))
            for name, start_view in checks:
                prefix_name = {"train": "val", "heldout": "val_heldout", "heldout-templates": "val_templates"}[name]
                for family, accuracy in teacher_forced_accuracy(model, processor, validation[name], start_view,
                                                                ZOOM_PROFILE if ladder else None,
                                                                config.list_shapes).items():
                    record[f"{prefix_name}/{start_view}/{family}"] = accuracy
            if config.zoom_fraction > 0 and not config.perception_only:  # the prompts the zoom modes run on
                for family, accuracy in teacher_forced_accuracy(model, processor, validation["heldout"], "low",
                                                                ZOOM_PROFILE).items():
                    record[f"val_zoom_heldout/low/{family}"] = accuracy
            tqdm.write(json.dumps(record))
        log.write(json.dumps(record) + "\n")
        log.flush()
        if (step + 1) % config.save_every == 0 or done:
            save_checkpoint(output_dir / f"checkpoint-{step + 1}", model, processor, heads, optimizer, step + 1, config)
            for old in sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[
                : -config.keep_checkpoints
            ]:
                shutil.rmtree(old, ignore_errors=True)
    log.close()
    final = output_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    model.save_pretrained(final)
    processor.save_pretrained(final)
    declare_profile(final, ZOOM_PROFILE if config.zoom_fraction > 0 or ladder else None)
    if config.export_dir:
        export = Path(config.export_dir)
        shutil.rmtree(export, ignore_errors=True)
        shutil.copytree(final, export)
    return final
