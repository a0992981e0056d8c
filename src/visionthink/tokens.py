"""Token accounting: render a protocol conversation into model inputs, and mark what is trained on.

This is the single place where messages become token ids. Inference, training and
serving all call `encode`, so the model is fed exactly the protocol's rendering.
"""

from __future__ import annotations

import torch
from transformers import BatchFeature

from visionthink.pixels import join, patches, per_image
from visionthink.profiles import ProtocolProfile, get_profile
from visionthink.protocol import Message, images_in

IGNORE_INDEX = -100


def render_text(processor, messages: list[Message], add_generation_prompt: bool = False,
                with_tools: bool = True, protocol: str | ProtocolProfile | None = None) -> str:
    """The conversation as template text (one image placeholder per image) in the protocol profile's format
    (default `visionthink`); the protocol's tool block unless `with_tools` is False (only SFT's perception stage
    renders without it)."""
    profile = get_profile(protocol)
    kwargs = {} if profile.chat_template is None else {"chat_template": profile.chat_template}
    return processor.apply_chat_template(
        messages, tools=profile.template_tools() if with_tools else None, tokenize=False,
        add_generation_prompt=add_generation_prompt, **kwargs,
    )


def encode(processor, messages: list[Message], add_generation_prompt: bool = False,
           with_tools: bool = True, protocol: str | ProtocolProfile | None = None) -> BatchFeature:
    """Model inputs for one conversation: input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw."""
    text = render_text(processor, messages, add_generation_prompt, with_tools, protocol)
    images = images_in(messages)
    return processor(text=[text], images=images or None, return_tensors="pt")


def encode_batch(processor, conversations: list[list[Message]], add_generation_prompt: bool = False,
                 with_tools: bool = True, protocol: str | ProtocolProfile | None = None) -> list[BatchFeature]:
    """`encode` of each conversation, in one processor call (the per-call overhead is paid once)."""
    texts = [render_text(processor, messages, add_generation_prompt, with_tools, protocol)
             for messages in conversations]
    counts = [len(images_in(messages)) for messages in conversations]
    images = [image for messages in conversations for image in images_in(messages)]
    batch = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    grids = batch.get("image_grid_thw")
    patches = [int(t * h * w) for t, h, w in grids.tolist()] if grids is not None else []
    rows, image, patch = [], 0, 0
    for row, count in enumerate(counts):
        features = _unpadded_text(batch, row)
        if count:
            size = sum(patches[image : image + count])
            features["image_grid_thw"] = grids[image : image + count]
            features["pixel_values"] = batch["pixel_values"][patch : patch + size]
            image, patch = image + count, patch + size
        rows.append(BatchFeature(features))
    return rows


def _unpadded_text(batch, row: int) -> dict[str, torch.Tensor]:
    """One row of a padded text batch without its padding: input_ids, attention_mask, mm_token_type_ids."""
    keep = batch["attention_mask"][row].bool()
    return {key: batch[key][row][keep][None] for key in ("input_ids", "attention_mask", "mm_token_type_ids")}


