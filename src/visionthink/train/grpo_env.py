"""What GRPO rolls out on: synthetic prompts in TRL's format, the `resize_image` environment, episodes.

- `prompt_dataset`: held-out-free train items of the synthetic world as a `datasets.Dataset`. Each row's
  `prompt` is `protocol.first_turn` with the image taken out into the `image` column (TRL puts it back
  in front of the user text, which is where `first_turn` has it); `high_res_image` feeds the environment.
- `ResizeEnvironment`: TRL's `environment_factory` class. Its one public method, `resize_image`, is the
  protocol's tool: its JSON schema is `protocol.RESIZE_TOOL` exactly (checked at import) and it answers
  with `protocol.tool_turn(high_res_image)`'s content, or an error turn after the first call.
- `ZoomEnvironment` (the `visionthink-zoom` profile, issue 12): `resize_image` and `zoom_image`, one call of
  either per rollout; the zoom's crop is the profile's own reply (`profile.check_turn`, `profile.reply`), the
  crop the inference loop returns. TRL renders a tool from its method's signature and docstring, which cannot
  say `minItems`/`maxItems`: `use_profile_tools` makes the trainer render the profile's schemas instead
  (`environment_tools` checks that the methods agree with them on everything else).
- `rollout_episode`: a TRL rollout (prompt, completion messages, completion ids) as a `protocol.Episode`,
  cut into assistant turns with `tokens.assistant_mask`, the same rule SFT trains on.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from PIL import Image

from visionthink import protocol
from visionthink.data import synth
from visionthink.images import PixelGrid, Views, clamp_to_pixel_range, load_image
from visionthink.profiles import VISIONTHINK, VISIONTHINK_ZOOM, ProtocolProfile, get_profile
from visionthink.tokens import assistant_mask

# ---------------------------------------------------------------- prompts


def trl_prompt(question: str, protocol: str | ProtocolProfile | None = None) -> list[dict[str, Any]]:
    """The profile's `first_turn(question, image)` with the image left out (`ProtocolProfile.trl_prompt`).

    `visionthink`: string contents; TRL (`prepare_multimodal_messages`) inserts the row's `image` in front of the
    first user message's text, which gives back `first_turn` exactly; `tests/test_grpo.py` checks the rendered ids.
    `release`: structured contents with an image placeholder where the release puts the image.
    """
    return get_profile(protocol).trl_prompt(question)


def source_image(image, pixel_range: tuple[int, int] | None = None) -> Image.Image:
    """The image the views are made from: loaded safely and, with `pixel_range` (min, max pixels), scaled into it
    as the release's training data is (`images.clamp_to_pixel_range`)."""
    image = load_image(image)
    return image if pixel_range is None else clamp_to_pixel_range(image, *pixel_range)


def prompt_row(item: synth.Item, grid: PixelGrid, protocol: str | ProtocolProfile | None = None,
               pixel_range: tuple[int, int] | None = None) -> dict[str, Any]:
    """One dataset row: the prompt, the low-res view (`image`), the high-res view (both as the profile makes them:
    `ProtocolProfile.views`) and the item's labels."""
    views = get_profile(protocol).views(item.image if pixel_range is None else source_image(item.image, pixel_range),
                                        grid)
    return {
        "prompt": trl_prompt(item.question, protocol),
        "image": views.low,
        "high_res_image": views.high,
        "question": item.question,
        "answer": item.answer,
        "family": item.family,
        "needs_high_res": item.needs_high_res,
        "uid": item.uid,
    }


def prompt_dataset(grid: PixelGrid, n: int, seed: int = 0, split: str = "train",
                   protocol: str | ProtocolProfile | None = None, pixel_range: tuple[int, int] | None = None):
    """The first `n` items of a synthetic split as TRL prompt rows (`datasets.Dataset`, images stored as PNG)."""
    import datasets

    items = synth.split_items(split, n, seed=seed)
    return datasets.Dataset.from_list([prompt_row(item, grid, protocol, pixel_range) for item in items])


