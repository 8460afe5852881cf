"""The HTTP service: ``GET /recommend/<userid>`` -> one line of up to 20 comma-separated movie ids.

A plain ASGI callable (no framework routing: three fixed paths) served by uvicorn with uvloop and
the httptools parser; the answer is computed synchronously from in-memory numpy arrays, so a
request never awaits anything but its own response write. Background threads refresh the speed
views, load new batch views and ship telemetry (see :mod:`flixlake.serving.recommender` and
:mod:`flixlake.serving.telemetry`).

Endpoints: ``/recommend/<userid>`` (text/plain; headers ``X-Request-Id``, ``X-Model-Version``,
``X-Variant``, ``X-Recommendation-Source``), ``/health/live`` (the process answers),
``/health/ready`` (503 until a batch view is loaded for every variant and the speed views are
read), ``/health`` (JSON summary), ``/metrics`` (Prometheus); HEAD works wherever GET does.
Malformed requests get a one-line 4xx explanation: 400 for a missing, non-numeric, zero, negative
or out-of-range user id (1..2147483647, as in the log contract), 404 for unknown paths or extra
segments, 405 for methods other than GET and HEAD. An account asking faster than
``attacks.rate_limit`` allows gets 429 with ``Retry-After`` (:mod:`flixlake.serving.ratelimit`).
The health endpoints reveal no internals (no
Kafka addresses, host names or error text: those go to the log).

Never an empty 200: until the catalog (the ``movies`` table) is read there is nothing to
recommend, and ``/recommend`` says 503 with ``Retry-After``; from then on every answer has movies
(trending, then popular, then the catalog's static list while no batch view is loaded).

The listening socket is bound before anything is loaded (:func:`flixlake.serving.listen.bind`,
which ``flixlake serve`` calls before it even imports this module), so a client is never refused
while the service starts: its connection waits in the backlog and gets a fallback answer.

Run it::

    flixlake serve                                   # binds, then calls run_server(...)
    python -m flixlake.serving.app --env local --home var --port 8082
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import itertools
import json
import logging
import math
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from flixlake.config import ConfigError, Settings, load_settings
from flixlake.contract.logformat import MAX_USER_ID
from flixlake.experiments.routing import Experiment
from flixlake.lake.store import Lake, lake_from_settings
from flixlake.serving.listen import bind
from flixlake.serving.monitoring import METRICS_CONTENT_TYPE, ServingMetrics
from flixlake.serving.ratelimit import AccountRateLimiter
from flixlake.serving.recommender import NO_MODEL, Answer, Recommender
from flixlake.serving.refresh import ViewRefresher
from flixlake.serving.telemetry import TelemetryShipper
from flixlake.serving.views import MovieCatalog

log = logging.getLogger("serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RECOMMEND_PREFIX = "/recommend/"
_MAX_ID_DIGITS = len(str(MAX_USER_ID))
_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"
_SOURCES = {
    s: s.encode() for s in ("batch", "batch_filtered", "batch_filled", "fallback", "explore")
}
_READ_METHODS = ("GET", "HEAD")
_HEADER_CACHE_MAX = 64  # model versions whose header value is kept


class BadRequest(Exception):
    """A request the client got wrong: the status and a one-line explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_user_id(text: str) -> int:
    """The ``<userid>`` path segment -> a user id in ``1..MAX_USER_ID`` (else BadRequest)."""
    if not text:
        raise BadRequest(400, "missing user id: use GET /recommend/<userid>")
    if "/" in text:
        raise BadRequest(404, "not found: /recommend/<userid> takes exactly one path segment")
    if not (text.isascii() and text.isdigit()):
        raise BadRequest(400, f"user id must be a positive integer, got {text[:40]!r}")
    if len(text) > _MAX_ID_DIGITS or not 0 < int(text) <= MAX_USER_ID:
        raise BadRequest(400, f"user id must be between 1 and {MAX_USER_ID}, got {text[:40]}")
    return int(text)


def _header_value(text: str) -> bytes:
    return "".join(c if " " <= c <= "~" else "?" for c in text).encode("ascii")


