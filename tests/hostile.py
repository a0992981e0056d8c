"""Hostile inputs that are cheap to send and expensive to parse or decode (tests, benchmarks/abuse.py)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan of a JPEG: its SOS segment and the entropy-coded data after it."""
    spans, position = [], 0
    while (start := data.find(b"\xff\xda", position)) >= 0:
        end = start + 2 + int.from_bytes(data[start + 2:start + 4], "big")
        while True:  # entropy-coded data ends at the first marker that is neither stuffing nor a restart
            end = data.find(b"\xff", end)
            if data[end + 1] not in (0x00, *range(0xD0, 0xD8)):
                break
            end += 2
        spans.append((start, end))
        position = end
    return spans


def repeated_scan_jpeg(side: int = 2000, repeats: int = 5000) -> bytes:
    """A progressive JPEG whose last scan is repeated `repeats` times (libjpeg warns and redoes each one)."""
    data = jpeg(Image.linear_gradient("L").resize((side, side)).convert("RGB"), progressive=True, quality=30)
    start, end = _scans(data)[-1]
    return data[:end] + data[start:end] * repeats + data[end:]


def fill_padded_jpeg(fill: int = 2_000_000) -> bytes:
    """A valid JPEG with `fill` 0xFF fill bytes before its first scan (legal padding, parsed byte by byte)."""
    data = jpeg(Image.new("RGB", (64, 64), (120, 30, 30)))
    start = data.find(b"\xff\xda")
    return data[:start] + b"\xff" * fill + data[start:]


def app_segments_jpeg(segments: int = 500_000) -> bytes:
    """A JPEG with `segments` empty APP15 segments after its SOI."""
    data = jpeg(Image.new("RGB", (64, 64), (120, 30, 30)))
    return data[:2] + b"\xff\xef\x00\x02" * segments + data[2:]


def table_segments_jpeg(segments: int = 300) -> bytes:
    """A JPEG with `segments` quantization-table segments of 1,000 tables each (Pillow reads each table in Python)."""
    data = jpeg(Image.new("RGB", (64, 64), (120, 30, 30)))
    payload = (b"\x00" + bytes(range(1, 65))) * 1000
    segment = b"\xff\xdb" + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:2] + segment * segments + data[2:]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def private_chunks_png(chunks: int = 300_000) -> bytes:
    """A PNG with `chunks` empty private chunks between its IHDR and its image data."""
    data = png(Image.new("RGB", (64, 64), (30, 120, 30)))
    ihdr_end = 8 + 25
    return data[:ihdr_end] + _chunk(b"prIv", b"") * chunks + data[ihdr_end:]


def comment_blocks_gif(blocks: int = 200_000) -> bytes:
    """A GIF whose first image follows a comment extension of `blocks` one-byte sub-blocks."""
    buffer = io.BytesIO()
    Image.new("P", (64, 64), 1).save(buffer, format="GIF")
    data = buffer.getvalue()
    first = data.index(b",", 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 13))
    return data[:first] + b"\x21\xfe" + b"\x01x" * blocks + b"\x00" + data[first:]


def ico_holding_png(side: int = 8000) -> bytes:
    """An ICO whose one entry is a `side` x `side` 1-bit PNG (Pillow decodes an ICO in full when opening it)."""
    inner = png(Image.new("1", (side, side), 1))
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(inner), 22) + inner


def icns_holding_png(side: int = 8000) -> bytes:
    """An ICNS that declares a 128x128 icon but holds a `side` x `side` PNG."""
    inner = png(Image.new("1", (side, side), 1))
    entry = b"ic07" + struct.pack(">I", 8 + len(inner)) + inner
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def eps_comments(lines: int = 200_000) -> bytes:
    """An EPS file with many comment lines before its bounding box."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"%%x\n" * lines + b"%%BoundingBox: 0 0 10 10\n"
