"""`HttpServer`: the aiohttp application of one broker and its listening socket.

Routes: `/` (the dashboard page) and `/static/` (its CSS and JavaScript), `/metrics`
(Prometheus), and the API endpoints of api.ENDPOINTS under `/api/v1/`. Two middlewares wrap
them: errors become ``{"error": message}`` with their status (aiohttp's own 404, 405 and 413
included; a bug is a 500 with the traceback in the log), and, when a token is configured,
every `/api/` request must carry ``Authorization: Bearer <token>``. The broker starts and
stops it (`Broker.start()`/`stop()`); it runs on the broker's loop.
"""
from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cymqtt.http.api import API_PREFIX, ENDPOINTS, Call, Endpoint
from cymqtt.http.errors import BindError
from cymqtt.http.params import ApiError, parse_query
from cymqtt.http.prometheus import exposition, make_registry

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.broker import Broker
    from cymqtt.config import HttpConfig

__all__ = ["HttpServer"]

log = logging.getLogger("cymqtt.http")

STATIC = Path(__file__).resolve().parent / "static"

# The dashboard loads its own files and talks to this server only.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class HttpServer:
    """The REST API, `/metrics` and the dashboard of `broker`, as `config` says.

    ``await start()`` binds (BindError when it cannot) and serves; ``await stop()`` closes the
    socket and waits at most a second for requests under way.
    """

    def __init__(self, broker: Broker, config: HttpConfig) -> None:
        self.broker = broker
        self.host = config.host
        self.token = config.token
        self._port = config.port
        self._registry = make_registry(broker)
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen, with port 0, once started)."""
        if self._runner is not None and self._runner.addresses:
            return int(self._runner.addresses[0][1])
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            # With --workers every worker serves the port (SO_REUSEPORT); each answers for
            # the whole broker through the cluster.
            await web.TCPSite(runner, self.host, self._port, backlog=128,
                              reuse_port=self.broker.config.workers > 1 or None).start()
        except OSError as exc:
            await runner.cleanup()
            raise BindError(self.host, self._port, exc) from None
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- the application -----------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application (start() serves it; tests may drive it directly)."""
        # A publish body holds a payload up to max_packet_size, base64 being 4/3 of it.
        max_body = 2 * self.broker.config.max_packet_size + 65536
        app = web.Application(middlewares=[self._errors, self._auth],
                              client_max_size=max_body)
        app.router.add_get("/", self._page)
        app.router.add_static("/static/", STATIC, append_version=False)
        app.router.add_get("/metrics", self._metrics)
        for endpoint in ENDPOINTS:
            app.router.add_route(endpoint.method, endpoint.route, self._handler(endpoint))
        return app

    def _handler(self, endpoint: Endpoint):
        async def handle(request: web.Request) -> web.Response:
            query = parse_query(endpoint.query, request.query)
            call = Call(self.broker, query, dict(request.match_info), request, self)
            return _json(200, await endpoint.handler(call))
        handle.__name__ = endpoint.handler.__name__
        return handle

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = exposition(self._registry, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    # -- middlewares ---------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is not None and request.path.startswith("/api/"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given:
                raise _Unauthorized("missing Authorization: Bearer <token> header (the [http] "
                                    "token)")
            if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                raise _Unauthorized("wrong token")
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = _json(exc.status, {"error": exc.message})
        except _Unauthorized as exc:
            response = _json(401, {"error": str(exc)})
            response.headers["WWW-Authenticate"] = 'Bearer realm="cymqtt"'
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _json(exc.status, {"error": _describe(request, exc)})
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            response = _json(500, {"error": "internal error; the broker's log has the "
                                            "traceback"})
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


class _Unauthorized(Exception):
    pass


def _json(status: int, data: Any) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    return web.Response(status=status, text=json.dumps(data), content_type="application/json",
                        headers=headers)


def _describe(request: web.Request, exc: web.HTTPException) -> str:
    where = f"{request.method} {request.path[:200]}"
    if isinstance(exc, web.HTTPNotFound):
        hint = f" (GET {API_PREFIX}/openapi.json lists the API)" \
            if request.path.startswith("/api/") else ""
        return f"no such endpoint: {where}{hint}"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return (f"method {request.method} is not allowed on {request.path[:200]} (allowed: "
                f"{', '.join(sorted(exc.allowed_methods))})")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return f"body too large: {exc.text}"
    return f"{exc.reason}: {where}"
