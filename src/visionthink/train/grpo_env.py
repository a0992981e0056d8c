"""What GRPO rolls out on: synthetic prompts in TRL's format, the tools' environment, episodes.

- `prompt_dataset`: held-out-free train items of the synthetic world as a `datasets.Dataset`. Each row's
  `prompt` is `protocol.first_turn` with the image taken out into the `image` column (TRL puts it back
  in front of the user text, which is where `first_turn` has it); `high_res_image` feeds the environment.
- `environment_for(profile)`: TRL's `environment_factory` class, a `ToolEnvironment` with one method per tool of
  the profile, generated from the tool (name, docstring and signature give its schema). A call answers with the
  profile's tool turn, the one the inference loop gives; one call per rollout. TRL renders a tool from its
  method's signature and docstring, which cannot say `minItems`/`maxItems`: `use_profile_tools` makes the trainer
  render the profile's schemas instead (`environment_tools` checks that the methods agree with them otherwise).
- `rollout_episode`: a TRL rollout (prompt, completion messages, completion ids) as a `protocol.Episode`,
  cut into assistant turns with `tokens.assistant_mask`, the same rule SFT trains on.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import numpy as np
from PIL import Image

from visionthink import protocol
from visionthink.data import synth
from visionthink.images import PixelGrid, Views, clamp_to_pixel_range, load_image
from visionthink.profiles import VISIONTHINK, ProtocolProfile, get_profile
from visionthink.tokens import assistant_mask
from visionthink.tools import ToolCall

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
                   protocol: str | ProtocolProfile | None = None, pixel_range: tuple[int, int] | None = None,
                   world: str = "synth", frame_fraction: float = 0.0, crossed_wording_fraction: float = 0.0,
                   paired_wording_fraction: float = 0.0, carrier_wording_fraction: float = 0.0,
                   noise_word_fraction: float = 0.0):
    """The first `n` items of a split of a generated world (`synth.WORLDS`) as TRL prompt rows (`datasets.Dataset`,
    images stored as PNG); a `paired_wording_fraction` share of the label questions asked in the other label family's
    sentence forms with their own number (`synth.paired_wordings`), a `carrier_wording_fraction` share of the others
    in a carrier sentence form (`synth.carrier_wordings`), a `crossed_wording_fraction` share in the other
    label family's wording (`synth.CROSSED_WORDINGS`; the answer stays the scene's, as SFT's), then a `frame_fraction`
    share of the questions asked inside a training frame (`synth.frame_wording`), and a `noise_word_fraction` share
    given nonsense words (`synth.noise_wording`)."""
    import dataclasses

    import datasets

    items = synth.WORLDS[world](split, n, seed=seed)
    if paired_wording_fraction > 0:
        rng = np.random.default_rng([seed or 0, 27, 3])
        pairs = [bool(synth.paired_wordings(item.question_type)) and rng.random() < paired_wording_fraction
                 for item in items]
        items = [dataclasses.replace(item, question=synth.pick_paired(rng, item.question_type)) if paired else item
                 for item, paired in zip(items, pairs, strict=True)]
    else:
        pairs = [False] * len(items)
    if carrier_wording_fraction > 0:
        rng = np.random.default_rng([seed or 0, 27, 4])
        carried = [not paired and rng.random() < carrier_wording_fraction for paired in pairs]
        items = [dataclasses.replace(item, question=synth.pick_carrier(rng, item.question_type)) if carrier else item
                 for item, carrier in zip(items, carried, strict=True)]
    if crossed_wording_fraction > 0:
        rng = np.random.default_rng([seed or 0, 27, 2])
        asked = [synth.wording_type(rng, item.question_type, crossed_wording_fraction) for item in items]
        items = [item if kind == item.question_type
                 else dataclasses.replace(item, question=synth.pick_wording(rng, kind))
                 for item, kind in zip(items, asked, strict=True)]
    if frame_fraction > 0:
        rng = np.random.default_rng([seed or 0, 27, 1])
        items = [dataclasses.replace(item, question=synth.frame_wording(rng, item.question, frame_fraction))
                 for item in items]
    if noise_word_fraction > 0:
        rng = np.random.default_rng([seed or 0, 27, 5])
        items = [dataclasses.replace(item, question=synth.noise_wording(rng, item.question, noise_word_fraction))
                 for item in items]
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


# ---------------------------------------------------------------- the tools


class ToolEnvironment:
    """One rollout's world: the item's two views, and one public method per tool of `profile` (`environment_for`
    generates them from the tools; TRL exposes every public method but `reset` as a tool). One call per rollout,
    the protocol's one tool turn; a call answers as the inference loop's reply does (`ProtocolProfile.reply`)."""

    profile: ProtocolProfile = VISIONTHINK
    grid: PixelGrid | None = None
    """The processor's grid (a zoom's crop is cut on it)."""

    def __init__(self) -> None:
        self._low: Image.Image | None = None
        self._high: Image.Image | None = None
        self._calls = 0
        self._returned: list[Image.Image] = []

    def reset(self, high_res_image: Image.Image | None = None, image: Image.Image | None = None, **_: Any) -> None:
        """Start a rollout on a row (TRL passes the whole row): `image` is the low view the prompt shows,
        `high_res_image` the full one."""
        self._low, self._high = image, high_res_image
        self._calls = 0
        self._returned = []

    def _run(self, name: str, arguments: dict[str, Any]) -> list[dict[str, Any]]:
        """The content of the tool turn that answers a call of `name`."""
        self._calls += 1
        if self._calls > 1:
            return self.profile.error_turn("a tool was already called")["content"]
        if self._high is None:
            return self.profile.error_turn(f"no image for {name}")["content"]
        tool = self.profile.tool(name)
        checked, error = tool.check(arguments)
        if error is not None:
            return self.profile.error_turn(error)["content"]
        views = Views(low=self._low if self._low is not None else self._high, high=self._high)
        reply = self.profile.reply(protocol.Turn(tool.kind, call=ToolCall(name, checked)), "", views, self.grid)
        self._returned.extend(protocol.images_in([reply]))
        return reply["content"]

    @property
    def returned_images(self) -> list[Image.Image]:
        """Images the tools put into the conversation since `reset` (for tests and logs)."""
        return list(self._returned)


_PYTHON_TYPES = {"string": str, "number": float, "integer": int, "boolean": bool}


def _annotation(spec: dict[str, Any]) -> Any:
    """The Python type from which `transformers.utils.get_json_schema` writes `spec`'s type."""
    if spec.get("type") == "array":
        element = _PYTHON_TYPES[spec["items"]["type"]]
        return list[element]
    return _PYTHON_TYPES[spec["type"]]


