"""An OpenAI-compatible server that applies VisionThink, and a web page on the same server: the routes.

Endpoints:

- `POST /v1/chat/completions`, in one of two modes:
  - **VisionThink** (the default): the server runs the whole protocol. The image is the first
    `image_url` of the user's messages, the question is the text of the last user message
    (the client's system prompt and earlier turns are not used: the protocol has its own).
    The model sees the low-resolution view first; if it calls `resize_image`, the server
    answers the call with the full-resolution view and the model answers. The reply's
    `content` is the final answer (the raw last turn when the model gave no `<answer>`),
    `reasoning_content` the `<think>` text, `choices[0].message.resized` and
    `visionthink.resized` whether it asked for full resolution, and `usage` adds
    `visual_tokens` and `full_res_visual_tokens`. `finish_reason` is "length" when
    `max_tokens` cut the last turn. `visionthink_mode` picks `visionthink` (default), `low`,
    `full`, or `zoom`: the model may also call `zoom_image` on a box of the low-res view and
    gets that region at full resolution (run on the zoom variant of the served protocol; 400
    under `--protocol release`, which has none). `visionthink.action` says what it did
    ("answer", "resize" or "zoom"); after a zoom, `visionthink.zoom_box` is the box it asked
    for (low-res pixels) and `visionthink.zoom_region` the crop it got (full-res pixels).
    `visionthink_return_image: true` adds the low-res view the model saw as a data URL
    (`visionthink.low_res_image`) and, after a zoom, the crop (`visionthink.zoom_image`).
  - **Raw** (the request carries `tools`, or `visionthink_mode: "raw"`): the server is a plain
    VLM, for clients that run the tool loop themselves (`visionthink.engines.remote`). The given
    messages and tools are rendered with the model's chat template and one assistant turn is
    generated. `<tool_call>` blocks come back OpenAI-style in `tool_calls` (finish_reason
    `tool_calls`) with the text before them as `content`; `tool_choice: "none"` forbids them.
    Images may appear in user and tool messages.
- `stream: true` sends the same reply as server-sent events (`data: {chunk}` ... `data: [DONE]`);
  the episode is computed first, so the concatenated deltas equal the non-streaming reply.
- `visionthink_tool_threshold` (a number in [0, 1], modes `visionthink` and `zoom`): the model calls its tool when
  its probability of doing so at the first-turn decision is at least this; absent: the server's default
  (`ServeConfig.tool_threshold`), null: the greedy decision. `visionthink.p_tool` is that probability and
  `visionthink.tool_threshold` the threshold used. Only a model run here (the transformers engine) honours one: on
  the vllm or remote engine a request with one is refused (400).
- `visionthink_escalate_below` (a number in [0, 1], the same modes): a first-turn answer the model gave less
  confidence than this (the least probability of its answer's tokens) is withdrawn and `resize_image` called in
  its place; absent: the server's default (`ServeConfig.escalate_below`), null: answers stand.
  `visionthink.answer_confidence` and `visionthink.escalated` say what happened. Every engine honours one (the
  remote engine asks its upstream server for `logprobs`).
- `logprobs: true` (raw mode, without `stream`): `choices[0].logprobs.content` holds each written token's text and
  log-probability (OpenAI's form, `top_logprobs` empty); the remote engine reads its answer confidence from it.
- `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`, `GET /` (the web page), and its example gallery:
  `GET /examples` (the list: file, url, question, ...) and `GET /examples/{file}` (`serve.examples`).

Limits (`ServeConfig`): body size and the bytes of bodies held at once, image formats (PNG,
JPEG, WebP, GIF) and their structure, pixels per image and per request (checked from the image
headers before decoding; images over the model's pixel grid are shrunk while decoded, large ones
in worker processes killed at a deadline), images per request, a request's structure (JSON
values, messages, parts, tool calls, tools, nesting), prompt tokens after templating against the
model's context, a per-request timeout (work whose caller timed out or disconnected is
stopped), an optional Bearer key on `/v1/*` (without one, only IP, localhost and allowed Host
names and same-origin POSTs), a queue bound, and connection limits (`serve.server`). Every refusal
is a 4xx with an OpenAI-style body `{"error": {"message", "type", "code", "param"}}`; an
unexpected failure is a JSON 500 for that request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from visionthink.engines.transformers_engine import TransformersEngine
from visionthink.errors import VisionThinkError
from visionthink.serve.batcher import Batcher, QueueFull
from visionthink.serve.config import ServeConfig
from visionthink.serve.errors import ApiError, error_body
from visionthink.serve.examples import Example, gallery, load_examples
from visionthink.serve.limits import BodyLimitMiddleware, return_large_buffers
from visionthink.serve.replies import Reply, completion_chunks, completion_json
from visionthink.serve.security import HostGuardMiddleware, page_policy, require_api_key
from visionthink.serve.server import BODY_TIMED_OUT
from visionthink.serve.service import ChatService
from visionthink.serve.worker import ModelWorker

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    """What the routes share: settings, the request service, the batcher and counters for `/health`."""

    config: ServeConfig
    service: ChatService
    batcher: Batcher
    page: str
    examples: dict[str, Example] = field(default_factory=dict)
    """The web page's example gallery, by file name (`serve.examples`)."""
    started: float = field(default_factory=time.time)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("requests", "refused", "timeouts", "disconnects", "errors"), 0))

    def model_card(self) -> dict:
        return {"id": self.config.model_name, "object": "model", "created": int(self.started),
                "owned_by": "visionthink"}