def disk_dataset(path: str, grid: PixelGrid, split: str = "train", limit: int | None = None,
                 protocol: str | ProtocolProfile | None = None, pixel_range: tuple[int, int] | None = None):
    """TRL prompt rows from a `save_to_disk` folder with `image`, `question`, `answer` columns (for example
    what `visionthink data curate` writes); `family` (else `label`) and `uid` are kept when present. With
    `pixel_range`, each image is scaled into it before its views are made (`source_image`)."""
    from visionthink.data.curate import load_items

    dataset = load_items(path, split=split, limit=limit)
    columns = dataset.column_names
    profile = get_profile(protocol)

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        views = profile.views(source_image(row["image"], pixel_range), grid)
        return {
            "prompt": trl_prompt(str(row["question"]), protocol),
            "image": views.low,
            "high_res_image": views.high,
            "question": str(row["question"]),
            "answer": str(row["answer"]),
            "family": str(row.get("family", row.get("label", "all"))),
            "uid": str(row.get("uid", index)),
        }

    keep = {"prompt", "image", "high_res_image", "question", "answer", "family", "uid", "needs_high_res"}
    return dataset.map(convert, with_indices=True, remove_columns=[c for c in columns if c not in keep])


# ---------------------------------------------------------------- the tool


class ResizeEnvironment:
    """One rollout's world: the item's high-res view, returned by the first `resize_image` call.

    TRL exposes every public method but `reset` as a tool, so this class has exactly one. Its turns are those of
    `profile` (`environment_for` makes the class of another profile).
    """

    profile: ProtocolProfile = VISIONTHINK

    def __init__(self) -> None:
        self._high: Image.Image | None = None
        self._calls = 0
        self._returned: list[Image.Image] = []

    def reset(self, high_res_image: Image.Image | None = None, **_: Any) -> None:
        """Start a rollout on a row (TRL passes the whole dataset row)."""
        self._high = high_res_image
        self._calls = 0
        self._returned = []

    def resize_image(self, action: str = "resize"):  # schema and docstring: see below
        self._calls += 1
        if self._calls > 1:
            return self.profile.error_turn("the image was already resized")["content"]
        if action != "resize":
            return self.profile.error_turn(f"unknown action {str(action)[:40]!r}; expected 'resize'")["content"]
        if self._high is None:
            return self.profile.error_turn("no image to resize")["content"]
        self._returned.append(self._high)
        return self.profile.tool_turn(self._high)["content"]

    @property
    def returned_images(self) -> list[Image.Image]:
        """Images the tool put into the conversation since `reset` (for tests and logs)."""
        return list(self._returned)


def _tool_docstring(tool: dict[str, Any]) -> str:
    """A Google-style docstring from which transformers' `get_json_schema` rebuilds `tool` exactly."""
    function = tool["function"]
    (name, spec), = function["parameters"]["properties"].items()
    choices = f" (choices: {json.dumps(spec['enum'])})" if "enum" in spec else ""
    return f"{function['description']}\n\nArgs:\n    {name}: {spec['description']}{choices}\n"



class ZoomEnvironment(ResizeEnvironment):
    """One rollout's world under a profile that offers `zoom_image` (`visionthink-zoom`): the item's two views.

    Two public methods, `resize_image` (inherited) and `zoom_image`; one call of either per rollout (the protocol's
    one tool turn). A zoom's box is in the low view's pixels (the row's `image`); the crop is what the inference
    loop returns for the same call: `profile.check_turn` refuses a box wholly outside the view, `profile.reply`
    crops (`images.zoom_crop`). `grid` is the processor's (`environment_for` sets it)."""

    profile: ProtocolProfile = VISIONTHINK_ZOOM
    grid: PixelGrid | None = None

    def __init__(self) -> None:
        super().__init__()
        self._low: Image.Image | None = None

    def reset(self, high_res_image: Image.Image | None = None, image: Image.Image | None = None, **_: Any) -> None:
        """Start a rollout on a row: `image` is the low view the prompt shows, `high_res_image` the full one."""
        super().reset(high_res_image)
        self._low = image

    def resize_image(self, action: str = "resize"):  # schema and docstring: those of ResizeEnvironment
        if self._calls >= 1:
            self._calls += 1
            return self.profile.error_turn("a tool was already called")["content"]
        return super().resize_image(action)

    def zoom_image(self, box: list[float] = None):  # noqa: RUF013 - schema and docstring: see below
        self._calls += 1
        if self._calls > 1:
            return self.profile.error_turn("a tool was already called")["content"]
        if self._high is None or self._low is None or self.grid is None:
            return self.profile.error_turn("no image to zoom")["content"]
        if box is None:
            return self.profile.error_turn("zoom_image call without its required argument 'box'")["content"]
        checked, error = protocol.zoom_box(box)
        if error is not None:
            return self.profile.error_turn(error)["content"]
        views = Views(low=self._low, high=self._high)
        turn = self.profile.check_turn(protocol.Turn("zoom", box=checked), views)
        if turn.kind != "zoom":
            return self.profile.error_turn(turn.error or "the box cannot be zoomed")["content"]
        reply = self.profile.reply(turn, "", views, self.grid)
        self._returned.extend(protocol.images_in([reply]))
        return reply["content"]


