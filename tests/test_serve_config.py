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


def test_allowed_hosts_and_body_limits_from_the_command_line():
    args = build_parser().parse_args(["serve", "--allowed-host", "vt.example", "--allowed-host", "box",
                                      "--body-timeout", "3", "--max-inflight-body-bytes", "1000000"])
    assert args.allowed_host == ["vt.example", "box"]
    assert (args.body_timeout, args.max_inflight_body_bytes) == (3.0, 1_000_000)
    assert build_parser().parse_args(["serve"]).allowed_host == []