class ProcessedImages:
    """Images the processor has turned into patches already, kept by identity for the turns that follow: a
    conversation's second turn carries its first image again, and only the new one needs processing."""

    def __init__(self):
        self._entries: list[tuple[object, torch.Tensor, torch.Tensor]] = []

    def get(self, image) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(image_grid_thw row, pixel_values) of `image` (this very object) if it was processed."""
        return next(((grid, pixels) for known, grid, pixels in self._entries if known is image), None)

    def process(self, processor, images: list) -> None:
        """Process the images not seen yet, together (`pixels.patches`, or the image processor where it declines)."""
        fresh = [image for i, image in enumerate(images)
                 if self.get(image) is None and not any(image is other for other in images[:i])]
        if not fresh:
            return
        made = patches(processor.image_processor, fresh)  # the processor's values, bit for bit, in less time
        if made is None:
            batch = processor.image_processor(fresh, return_tensors="pt")
            made = batch["pixel_values"], batch["image_grid_thw"]
        pixel_values, grids = made
        for image, grid, values in zip(fresh, grids, per_image(pixel_values, grids), strict=True):
            self._entries.append((image, grid[None], values))


def encode_batch_reusing(processor, conversations: list[list[Message]], known: ProcessedImages,
                         add_generation_prompt: bool = False,
                         protocol: str | ProtocolProfile | None = None, pixels: bool = True) -> list[BatchFeature]:
    """`encode_batch`'s rows, processing only the images `known` has not seen (they are added to it); the text is
    tokenized with each image's placeholder expanded as the processor expands it (`replace_image_token`).
    `pixels=False` leaves `pixel_values` out: a caller that reads each image's patches from `known` copies none."""
    texts = [render_text(processor, messages, add_generation_prompt, protocol=protocol) for messages in conversations]
    known.process(processor, [image for messages in conversations for image in images_in(messages)])
    expanded, per_row = [], []
    for text, messages in zip(texts, conversations, strict=True):
        entries = [known.get(image) for image in images_in(messages)]
        pieces = text.split(processor.image_token)
        if len(pieces) != len(entries) + 1:
            raise ValueError(f"{len(pieces) - 1} image placeholders in the text for {len(entries)} images")
        out = pieces[0]
        for (grid, _), piece in zip(entries, pieces[1:], strict=True):
            out += processor.replace_image_token({"image_grid_thw": grid}, 0) + piece
        expanded.append(out)
        per_row.append(entries)
    batch = processor.tokenizer(expanded, padding=True, return_tensors="pt")
    batch["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(batch["input_ids"]),
                                              dtype=batch["input_ids"].dtype)
    rows = []
    for row, entries in enumerate(per_row):
        features = _unpadded_text(batch, row)
        if entries:
            features["image_grid_thw"] = torch.cat([grid for grid, _ in entries])
            if pixels:
                features["pixel_values"] = join([values for _, values in entries])
        rows.append(BatchFeature(features))
    return rows


def assistant_mask(processor, input_ids: torch.Tensor) -> torch.Tensor:
    """True on the tokens of every assistant turn's content and its closing `<|im_end|>`.

    System, user and tool turns, the `<|im_start|>assistant\\n` header and image tokens stay False.
    """
    tokenizer = processor.tokenizer
    start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    header = tokenizer.encode("assistant\n", add_special_tokens=False)
    ids = input_ids.tolist()
    mask = torch.zeros(len(ids), dtype=torch.bool)
    i = 0
    while i < len(ids):
        if ids[i] == start_id and ids[i + 1 : i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            while j < len(ids) and ids[j] != end_id:
                mask[j] = True
                j += 1
            if j < len(ids):
                mask[j] = True
            i = j
        i += 1
    return mask


def encode_for_training(processor, messages: list[Message], with_tools: bool = True,
                        protocol: str | ProtocolProfile | None = None) -> BatchFeature:
    """`encode` plus `labels`: the input ids on assistant tokens, IGNORE_INDEX elsewhere. `protocol`: the profile
    to render with, as for `encode` (default `visionthink`)."""
    batch = encode(processor, messages, with_tools=with_tools, protocol=protocol)
    ids = batch["input_ids"][0]
    labels = torch.where(assistant_mask(processor, ids), ids, torch.full_like(ids, IGNORE_INDEX))
    batch["labels"] = labels[None]
    return batch


def collate(processor, examples: list[BatchFeature]) -> dict[str, torch.Tensor]:
    """Right-pad single-conversation encodings into one batch (images concatenated in order)."""
    pad_id = processor.tokenizer.pad_token_id
    length = max(e["input_ids"].shape[1] for e in examples)

    def pad(key: str, value: int) -> torch.Tensor:
        rows = []
        for e in examples:
            row = e[key][0]
            rows.append(torch.cat([row, torch.full((length - row.shape[0],), value, dtype=row.dtype)]))
        return torch.stack(rows)

    batch = {
        "input_ids": pad("input_ids", pad_id),
        "attention_mask": pad("attention_mask", 0),
        "mm_token_type_ids": pad("mm_token_type_ids", 0),
    }
    if "labels" in examples[0]:
        batch["labels"] = pad("labels", IGNORE_INDEX)
    with_images = [e for e in examples if e.get("pixel_values") is not None]
    if with_images:
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
        batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
    return batch


def visual_tokens(processor, image_grid_thw: torch.Tensor) -> list[int]:
    """Visual tokens per image, from the processor's image grid (t * h * w / merge^2)."""
    merge = processor.image_processor.merge_size ** 2
    return [int(t) * int(h) * int(w) // merge for t, h, w in image_grid_thw.tolist()]