def _tool_docstring(schema: dict[str, Any]) -> str:
    """A Google-style docstring from which `get_json_schema` rebuilds the schema's description and arguments."""
    function = schema["function"]
    lines = [function["description"], "", "Args:"]
    for name, spec in function["parameters"]["properties"].items():
        choices = f" (choices: {json.dumps(spec['enum'])})" if "enum" in spec else ""
        lines.append(f"    {name}: {spec['description']}{choices}")
    return "\n".join(lines) + "\n"


def tool_method(schema: dict[str, Any]):
    """The environment method of a tool: its name, docstring and signature say the schema to TRL. Every argument is
    required in the signature, as in the schema, yet a call that leaves one out still reaches the tool (an error
    turn)."""
    function = schema["function"]
    name, properties = function["name"], function["parameters"]["properties"]

    def call(self: ToolEnvironment, **arguments: Any):  # noqa: ANN202 - the schema has no return
        return self._run(name, arguments)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = _tool_docstring(schema)
    call.__annotations__ = {key: _annotation(spec) for key, spec in properties.items()}
    call.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, annotation=call.__annotations__[key])
           for key in properties])
    return call


def environment_for(protocol: str | ProtocolProfile | None = None,
                    grid: PixelGrid | None = None) -> type[ToolEnvironment]:
    """The environment of `protocol`'s tools, a method each; `grid` (the processor's) is required where a tool cuts
    crops (`zoom_image`)."""
    profile = get_profile(protocol)
    if grid is None and not all(tool.returns_full_view for tool in profile.tools):
        raise ValueError(f"protocol {profile.name!r} offers a tool that cuts the full view: its environment needs the "
                         "pixel grid")
    methods = {tool.name: tool_method(tool.schema) for tool in profile.tools}
    return type(f"ToolEnvironment_{profile.name.replace('-', '_')}", (ToolEnvironment,),
                {"profile": profile, "grid": grid, **methods})


SCHEMA_KEYS_A_SIGNATURE_CANNOT_SAY = ("minItems", "maxItems")
"""JSON-schema keys a method's signature and docstring cannot give (`transformers.utils.get_json_schema`)."""


def _what_a_signature_can_say(schema: Any) -> Any:
    """`schema` without the keys `get_json_schema` cannot produce (what a method can agree with)."""
    if isinstance(schema, dict):
        return {key: _what_a_signature_can_say(value) for key, value in schema.items()
                if key not in SCHEMA_KEYS_A_SIGNATURE_CANNOT_SAY}
    return schema


def tool_methods(environment: type[ToolEnvironment]) -> list[str]:
    """The environment's tools as TRL lists them: every public function of the class but `reset`, by name."""
    return [name for name, _ in inspect.getmembers(environment, predicate=inspect.isfunction)
            if name not in ("reset", "get_reward") and not name.startswith("_")]


