"""One chat completion from its raw body to its reply: parse, check, fetch and decode images, count
tokens, then queue the model work. Fetching and decoding run in bounded thread pools of their own,
so slow remote hosts cannot starve the decoding of other requests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import replace

from PIL import Image

from visionthink import protocol
from visionthink.engines.base import check_unit
from visionthink.engines.factory import is_local
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.engines.remote import RemoteEngineError
from visionthink.engines.transformers_engine import Request as EngineRequest
from visionthink.engines.transformers_engine import TransformersEngine
from visionthink.errors import VisionThinkError
from visionthink.images import ALLOWED_FORMATS, check_encoded, load_image_within, make_views
from visionthink.modes import MODES, own_mode
from visionthink.profiles import ProtocolProfile, get_profile, missing_tools_error
from visionthink.serve.batcher import Batcher
from visionthink.serve.checks import ChatRequest, SpecialTokens, chat_request, check_structure, check_unicode
from visionthink.serve.config import ServeConfig
from visionthink.serve.context import TokenBudget, context_length
from visionthink.serve.decoder import DecodeWorkers
from visionthink.serve.errors import ApiError
from visionthink.serve.fetch import data_url_bytes, fetch_remote_image, is_remote
from visionthink.serve.replies import Reply, raw_reply, visionthink_reply
from visionthink.serve.schemas import parse_chat_request
from visionthink.serve.worker import ModelWorker, RawJob, VisionThinkJob

INLINE_PARSE_BYTES = 1 << 20
"""Bodies up to this size are parsed on the event loop (a few ms), so they never queue behind large ones."""
HEAVY_DECODE_PIXELS = 2_000_000
"""Images with more pixels than this decode in worker processes (`serve.decoder`), killed at `decode_timeout` or when
their request is over, and never delay the decoding of small ones (which runs in threads)."""
HEAVY_DECODE_STEPS = 1000
"""So do images whose structure costs Pillow more Python steps than this (`images.check_encoded`): in a thread they
would hold the GIL (a PNG of 20,000 chunks, 0.3 s)."""

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""Where JSON text can spell a lone surrogate (raw UTF-8 cannot: decoding refuses it)."""


def parse_json_body(raw: bytes, max_values: int | None = None) -> object:
    """The parsed body; with `max_values`, one with more objects, arrays and list items (counted in its bytes: an
    upper bound) is refused before it is parsed."""
    if not raw:
        raise ApiError(400, "request body is empty; expected a JSON object", "invalid_json")
    if max_values is not None:
        values = raw.count(b"{") + raw.count(b"[") + raw.count(b",")
        if values > max_values:
            raise ApiError(400, f"request body holds up to {values} JSON values, over the limit of {max_values}",
                           "request_too_complex")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:  # also a number over Python's 4,300 digits
        raise ApiError(400, f"request body is not valid JSON ({str(error)[:200]})", "invalid_json") from None


def declared_pixels(data: bytes) -> tuple[int, int]:
    """Pixels an encoded image says it has (its header only; 0 when unreadable: decoding reports why), and the Python
    steps its structure costs Pillow. An image refused by `images.check_encoded` (format, structure) is refused here,
    before Pillow parses it; one of many steps is not parsed here either (its worker process reads its size)."""
    try:
        steps = check_encoded(data)
    except VisionThinkError as error:
        raise ApiError(400, str(error), "invalid_image") from None
    if steps > HEAVY_DECODE_STEPS:
        return 0, steps
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                return image.width * image.height, steps
    except Exception:  # noqa: BLE001 - any failure is reported by the decode that follows
        return 0, steps


