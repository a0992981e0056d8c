"""YAML recipes: one section per trainer, loaded into that trainer's config dataclass."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from visionthink.errors import VisionThinkError

Config = TypeVar("Config")


def load_recipe(path: str | Path | None, section: str, config_class: type[Config],
                overrides: list[str] | None = None) -> Config:
    """`config_class` filled from `section` of the YAML file at `path`, then from `key=value` overrides.

    Nested dataclass fields take nested mappings (or dotted keys in overrides: `model.text_layers=6`).
    A key the config does not have is an error; a config may name its renamed keys in a
    `renamed_fields` mapping (old name -> new name) for the message.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise VisionThinkError(f"{path}: recipe file not found")
        document = yaml.safe_load(path.read_text()) or {}
        if section not in document:
            raise VisionThinkError(f"{path}: recipe has no `{section}:` section")
        values = dict(document[section] or {})
    for override in overrides or []:
        key, sep, raw = override.partition("=")
        if not sep:
            raise VisionThinkError(f"override {override!r} is not key=value")
        target = values
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(raw)
    return _build(config_class, values)


def _build(config_class: type[Config], values: dict[str, Any]) -> Config:
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        renamed = getattr(config_class, "renamed_fields", {})
        names = [f"{name} (now {renamed[name]})" if name in renamed else name for name in unknown]
        raise VisionThinkError(f"unknown {config_class.__name__} field(s): {', '.join(names)}")
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _build(hint, value)
        kwargs[name] = _coerce(config_class.__name__, name, hint, value)
    try:
        return config_class(**kwargs)
    except ValueError as error:  # the config's own checks (e.g. a value out of range)
        raise VisionThinkError(f"{config_class.__name__}: {error}") from None


def _coerce(owner: str, name: str, hint: Any, value: Any) -> Any:
    """`value` as the field's scalar type: YAML reads `3e-5` as a string, and `1` where a float is due."""
    scalar = [t for t in typing.get_args(hint) if t is not type(None)] if typing.get_origin(hint) else [hint]
    if value is None or len(scalar) != 1 or scalar[0] not in (int, float) or isinstance(value, bool):
        return value
    kind = scalar[0]
    try:
        number = float(value) if kind is float else int(value)
    except (TypeError, ValueError):
        raise VisionThinkError(f"{owner}.{name}: expected {kind.__name__}, got {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise VisionThinkError(f"{owner}.{name}: expected int, got {value!r}")
    return number


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