def server_state(request: HttpRequest) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]


public = APIRouter()
api = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@public.get("/", response_class=HTMLResponse)
async def index(state: State):
    return HTMLResponse(state.page, headers={"Content-Security-Policy": page_policy(state.page),
                                             "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"})


@public.get("/examples")
async def examples(state: State):
    return {"examples": gallery(state.examples)}


@public.get("/examples/{name}")
async def example_image(name: str, state: State):
    example = state.examples.get(name)
    if example is None:
        raise ApiError(404, f"no example {name[:80]!r} on this server", "not_found", "not_found_error")
    return Response(example.data, media_type=example.media_type, headers={"Cache-Control": "public, max-age=3600"})


@public.get("/health")
async def health(state: State):
    return {"status": "ok", "model": state.config.model_name, "uptime_s": round(time.time() - state.started, 1),
            "context_tokens": state.service.budget.context, "waiting": state.batcher.waiting, **state.counters,
            "batching": state.batcher.stats.as_dict(), "decoders_killed": state.service.decoders.killed}


@api.get("/models")
async def models(state: State):
    return {"object": "list", "data": [state.model_card()]}


@api.get("/models/{model_id:path}")
async def model(model_id: str, state: State):
    if model_id != state.config.model_name:
        raise ApiError(404, f"model {model_id[:80]!r} is not served here; this server serves "
                       f"{state.config.model_name!r}", "model_not_found", param="model")
    return state.model_card()


@api.post("/chat/completions")
async def chat_completions(request: HttpRequest, state: State):
    """Read the body within the timeout, then answer unless the timeout runs out or the client leaves."""
    config, counters = state.config, state.counters
    counters["requests"] += 1
    work = gone = None
    try:
        async with asyncio.timeout(config.timeout):
            work = asyncio.ensure_future(state.service.complete(await _body(request)))
            gone = asyncio.ensure_future(_client_gone(request))
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            counters["disconnects"] += 1
            raise ApiError(499, "the client closed the connection", "client_closed_request")
        chat, reply = work.result()
    except ClientDisconnect:
        if request.scope.get(BODY_TIMED_OUT):  # the connection was cut for sending its body too slowly
            counters["timeouts"] += 1
            raise ApiError(408, "the request body came too slowly", "body_timeout", "timeout_error") from None
        counters["disconnects"] += 1
        raise ApiError(499, "the client closed the connection", "client_closed_request") from None
    except TimeoutError:
        counters["timeouts"] += 1
        raise ApiError(408, f"request took longer than the server's limit of {config.timeout:g} s",
                       "request_timeout", "timeout_error") from None
    except QueueFull as error:
        raise ApiError(429, f"server is busy ({error}); retry later", "server_busy", "rate_limit_error") from None
    except VisionThinkError as error:
        raise ApiError(400, str(error), "invalid_request") from None
    except ApiError:
        raise
    except Exception as error:  # noqa: BLE001 - one request's failure is its own JSON 500
        counters["errors"] += 1
        raise _internal_error(error) from None
    finally:
        for task in (work, gone):
            if task is not None and not task.done():
                task.cancel()  # cancelling the work cancels its queued or running model job
    return _respond(reply, chat.stream, chat.include_usage_chunk, config.model_name)