class RecommendationService:
    """The ASGI application plus the background parts it owns (start/stop with the lifespan)."""

    def __init__(
        self, settings: Settings, lake: Lake | None = None, port: int | None = None
    ) -> None:
        self.settings = settings
        config = settings.serving
        self.config = config
        self.metrics = ServingMetrics()
        self.catalog = MovieCatalog(capacity=config.max_catalog_movies)
        self.recommender = Recommender(
            self.catalog,
            Experiment.from_config(config.experiment),
            results=config.results,
            fallback_candidates=config.fallback_candidates,
        )
        self.refresher = ViewRefresher(
            lake or lake_from_settings(settings), config, self.recommender, self.metrics
        )
        self.metrics.ready.set_function(lambda: float(self.refresher.readiness()[0]))
        self.metrics.catalog_movies.set_function(lambda: float(len(self.catalog)))
        telemetry = config.telemetry
        self.server_name = telemetry.server_name or f"{socket.gethostname()}:{port or config.port}"
        self.telemetry: TelemetryShipper | None = None
        if telemetry.enabled:
            self.telemetry = TelemetryShipper(
                bootstrap_servers=telemetry.bootstrap_servers or settings.kafka.bootstrap_servers,
                log_topic=telemetry.log_topic or settings.kafka.topic,
                served_topic=telemetry.served_topic,
                server=self.server_name,
                metrics=self.metrics,
                experiment=settings.serving.experiment.name,
                capacity=telemetry.buffer_records,
            )
        limit = settings.attacks.rate_limit
        self.limiter = (
            AccountRateLimiter(limit.requests_per_minute, limit.burst) if limit.enabled else None
        )
        self._request_prefix = uuid.uuid4().hex[:12]
        self._request_numbers = itertools.count(1)
        self._header_cache: dict[str, bytes] = {}
        self._started_at: float | None = None
        self._start_lock = threading.Lock()
        self._last_error_log = 0.0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> bool:
        """Start the background threads; wait (at most ``startup_wait_seconds``) for the catalog
        only: batch views load in the background while fallbacks are served. True when the
        catalog was read in that time."""
        with self._start_lock:
            if self._started_at is not None:
                return True
            self._started_at = time.time()
            self.refresher.start()
            if self.telemetry is not None:
                self.telemetry.start()
        has_catalog = self.refresher.wait_catalog(self.config.startup_wait_seconds)
        log.info(
            "answering from now on: catalog %s (%d movies), batch views load in the background; "
            "experiment %r",
            "read" if has_catalog else "not read yet",
            len(self.catalog),
            self.recommender.state.experiment.name,
        )
        gc.collect()
        return has_catalog

    def stop(self) -> None:
        self.refresher.stop()
        if self.telemetry is not None:
            self.telemetry.stop()

    # -- ASGI -----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path.startswith(RECOMMEND_PREFIX):
                await self._recommend(scope, send, path)
            elif path == "/recommend":
                await self._error(
                    send,
                    "recommend",
                    BadRequest(400, "missing user id: use GET /recommend/<userid>"),
                )
            elif path == "/health/live":
                await self._ops(scope, send, "live", self._live)
            elif path == "/health/ready":
                await self._ops(scope, send, "ready", self._ready)
            elif path == "/health":
                await self._ops(scope, send, "health", self._health)
            elif path == "/metrics":
                await self._ops(scope, send, "metrics", self._metrics)
            else:
                await self._error(send, "other", BadRequest(404, f"not found: {path[:80]}"))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _recommend(self, scope: Scope, send: Send, path: str) -> None:
        started = time.perf_counter()
        method = scope["method"]
        if method not in _READ_METHODS:
            await self._error(
                send, "recommend", BadRequest(405, "method not allowed: use GET or HEAD")
            )
            return
        try:
            user_id = parse_user_id(path[len(RECOMMEND_PREFIX) :])
        except BadRequest as exc:
            await self._error(send, "recommend", exc)
            return
        if self.limiter is not None:
            wait = self.limiter.allow(user_id)
            if wait > 0:  # a flood from this account: refused cheaply, no answer, no telemetry
                retry = str(max(1, math.ceil(wait))).encode()
                limited = BadRequest(429, f"too many requests for user {user_id}: retry later")
                await self._error(
                    send,
                    "recommend",
                    limited,
                    head=method == "HEAD",
                    extra_headers=[(b"retry-after", retry)],
                )
                return
        request_id = f"{self._request_prefix}-{next(self._request_numbers):x}"
        try:
            answer = self.recommender.recommend(user_id)
        except Exception:
            answer = self._failed(user_id)
        body = answer.body
        if not body:  # nothing to recommend yet (no catalog): say so, never an empty 200
            await self._error(
                send,
                "recommend",
                BadRequest(503, "no movies to recommend yet: the catalog is still loading"),
                head=method == "HEAD",
            )
            return
        model = self._header_cache.get(answer.model_version)
        if model is None:
            if len(self._header_cache) >= _HEADER_CACHE_MAX:
                self._header_cache.clear()
            model = self._header_cache[answer.model_version] = _header_value(answer.model_version)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", _TEXT),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode()),
                    (b"x-model-version", model),
                    (b"x-variant", answer.variant.encode()),
                    (b"x-recommendation-source", _SOURCES[answer.source]),
                ],
            }
        )
        if method == "HEAD":  # the same headers, no body, and no answer was given
            await send({"type": "http.response.body", "body": b""})
            self.metrics.requests.labels("recommend_head", "200").inc()
            return
        await send({"type": "http.response.body", "body": body})
        elapsed = time.perf_counter() - started
        metrics = self.metrics
        metrics.recommend_ok.inc()
        metrics.recommend_latency.observe(elapsed)
        metrics.answer(answer.variant, answer.source)
        if answer.reason is not None:
            metrics.fallback(answer.reason)
        if self.telemetry is not None:
            self.telemetry.record(
                time.time(),
                user_id,
                200,
                elapsed * 1000.0,
                request_id,
                answer.variant,
                answer.model_version,
                body,
                answer.source,
            )

    def _failed(self, user_id: int) -> Answer:
        """An unexpected error: answer with the fallback anyway, log (at most once a second)."""
        self.metrics.errors.inc()
        now = time.monotonic()
        if now - self._last_error_log > 1.0:
            self._last_error_log = now
            log.exception("answering user %d failed; served the fallback", user_id)
        try:
            return self.recommender.fallback_answer(user_id, "error")
        except Exception:
            return Answer(b"", "none", NO_MODEL, "fallback", "error")

    async def _error(
        self,
        send: Send,
        endpoint: str,
        exc: BadRequest,
        head: bool = False,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        body = exc.message.encode("utf-8", "replace")
        headers = [(b"content-type", _TEXT), (b"content-length", str(len(body)).encode())]
        headers.extend(extra_headers or ())
        if exc.status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        if exc.status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})
        self.metrics.requests.labels(endpoint, str(exc.status)).inc()

    async def _ops(
        self,
        scope: Scope,
        send: Send,
        endpoint: str,
        render: Callable[[], tuple[int, bytes, bytes]],
    ) -> None:
        if scope["method"] not in _READ_METHODS:
            await self._error(
                send, endpoint, BadRequest(405, "method not allowed: use GET or HEAD")
            )
            return
        started = time.perf_counter()
        try:
            status, content_type, body = render()
        except Exception:  # an ops endpoint says it is broken; the details go to the log only
            log.exception("%s failed", endpoint)
            status, content_type = 503, _TEXT
            body = f"{endpoint} unavailable (see the service log)".encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def _live(self) -> tuple[int, bytes, bytes]:
        return 200, _TEXT, b"live"

    def _ready(self) -> tuple[int, bytes, bytes]:
        ready, reasons = self.refresher.readiness()
        body = {"status": "ready" if ready else "not ready", "reasons": reasons}
        return (200 if ready else 503), _JSON, json.dumps(body).encode()

    def _health(self) -> tuple[int, bytes, bytes]:
        health = self.refresher.health()
        health["uptime_seconds"] = (
            round(time.time() - self._started_at, 1) if self._started_at else None
        )
        health["telemetry"] = {"enabled": self.telemetry is not None}
        return 200, _JSON, json.dumps(health, default=str).encode()

    def _metrics(self) -> tuple[int, bytes, bytes]:
        return 200, METRICS_CONTENT_TYPE.encode(), self.metrics.render()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.to_thread(self.start)
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(
    settings: Settings, lake: Lake | None = None, port: int | None = None
) -> RecommendationService:
    """The ASGI app for these settings (background parts start with the ASGI lifespan)."""
    return RecommendationService(settings, lake=lake, port=port)