def environment_tools(environment: type[ToolEnvironment]) -> list[dict[str, Any]]:
    """The schemas of the environment's tools in the profile's order (`profile.template_tools()`), after checking
    that the methods are exactly the profile's tools and that each method's `get_json_schema` says its schema
    wherever it can (a ValueError otherwise). A profile whose prompt holds its tool block (`release`: no tools in
    the template) renders no schema: the methods' own are returned."""
    from transformers.utils import get_json_schema

    profile = environment.profile
    schemas = profile.template_tools()
    names = tool_methods(environment)
    instance = environment()
    if schemas is None:
        return [get_json_schema(getattr(instance, name)) for name in profile.tool_names]
    if sorted(names) != sorted(schema["function"]["name"] for schema in schemas):
        raise ValueError(f"{environment.__name__} offers {names}, the profile {profile.name!r} "
                         f"{[schema['function']['name'] for schema in schemas]}")
    for schema in schemas:
        name = schema["function"]["name"]
        said = get_json_schema(getattr(instance, name))
        if said != _what_a_signature_can_say(schema):
            raise ValueError(f"{environment.__name__}.{name}'s schema {said} differs from the profile's {schema}")
    return [dict(schema) for schema in schemas]


def use_profile_tools(trainer, environment: type[ToolEnvironment]) -> None:
    """Make TRL render the profile's tool block: in the trainer's tool lists (TRL 1.16's `tools` and `_env_tools`,
    what it passes to the chat template and the response parser), each environment method is replaced by its
    schema from `environment_tools` where the two differ, and the methods (which TRL lists by name) are put in the
    profile's order. TRL still calls the methods: it takes them from the environment instances of each batch."""
    from transformers.utils import get_json_schema

    profile = environment.profile
    schemas = dict(zip(profile.tool_names, environment_tools(environment), strict=True))

    def name_of(tool) -> str | None:
        return getattr(tool, "__name__", None) if callable(tool) else tool.get("function", {}).get("name")

    def rendered(tool):
        if callable(tool) and getattr(tool, "__name__", None) in schemas:
            schema = schemas[tool.__name__]
            return tool if get_json_schema(tool) == schema else schema
        return tool

    def in_profile_order(tools: list) -> list:
        out = [rendered(tool) for tool in tools]
        places = [i for i, tool in enumerate(out) if name_of(tool) in schemas]
        ordered = sorted((out[i] for i in places), key=lambda tool: profile.tool_names.index(name_of(tool)))
        for place, tool in zip(places, ordered, strict=True):
            out[place] = tool
        return out

    trainer.tools = in_profile_order(trainer.tools)
    if getattr(trainer, "_env_tools", None) is not None:
        trainer._env_tools = {name: in_profile_order(tools) for name, tools in trainer._env_tools.items()}


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
    mask = assistant_mask(_TokenizerAsProcessor(tokenizer), torch.tensor(ids)).tolist()[len(header) :]
    turns: list[list[int]] = []
    previous = False
    for token, inside in zip(completion_ids, mask, strict=True):
        if inside:
            if not previous:
                turns.append([])
            turns[-1].append(token)
        previous = inside
    return turns


class _TokenizerAsProcessor:
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
    With `high_res_image` each turn goes through `profile.check_turn` as in the inference loop (a zoom box wholly
    outside the low view is a malformed call); the episode records the calls that ran (`protocol.make_episode`).
    """
    tokenizer = processor.tokenizer
    profile = get_profile(protocol_profile)
    if high_res_image is None and not all(tool.returns_full_view for tool in profile.tools):
        raise ValueError(f"a {profile.name} rollout needs high_res_image (its last image may be a crop)")
    texts = [turn_text(tokenizer, ids) for ids in split_turns(tokenizer, completion_ids)]
    tools = [message for message in completion if message.get("role") == "tool"]
    messages = [dict(m) for m in prompt]
    low = (protocol.images_in(messages) or [None])[0]
    views = Views(low=low, high=high_res_image) if low is not None and high_res_image is not None else None
    turns = []
    for index, text in enumerate(texts):
        messages.append(protocol.assistant_turn(text))
        turn = profile.parse_turn(text)
        turns.append(profile.check_turn(turn, views) if views is not None else turn)
        if index < len(tools):
            tool = tools[index]
            content = tool["content"] if isinstance(tool["content"], list) else [protocol.text_part(tool["content"])]
            messages.append({"role": "tool", "name": tool.get("name", profile.tools[0].name), "content": content})
    grid = processor.grid
    reference = high_res_image or (protocol.images_in(messages) or [None])[-1]
    return protocol.make_episode(
        messages, turns, count_visual_tokens=lambda image: grid.tokens(*image.size),
        full_res_visual_tokens=grid.tokens(*reference.size) if reference is not None else 0,
        generated_tokens=sum(len(ids) for ids in split_turns(tokenizer, completion_ids)), mode="grpo",
    )