async def _body(request: HttpRequest) -> bytes:
    """The request body, not kept on the request (the service drops it once parsed)."""
    chunks = [chunk async for chunk in request.stream()]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _client_gone(request: HttpRequest) -> None:
    """Return once the client has closed its connection (call after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _respond(reply: Reply, stream: bool, usage_chunk: bool, model: str):
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if stream:
        return StreamingResponse(completion_chunks(reply, model, completion_id, created, usage_chunk),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(completion_json(reply, model, completion_id, created))


# ---------------------------------------------------------------- errors


async def on_api_error(request: HttpRequest, error: ApiError):
    request.app.state.server.counters["refused"] += 1
    return error.response()


async def on_http_error(_request: HttpRequest, error: StarletteHTTPException):
    kinds = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}
    kind, code = kinds.get(error.status_code, ("invalid_request_error", "http_error"))
    return JSONResponse(error_body(str(error.detail), kind, code), error.status_code)


async def on_unexpected(request: HttpRequest, error: Exception):
    request.app.state.server.counters["errors"] += 1
    return _internal_error(error).response()


def _internal_error(error: Exception) -> ApiError:
    log.error("request failed: %s: %s", type(error).__name__, error, exc_info=error)
    return ApiError(500, f"the server failed on this request ({type(error).__name__}); other requests are not "
                    "affected", "internal_error", "server_error")


# ---------------------------------------------------------------- the app


def create_app(engine: TransformersEngine, config: ServeConfig | None = None,
               zoom_engine: TransformersEngine | None = None, context: int | None = None) -> FastAPI:
    """The ASGI app serving `engine` (its batch size is raised to `config.max_batch`). `zoom_engine`, another model
    (a zoom model), runs the modes whose tools `engine`'s profile lacks (`serve.worker.ModelWorker.engine_for`).
    `engine` may also be a `VLLMEngine` or `RemoteEngine` (with a processor); `context` is then its model's context in
    tokens (a local model's is read from it)."""
    config = config or ServeConfig()
    return_large_buffers()
    for served in (engine, zoom_engine):
        if served is not None:
            served.batch_size = max(served.batch_size, config.max_batch)
    worker = ModelWorker(engine, zoom_engine)
    batcher = Batcher(worker, max_batch=config.max_batch, wait_ms=config.batch_wait_ms, max_queue=config.max_queue)
    service = ChatService(engine, worker.default_sampling, batcher, config, context, profile_for=worker.profile_for)
    page = resources.files("visionthink.serve").joinpath("page.html").read_text(encoding="utf-8")
    state = ServerState(config, service, batcher, page, load_examples(config.examples_dir))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()
        service.close()

    app = FastAPI(title="VisionThink", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    app.state.config = config
    app.state.engine = engine
    app.state.worker = worker
    app.include_router(public)
    app.include_router(api)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes,
                       max_inflight=config.max_inflight_body_bytes)
    app.add_middleware(HostGuardMiddleware, api_key=config.api_key, allowed_hosts=config.allowed_hosts)
    return app


def serve(*args, **kwargs) -> None:
    """Load the model and serve it until interrupted (see `serve.server.serve`)."""
    from visionthink.serve.server import serve as run

    run(*args, **kwargs)


__all__ = ["ApiError", "ServeConfig", "create_app", "serve"]
