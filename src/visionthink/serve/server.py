"""Running the app under uvicorn, with connection limits that hold against slow or half-sent requests.

uvicorn's own limits act once a request's headers are in (`limit_concurrency` answers 503
then), so a client that opens many connections and never finishes its headers holds a file
descriptor each. `GuardedH11Protocol` closes a connection beyond `max_connections` as soon as
it is accepted and one whose request headers are not complete within `header_timeout` seconds
(of connecting, or of the keep-alive wait after its previous reply). A server facing the
internet should still sit behind a reverse proxy (docs/serving.md).
"""

from __future__ import annotations

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from visionthink.serve.config import ServeConfig


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a deadline for the first request's headers."""

    max_connections = 256
    header_timeout = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = None
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self._arm(self.header_timeout)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # the next request's headers: after the keep-alive wait at most
            self._arm(self.timeout_keep_alive + self.header_timeout)

    def _arm(self, seconds: float) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(seconds, self._headers_too_slow, self.cycle)

    def _headers_too_slow(self, cycle_before) -> None:
        """Close the connection unless a request's headers have arrived since the timer was armed."""
        if self.cycle is cycle_before and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)


def guarded_protocol(config: ServeConfig) -> type[GuardedH11Protocol]:
    """The protocol class with `config`'s limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"max_connections": config.max_connections, "header_timeout": config.header_timeout})


def uvicorn_config(app, config: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
                   log_level: str = "info") -> uvicorn.Config:
    """uvicorn settings for `app`: guarded connections, keep-alive timeout, no access log."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                          http=guarded_protocol(config), timeout_keep_alive=config.keep_alive_timeout,
                          backlog=min(2048, config.max_connections))


def serve(options=None, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          log_level: str = "info") -> None:
    """Build the engine `options` name (`engines.factory.EngineOptions`; default: the shipped model on transformers)
    and serve it until interrupted. Under `vllm` or `remote` the server runs VisionThink episodes only: raw mode
    (requests with tools) belongs to the model's own server."""
    from visionthink.engines.factory import EngineOptions, build_engine, is_local, served_context_length
    from visionthink.serve.app import create_app

    config = config or ServeConfig()
    options = options or EngineOptions()
    options.batch_size = max(options.batch_size, config.max_batch)
    engine = build_engine(options)
    context = None if is_local(engine) else served_context_length(options)
    uvicorn.Server(uvicorn_config(create_app(engine, config, context=context), config, host, port, log_level)).run()