ResizeEnvironment.resize_image.__doc__ = _tool_docstring(protocol.RESIZE_TOOL)
ZoomEnvironment.resize_image.__doc__ = _tool_docstring(protocol.RESIZE_TOOL)
ZoomEnvironment.zoom_image.__doc__ = _tool_docstring(protocol.ZOOM_TOOL)
# A default lets a call without arguments reach the method (an error turn for zoom_image), while the schema,
# built from the signature, keeps the argument required as in the profile's schema.
for _method in (ResizeEnvironment.resize_image, ZoomEnvironment.resize_image, ZoomEnvironment.zoom_image):
    _signature = inspect.signature(_method)
    _method.__signature__ = _signature.replace(
        parameters=[p.replace(default=inspect.Parameter.empty) for p in _signature.parameters.values()]
    )


def environment_for(protocol: str | ProtocolProfile | None = None,
                    grid: PixelGrid | None = None) -> type[ResizeEnvironment]:
    """`ResizeEnvironment` answering with the turns of `protocol` (the class itself for `visionthink`); for a
    profile that offers `zoom_image`, a `ZoomEnvironment` cropping on `grid` (the processor's; required)."""
    profile = get_profile(protocol)
    if profile is VISIONTHINK:
        return ResizeEnvironment
    name = profile.name.replace("-", "_")
    if profile.offers_zoom:
        if grid is None:
            raise ValueError(f"protocol {profile.name!r} offers zoom_image: its environment needs the pixel grid")
        return type(f"ZoomEnvironment_{name}", (ZoomEnvironment,), {"profile": profile, "grid": grid})
    return type(f"ResizeEnvironment_{name}", (ResizeEnvironment,), {"profile": profile})


def tool_schema() -> dict[str, Any]:
    """The schema TRL renders for the environment's tool (must equal `protocol.RESIZE_TOOL`)."""
    from transformers.utils import get_json_schema

    return get_json_schema(ResizeEnvironment().resize_image)


_UNSAID = ("minItems", "maxItems")
"""JSON-schema keys a method's signature and docstring cannot give (`transformers.utils.get_json_schema`)."""


def _sayable(schema: Any) -> Any:
    """`schema` without the keys `get_json_schema` cannot produce (what a method can agree with)."""
    if isinstance(schema, dict):
        return {key: _sayable(value) for key, value in schema.items() if key not in _UNSAID}
    return schema


def tool_methods(environment: type[ResizeEnvironment]) -> list[str]:
    """The environment's tools as TRL lists them: every public function of the class but `reset`, by name."""
    return [name for name, _ in inspect.getmembers(environment, predicate=inspect.isfunction)
            if name not in ("reset", "get_reward") and not name.startswith("_")]


def environment_tools(environment: type[ResizeEnvironment]) -> list[dict[str, Any]]:
    """The schemas of the environment's tools, in TRL's order: the profile's own (`profile.template_tools()`),
    after checking that each method's `get_json_schema` says the same wherever it can, and that the methods are
    exactly the profile's tools in the profile's order (a ValueError otherwise). A profile whose prompt holds its
    tool block (`release`: no tools in the template) renders no schema: the methods' own are returned."""
    from transformers.utils import get_json_schema

    profile = environment.profile
    schemas = profile.template_tools()
    names = tool_methods(environment)
    instance = environment()
    if schemas is None:
        return [get_json_schema(getattr(instance, name)) for name in names]
    if names != [schema["function"]["name"] for schema in schemas]:
        raise ValueError(f"{environment.__name__} offers {names}, the profile {profile.name!r} "
                         f"{[schema['function']['name'] for schema in schemas]}")
    for name, schema in zip(names, schemas, strict=True):
        said = get_json_schema(getattr(instance, name))
        if said != _sayable(schema):
            raise ValueError(f"{environment.__name__}.{name}'s schema {said} differs from the profile's {schema}")
    return [dict(schema) for schema in schemas]


