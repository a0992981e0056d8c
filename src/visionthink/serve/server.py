"""Running the app under uvicorn, with connection limits that hold against slow or half-sent requests.

uvicorn's own limits act once a request's headers are in (`limit_concurrency` answers 503
then), so a client that opens many connections and never finishes its headers holds a file
descriptor each. `GuardedH11Protocol` keeps at most `max_connections`: a connection beyond it
replaces the one that has waited longest for its client (headers, body or next request), if
that one has waited a second, and is closed at once otherwise. A connection whose request
headers are not complete within `header_timeout` seconds (of connecting, or of the keep-alive
wait after its previous reply) is closed. A request body gets
`body_timeout` seconds after its headers, plus a second per `min_body_rate` bytes it delivers;
a slower one is answered 408 and its connection closed. A connection whose reply went out before
its body was read (a refusal) is half-closed at once and closed five seconds later (what still
comes meanwhile is dropped unparsed), rather than kept for a body nobody reads.
Malformed HTTP is answered with a JSON 400. A server facing the internet should still sit
behind a reverse proxy (docs/serving.md).
"""

from __future__ import annotations

import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from visionthink.serve.config import ServeConfig
from visionthink.serve.errors import error_body

BODY_TIMED_OUT = "visionthink.body_timed_out"
"""Set in a request's ASGI scope when its connection was cut for a slow body (the app then counts a timeout)."""


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap, deadlines for headers and bodies, and JSON for bad HTTP."""

    max_connections = 256
    header_timeout = 10.0
    body_timeout = 10.0
    min_body_rate = 256 * 1024

    evict_after = 1.0
    """Seconds a connection must have been waiting for its client before a new connection over the cap replaces it."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self._body_timer = None
        self._body_cycle = None
        self._body_start = 0.0
        self._body_bytes = 0
        self._lingering = False
        self._waiting_since: float | None = self.loop.time()
        """When this connection began waiting for its client (headers, body, or the next request); None while the
        server works on a request."""
        if len(self.connections) > self.max_connections:
            stalest = self._stalest()
            if stalest is None:
                transport.close()
                return
            stalest._evict()
        self._arm(self.header_timeout)

    def _stalest(self) -> GuardedH11Protocol | None:
        """The connection that has waited longest for its client, if it has waited `evict_after` seconds."""
        waiting = [c for c in self.connections if c is not self and getattr(c, "_waiting_since", None) is not None]
        stalest = min(waiting, key=lambda c: c._waiting_since, default=None)
        if stalest is None or self.loop.time() - stalest._waiting_since < self.evict_after:
            return None
        return stalest

    def _evict(self) -> None:
        """Close this connection for a newer one: a request whose body is still coming is answered 408 first."""
        self._waiting_since = None
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            self._cut_body(cycle, "the request body was too slow for a server at its connection limit")
        elif not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # the rest of a body that was answered already: dropped unparsed
            return
        super().data_received(data)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self.transport.is_closing():
            return
        if not cycle.more_body:
            self._waiting_since = None
            return
        if cycle is self._body_cycle:
            self._body_bytes += len(data)
            return
        self._body_cycle, self._body_start, self._body_bytes = cycle, self.loop.time(), 0
        self._waiting_since = self._body_start
        self._arm_body()

    def _body_deadline(self) -> float:
        return self._body_start + self.body_timeout + self._body_bytes / self.min_body_rate

    def _arm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_at(self._body_deadline(), self._body_too_slow, self._body_cycle)

    def _body_too_slow(self, cycle) -> None:
        """Answer 408 and close unless the body has arrived (or earned more time) since the timer was armed."""
        if (self.cycle is not cycle or not cycle.more_body or cycle.response_complete
                or self.transport.is_closing()):
            return
        if self.loop.time() < self._body_deadline():
            self._arm_body()
            return
        self._cut_body(cycle, f"the request body did not arrive within {self.body_timeout:g} s (plus 1 s per "
                       f"{self.min_body_rate} bytes received)")

    def _cut_body(self, cycle, message: str) -> None:
        """Answer a request whose body is still coming with 408, close its connection, and tell the app why."""
        cycle.scope[BODY_TIMED_OUT] = True
        if not cycle.response_started:
            self._send_json(408, error_body(message, "timeout_error", "body_timeout"))
        cycle.response_started = cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()

    linger = 5.0
    """Seconds a connection answered before its body was read keeps reading (and dropping) what still comes."""

    def _linger(self) -> None:
        """Close after the reply: at once if the transport cannot half-close, else after `linger` seconds of dropping
        the rest of the body, so that a client still sending reads the reply instead of a reset."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self._lingering = True
        self.transport.write_eof()
        self.loop.call_later(self.linger, self.transport.close)

    def _send_json(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        try:
            for event in (h11.Response(status_code=status, headers=[
                    (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close")]), h11.Data(data=payload), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:
            pass  # h11 cannot answer in this state: the connection is just closed

    def send_400_response(self, msg: str) -> None:
        self._send_json(400, error_body(f"malformed HTTP request ({msg})", "invalid_request_error", "invalid_http"))
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._waiting_since = self.loop.time()
        if self.transport.is_closing():
            return
        if self.conn.their_state is not h11.DONE:  # answered before its body was read: nobody will read the rest
            self._linger()
            return
        self._arm(self.timeout_keep_alive + self.header_timeout)  # the next request's headers: keep-alive wait at most

    def _arm(self, seconds: float) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(seconds, self._headers_too_slow, self.cycle)

    def _headers_too_slow(self, cycle_before) -> None:
        """Close the connection unless a request's headers have arrived since the timer was armed."""
        if self.cycle is cycle_before and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (getattr(self, "_header_timer", None), getattr(self, "_body_timer", None)):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)


def guarded_protocol(config: ServeConfig) -> type[GuardedH11Protocol]:
    """The protocol class with `config`'s limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"max_connections": config.max_connections, "header_timeout": config.header_timeout,
                 "body_timeout": config.body_timeout, "min_body_rate": config.min_body_rate})


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
    from visionthink.engines.factory import EngineOptions, build_engine, is_local
    from visionthink.serve.app import create_app
    from visionthink.serve.context import folder_context_length

    config = config or ServeConfig()
    options = options or EngineOptions()
    options.batch_size = max(options.batch_size, config.max_batch)
    engine = build_engine(options)
    context = None if is_local(engine) else folder_context_length(options.model)
    uvicorn.Server(uvicorn_config(create_app(engine, config, context=context), config, host, port, log_level)).run()