def uvicorn_config(app: RecommendationService, host: str, port: int) -> Any:
    """uvicorn settings chosen for this service: uvloop + httptools, no access log."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        ws="none",  # no websocket routes
        proxy_headers=False,  # no X-Forwarded-* rewriting middleware on every request
        access_log=False,
        server_header=False,
        log_level="info",
        backlog=2048,
        timeout_keep_alive=15,
    )


def run_server(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until interrupted (what ``flixlake serve`` and ``python -m flixlake.serving.app`` call).

    ``sock``: the listening socket, bound by the caller as early as it could; bound here first
    thing otherwise. Either way it listens before the catalog and views are read.
    """
    import uvicorn

    host = host or settings.serving.host
    port = port or settings.serving.port
    if sock is None:
        sock = bind(host, port)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    logging.getLogger("serving").setLevel(logging.INFO)
    # a background thread that wants the GIL gets it for at most 1 ms (default 5 ms) at a time
    sys.setswitchinterval(0.001)
    app = create_app(settings, port=port)
    uvicorn.Server(uvicorn_config(app, host, port)).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="flixlake recommendation service")
    parser.add_argument("--env", default=None, help="config environment (default $FLIXLAKE_ENV)")
    parser.add_argument("--home", default=None, help="state folder (default $FLIXLAKE_HOME)")
    parser.add_argument("--host", default=None, help="listen address (default serving.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default serving.port)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.env, home=args.home)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_server(settings, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