class ChatService:
    """The work behind `POST /v1/chat/completions` for one engine."""

    def __init__(self, engine: TransformersEngine, default_sampling: SamplingConfig, batcher: Batcher,
                 config: ServeConfig, context: int | None = None,
                 profile_for: Callable[[str], ProtocolProfile | None] | None = None):
        self.engine = engine
        self.local = is_local(engine)
        """The model runs here (raw mode and tool thresholds need it); else episodes go to a vLLM or remote engine."""
        if config.tool_threshold is not None:
            check_default_threshold(config.tool_threshold, self.local)
        self.reads_confidence = bool(getattr(engine, "records_confidence", False))
        """The engine knows each answer's confidence (every engine of `engines.factory`), so unsure answers can be
        escalated."""
        if config.escalate_below is not None:
            check_default_threshold(config.escalate_below, self.reads_confidence, "answer-confidence threshold",
                                    "an engine that reads token probabilities")
        self.grid = engine.processor.grid
        self.default_sampling = default_sampling
        self.batcher = batcher
        if config.default_mode is None:
            config = replace(config, default_mode=own_mode(get_profile(getattr(engine, "protocol", None))))
        self.config = config
        context = context if context is not None else context_length(engine.model.config)
        self.budget = TokenBudget(engine.processor, context, getattr(engine, "protocol", None))
        self.profile_for = profile_for or ModelWorker(engine).profile_for
        """The profile a VisionThink mode runs on (`ModelWorker.profile_for`; None: no served model offers it)."""
        self.special = SpecialTokens.of(engine.processor.tokenizer)
        self.decode_pool = concurrent.futures.ThreadPoolExecutor(config.decode_concurrency, "visionthink-decode")
        heavy = max(1, config.decode_concurrency // 2)
        self.heavy_pool = concurrent.futures.ThreadPoolExecutor(heavy, "visionthink-decode-large")
        self.decoders = DecodeWorkers(heavy, config.decode_timeout)
        self.fetch_pool = concurrent.futures.ThreadPoolExecutor(config.remote_fetch_concurrency, "visionthink-fetch")

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.heavy_pool.shutdown(wait=False, cancel_futures=True)
        self.decoders.close()
        self.fetch_pool.shutdown(wait=False, cancel_futures=True)

    async def complete(self, raw: bytes) -> tuple[ChatRequest, Reply]:
        if len(raw) <= INLINE_PARSE_BYTES:
            chat = self.parse(raw)
        else:  # a 20 MB body takes a while: off the event loop
            chat = await self._in(self.decode_pool, self.parse, raw)
        del raw  # the request holds its parsed form from here on, not both
        if chat.mode == "raw":
            return chat, await self._raw(chat)
        return chat, await self._visionthink(chat)

    def parse(self, raw: bytes) -> ChatRequest:
        """The checked request of a raw body (JSON, valid Unicode, the request model, the server's limits)."""
        body = parse_json_body(raw, self.config.max_json_values)
        if isinstance(body, dict):
            check_structure(body, self.config)
        if _SURROGATE_ESCAPE.search(raw):
            check_unicode(body)
        chat = chat_request(parse_chat_request(body), self.config, self.default_sampling, self.special)
        if chat.mode == "raw" and not self.local:
            raise ApiError(400, "this server runs its model through another server or vLLM: requests with tools (raw "
                           "mode) go to the model's own server", "unsupported_parameter", param="tools")
        if chat.tool_threshold is not None and not self.local:
            raise ApiError(400, "visionthink_tool_threshold needs the model's probabilities, which only a server "
                           "running it through transformers reads (this one runs it through another server or vLLM); "
                           "send the request without it", "unsupported_parameter", param="visionthink_tool_threshold")
        if chat.escalate_below is not None and not self.reads_confidence:
            raise ApiError(400, "visionthink_escalate_below needs the model's token probabilities, which this "
                           "server's engine does not read; send the request without it", "unsupported_parameter",
                           param="visionthink_escalate_below")
        if chat.mode in MODES and self.profile_for(chat.mode) is None:
            mode, served = MODES[chat.mode], get_profile(getattr(self.engine, "protocol", None))
            raise ApiError(400, f"visionthink_{missing_tools_error(mode.name, mode.tools, served)}; use "
                           "another mode", "invalid_parameter", param="visionthink_mode")
        return chat

    async def _visionthink(self, chat: ChatRequest) -> Reply:
        image = (await self.images([chat.image_url]))[0]
        try:
            self.grid.snap(*image.size)
        except VisionThinkError as error:
            raise ApiError(400, str(error), "invalid_image") from None
        await self._in(self.decode_pool, self.budget.visionthink, chat.question, image.size, chat.mode,
                       chat.sampling.max_new_tokens, self.profile_for(chat.mode))
        try:
            episode = await self.batcher.submit(chat.key, VisionThinkJob(
                EngineRequest(image, chat.question, tool_threshold=chat.tool_threshold,
                              escalate_below=chat.escalate_below)))
        except RemoteEngineError as error:
            raise ApiError(502, f"the model's server failed: {error}", "upstream_error") from None
        views = await self._in(self.decode_pool, make_views, image, self.grid) if episode.zoomed else None
        return visionthink_reply(episode, chat, self.engine.stop_ids, views, self.grid)

    async def _raw(self, chat: ChatRequest) -> Reply:
        images = iter(await self.images(chat.image_urls))
        messages = [{**message, "content": [protocol.image_part(next(images)) if part["type"] == "image_url"
                                            else part for part in message["content"]]}
                    for message in chat.messages]
        try:
            await self._in(self.decode_pool, self.budget.raw, messages, chat.tools, chat.sampling.max_new_tokens)
        except RecursionError:
            raise ApiError(400, "the chat template cannot render this request (nested too deep)", "too_deep",
                           param="tools") from None
        job = RawJob(messages, chat.tools, chat.ban_tool_calls, chat.banned_ids, chat.logprobs)
        result = await self.batcher.submit(chat.key, job)
        return raw_reply(result, chat)

    async def images(self, urls: list[str]) -> list[Image.Image]:
        """Decoded images, after the pixel limits were checked on all of their headers."""
        encoded = [await self._bytes(url) for url in urls]
        stop = threading.Event()
        try:
            declared = [await self._in(self.decode_pool, declared_pixels, data) for data in encoded]
            apart = [size > HEAVY_DECODE_PIXELS or steps > HEAVY_DECODE_STEPS for size, steps in declared]
            sizes = [await self._in(self.heavy_pool, self._pixels_apart, data, stop) if steps > HEAVY_DECODE_STEPS
                     else size for data, (size, steps) in zip(encoded, declared, strict=True)]
            for data, size, elsewhere in zip(encoded, sizes, apart, strict=True):
                if size > self.config.max_image_pixels and elsewhere:
                    raise ApiError(400, f"image data: {size / 1e6:.1f} megapixels is over the limit of "
                                   f"{self.config.max_image_pixels / 1e6:.1f} megapixels", "invalid_image")
                if size > self.config.max_image_pixels:
                    await self._in(self.decode_pool, self._decode, data)  # refuses it, saying why, before decoding
            if sum(sizes) > self.config.max_request_pixels:
                raise ApiError(400, f"the request's images hold {sum(sizes) / 1e6:.1f} megapixels, over the limit of "
                               f"{self.config.max_request_pixels / 1e6:.1f} per request", "too_many_pixels",
                               param="messages")
            images = []
            for data, elsewhere in zip(encoded, apart, strict=True):
                if elsewhere:
                    images.append(await self._in(self.heavy_pool, self._decode_apart, data, stop))
                else:
                    images.append(await self._in(self.decode_pool, self._decode, data))
        finally:
            stop.set()  # a worker still busy for this request (timed out, client gone) is killed
        return images

    async def _bytes(self, url: str) -> bytes:
        if not is_remote(url):
            return await self._in(self.decode_pool, data_url_bytes, url)
        if not self.config.allow_remote_images:
            raise ApiError(400, "remote image URLs are disabled on this server; send the image as a data URL "
                           "(data:image/png;base64,...)", "remote_images_disabled")
        return await self._in(self.fetch_pool, fetch_remote_image, url, self.config)

    def _decode(self, data: bytes) -> Image.Image:
        try:
            return load_image_within(data, self.grid.max_pixels, factor=2 * self.grid.factor,
                                     max_input_pixels=self.config.max_image_pixels)
        except VisionThinkError as error:
            raise ApiError(400, str(error), "invalid_image") from None

    def _pixels_apart(self, data: bytes, stop: threading.Event) -> int:
        try:
            return self.decoders.pixels(data, stop)
        except VisionThinkError as error:
            raise ApiError(400, str(error), "invalid_image") from None

    def _decode_apart(self, data: bytes, stop: threading.Event) -> Image.Image:
        try:
            return self.decoders.decode(data, self.grid.max_pixels, 2 * self.grid.factor, self.config.max_image_pixels,
                                        stop)
        except VisionThinkError as error:
            raise ApiError(400, str(error), "invalid_image") from None

    @staticmethod
    async def _in(pool: concurrent.futures.Executor, function, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)


def check_default_threshold(threshold: float, able: bool, what: str = "tool threshold",
                            engines: str = "the transformers engine") -> None:
    """Refuse a server default threshold (`what`) outside [0, 1], or on an engine that cannot honour one (`able`
    False; `engines` names those that can)."""
    try:
        check_unit(threshold, what)
    except ValueError as error:
        raise VisionThinkError(str(error)) from None
    if not able:
        raise VisionThinkError(f"a {what} needs {engines} (it reads the model's probabilities); this engine cannot "
                               "honour one")