def use_profile_tools(trainer, environment: type[ResizeEnvironment]) -> None:
    """Make TRL render the profile's tool schemas: in the trainer's tool lists (TRL 1.16's `tools` and
    `_env_tools`, what it passes to the chat template and the response parser), each environment method is
    replaced by its schema from `environment_tools` where the two differ. TRL still calls the methods: it takes
    them from the environment instances of each batch. Where every schema is the method's own (`visionthink`,
    `release`) nothing changes."""
    from transformers.utils import get_json_schema

    schemas = dict(zip(tool_methods(environment), environment_tools(environment), strict=True))

    def rendered(tool):
        if callable(tool) and getattr(tool, "__name__", None) in schemas:
            schema = schemas[tool.__name__]
            return tool if get_json_schema(tool) == schema else schema
        return tool

    trainer.tools = [rendered(tool) for tool in trainer.tools]
    if getattr(trainer, "_env_tools", None) is not None:
        trainer._env_tools = {name: [rendered(tool) for tool in tools] for name, tools in trainer._env_tools.items()}


# ---------------------------------------------------------------- episodes


def split_turns(tokenizer, completion_ids: list[int]) -> list[list[int]]:
    """The assistant turns in a TRL completion (model tokens, end marker included), in order.

    The completion continues a prompt that ends with the assistant header, so a header is put in front
    and `tokens.assistant_mask` finds the turns; tool turns and later headers are left out.
    """
    import torch

    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    header = [start, *tokenizer.encode("assistant\n", add_special_tokens=False)]
    ids = header + list(completion_ids)
    mask = assistant_mask(_Wrap(tokenizer), torch.tensor(ids)).tolist()[len(header) :]
    turns: list[list[int]] = []
    previous = False
    for token, inside in zip(completion_ids, mask, strict=True):
        if inside:
            if not previous:
                turns.append([])
            turns[-1].append(token)
        previous = inside
    return turns


class _Wrap:
    """`assistant_mask` takes a processor; this lends it a bare tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def turn_text(tokenizer, ids: list[int]) -> str:
    """An assistant turn's text without its end marker (as the inference engine records it)."""
    stops = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    ids = list(ids)
    while ids and ids[-1] in stops:
        ids.pop()
    return tokenizer.decode(ids, skip_special_tokens=False)


def rollout_episode(
    processor,
    prompt: list[dict[str, Any]],
    completion: list[dict[str, Any]],
    completion_ids: list[int],
    high_res_image: Image.Image | None = None,
    protocol_profile: str | ProtocolProfile | None = None,
) -> protocol.Episode:
    """A TRL rollout as a protocol episode.

    `prompt` is the multimodal first turn (as `first_turn` makes it), `completion` TRL's completion messages
    (assistant, tool, assistant) and `completion_ids` the ids TRL trains on. Assistant texts come from the
    ids (TRL's parsed messages drop the think block and the tool-call text); tool turns from the messages.
    Under a zoom profile each turn goes through `profile.check_turn` as in the inference loop (a box wholly
    outside the low view is a malformed call), and the episode records the zoom (`zoomed`, `zoom_box`, the
    crop's visual tokens) by `protocol.make_episode`'s rule.
    """
    tokenizer = processor.tokenizer
    profile = get_profile(protocol_profile)
    if profile.offers_zoom and high_res_image is None:
        raise ValueError("a zoom profile's rollout needs high_res_image (its last image may be a crop)")
    texts = [turn_text(tokenizer, ids) for ids in split_turns(tokenizer, completion_ids)]
    tools = [message for message in completion if message.get("role") == "tool"]
    messages = [dict(m) for m in prompt]
    low = (protocol.images_in(messages) or [None])[0] if profile.offers_zoom else None
    views = Views(low=low, high=high_res_image) if low is not None and high_res_image is not None else None
    turns = []
    for index, text in enumerate(texts):
        messages.append(protocol.assistant_turn(text))
        turn = profile.parse_turn(text)
        turns.append(profile.check_turn(turn, views) if views is not None else turn)
        if index < len(tools):
            tool = tools[index]
            content = tool["content"] if isinstance(tool["content"], list) else [protocol.text_part(tool["content"])]
            messages.append({"role": "tool", "name": tool.get("name", protocol.TOOL_NAME), "content": content})
    grid = processor.grid
    reference = high_res_image or (protocol.images_in(messages) or [None])[-1]
    return protocol.make_episode(
        messages, turns, count_visual_tokens=lambda image: grid.tokens(*image.size),
        full_res_visual_tokens=grid.tokens(*reference.size) if reference is not None else 0,
        generated_tokens=sum(len(ids) for ids in split_turns(tokenizer, completion_ids)), mode="grpo",
    )
