"""The server's defaults live in one place: `ServeConfig` (the `serve` subcommand reads them there)."""

from __future__ import annotations

import dataclasses

from visionthink.cli import SERVE_LIMITS, build_parser
from visionthink.serve.config import ServeConfig


def test_serve_flags_default_to_serve_config():
    args = build_parser().parse_args(["serve"])
    defaults = ServeConfig()
    assert SERVE_LIMITS
    for _, field, _, _ in SERVE_LIMITS:
        assert getattr(args, field) == getattr(defaults, field), field


def test_every_serve_flag_is_a_serve_config_field():
    fields = {field.name for field in dataclasses.fields(ServeConfig)}
    assert {field for _, field, _, _ in SERVE_LIMITS} <= fields
    args = build_parser().parse_args(["serve", "--max-image-pixels", "1000", "--header-timeout", "2.5"])
    assert (args.max_image_pixels, args.header_timeout) == (1000, 2.5)
