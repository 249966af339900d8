"""The aiohttp application of `mirage serve`: signalling (``POST /offer``), a session's identity
(``POST /sessions/{id}/identity``), the endpoints (``/health``, ``/metrics``,
``/webrtc/connections``) and the browser client at ``/``.

Every route but the client's static files asks for ``Authorization: Bearer <token>``: a missing,
malformed, expired or forged token is a 401 and nothing is started. Connection attempts are
rate-limited per address (429) before the token is even read."""

from __future__ import annotations

import asyncio
import base64
import collections
import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import MirageError
from ..metrics import Metrics
from .auth import AuthError, RateLimiter, bearer, verify_token
from .exposition import merged_view, render

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "resources" / "serve"
MAX_BODY_BYTES = 12 * 2 ** 20  # an offer with its photo
PUBLIC = ("/", "/client.js", "/client.css")


@dataclass
class ServeConfig:
    secret: bytes
    host: str = "127.0.0.1"
    port: int = 8443
    cert: str | None = None
    key: str | None = None
    max_sessions: int = 4
    max_width: int = 1920
    max_height: int = 1080
    max_control_bytes: int = 4096
    control_rate: int = 20  # control messages per second per session
    connect_limit: int = 10  # connection attempts per address ...
    connect_window_s: float = 60.0  # ... per this many seconds
    idle_timeout_s: float = 30.0
    max_session_s: float = 8 * 3600.0
    closed_kept: int = 50  # closed sessions listed by /webrtc/connections
    trusted_proxies: tuple = ()  # load balancers whose X-Forwarded-For names the client
    extra: dict = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"


def reason_kind(reason: str) -> str:
    """A closed session's reason as a label value: idle, anomaly, max_length, client, error, ..."""
    r = reason.lower()
    for key, kind in (("anomaly", "anomaly"), ("idle", "idle"), ("maximum session", "max_length"),
                      ("error", "error"), ("shutdown", "shutdown"), ("ended", "client"), ("connection", "client"),
                      ("client", "client")):
        if key in r:
            return kind
    return "other"


def check_auth(secret: bytes, request, metrics: Metrics):
    """None when the request carries a valid token, else the 401 response."""
    from aiohttp import web

    token = bearer(request.headers.get("Authorization"))
    why = "missing or malformed Authorization: Bearer header"
    if token is not None:
        try:
            verify_token(secret, token)
            return None
        except AuthError as exc:
            why = str(exc)
    metrics.incr("requests.rejected.unauthorized")
    return web.json_response({"error": "unauthorized", "reason": why}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="mirage"'})


def own_origin(request) -> str:
    return f"{request.scheme}://{request.host}"


def security_middlewares(secret: bytes, metrics: Metrics, public: tuple = PUBLIC):
    """CORS limited to the page's own origin, then the bearer token on every non-public route."""
    from aiohttp import web

    @web.middleware
    async def cors(request, handler):
        origin = request.headers.get("Origin")
        same = origin is None or origin == own_origin(request)
        if request.method == "OPTIONS":
            if not same:
                metrics.incr("requests.rejected.cross_origin")
                return web.Response(status=403, text="cross-origin requests are not allowed")
            resp = web.Response(status=204)
        else:
            resp = await handler(request)
        if origin is not None and same:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
            resp.headers["Vary"] = "Origin"
        return resp

    @web.middleware
    async def auth(request, handler):
        if request.method == "GET" and request.path in public:
            return await handler(request)
        if request.path == "/offer" and request.method == "POST":
            return await handler(request)  # rate-limited first, then checked, in the handler
        denied = check_auth(secret, request, metrics)
        return denied if denied is not None else await handler(request)

    return [cors, auth]


def health_response(verdict: dict, extra: dict | None = None):
    """200 for green and yellow (still serving), 503 for red: what a load balancer acts on."""
    from aiohttp import web

    body = dict(verdict, **(extra or {}))
    return web.json_response(body, status=503 if verdict["level"] == "red" or body.get("full") else 200)


class Server:
    """The shared models, the sessions and the server's own counters."""

    def __init__(self, config: ServeConfig, engine):
        self.config = config
        self.engine = engine  # loaded once; every session's engine runs on its models
        self.metrics = Metrics()
        self.sessions: dict[str, Any] = {}
        self.closed: collections.deque = collections.deque(maxlen=config.closed_kept)
        self.closed_counters: dict[str, int] = {}
        self.connect_limiter = RateLimiter(config.connect_limit, config.connect_window_s)
        self.changed = threading.Condition()  # notified when a session opens or closes
        self.opened_total = 0
        self._voice_lock = threading.Lock()
        self._voice_model: Any = None  # an RVC converter, loaded once (voice_converter)
        self._voice_model_error: str | None = None

    def voice_converter(self):
        """A converter for one session's voice (called on its voice worker): the server's
        ``voice_converter`` setting (WORLD by default: nothing to load, each session its own); RVC
        models are loaded once per server and shared (``stream.shared_copy``: each session its own
        pitch and noise). A model that does not load fails every session's voice with its reason
        (they pass the voice through); it is not retried per session."""
        from ..voice.converters import make_converter
        from ..voice.stream import shared_copy

        s = self.engine.settings
        if s.voice_converter != "rvc":
            return make_converter(s.voice_converter, s)
        with self._voice_lock:
            if self._voice_model is None and self._voice_model_error is None:
                try:
                    self._voice_model = make_converter("rvc", s)
                except Exception as exc:
                    self._voice_model_error = " ".join(str(exc).split())
            if self._voice_model_error is not None:
                raise MirageError(self._voice_model_error)
            return shared_copy(self._voice_model)

    # ---- sessions ----------------------------------------------------------------------------
    def session_engine(self, metrics: Metrics):
        from ..engine import Engine

        s = self.engine.settings.replace(adapt_video=False, lipsync_mic=False, enable_voice=False)
        e = Engine(s, metrics=metrics)  # its own identity, options and stream; the shared models
        e.use_shared_models(self.engine)
        return e

    def session_closed(self, session) -> None:
        with self.changed:
            if self.sessions.pop(session.id, None) is None:
                return
            for k, n in session.metrics.snapshot()["counters"].items():
                self.closed_counters[k] = self.closed_counters.get(k, 0) + n
            self.closed.append(session.describe())  # what it was, not the session: its memory goes
            self.metrics.incr(f"sessions.closed.{reason_kind(session.close_reason or '')}")
            self.changed.notify_all()

    def wait_sessions(self, pred: Callable[[int], bool], timeout: float) -> bool:
        """Block until ``pred(number of open sessions)`` (tests, the benchmark)."""
        with self.changed:
            return self.changed.wait_for(lambda: pred(len(self.sessions)), timeout)

    def metrics_view(self) -> dict:
        with self.changed:
            live = list(self.sessions.values())
            closed = dict(self.closed_counters)
        for k, n in self.metrics.snapshot()["counters"].items():
            closed[k] = closed.get(k, 0) + n
        v = merged_view([s.metrics for s in live] + [self.engine.metrics], closed, len(live),
                        self.config.max_sessions)
        v["voice"] = {s.id: {k: _hist(s.metrics.histogram(name)) for k, name in
                             (("latency", "voice.latency_e2e"), ("converter", "voice.converter_ms"))}
                      for s in live if s.voice is not None}
        return v

    def health(self) -> dict:
        from ..control.health import verdict

        snap = self.engine.snapshot()
        st = snap["status"]  # the shared engine has no face of its own: each session brings one
        st["issues"] = [i for i in st.get("issues", []) if i.get("source") != "passthrough:identity"]
        v = verdict(snap)
        sessions = {}
        for s in list(self.sessions.values()):
            ss = s.engine.snapshot()
            sv = verdict(ss)
            sessions[s.id] = sv
            if sv["level"] == "red" and v["level"] != "red":  # one session's trouble: yellow for the server
                v = {"level": "yellow", "reasons": v["reasons"] + [f"session {s.id}: {sv['reasons'][0]}"]}
        return {**v, "sessions": len(self.sessions), "max_sessions": self.config.max_sessions,
                "full": len(self.sessions) >= self.config.max_sessions, "per_session": sessions}

    async def close_all(self, reason: str = "server shutdown") -> None:
        await asyncio.gather(*(s.close(reason) for s in list(self.sessions.values())), return_exceptions=True)

    # ---- handlers ------------------------------------------------------------------------------
    async def offer(self, request):
        from aiohttp import web

        from .session import Session

        addr = client_address(request, self.config.trusted_proxies)
        if not self.connect_limiter.allow(addr):
            self.metrics.incr("requests.rejected.rate_limited")
            return web.json_response({"error": "too many connection attempts"}, status=429,
                                     headers={"Retry-After": str(int(self.config.connect_window_s))})
        denied = check_auth(self.config.secret, request, self.metrics)
        if denied is not None:
            return denied
        try:
            body = await request.json()
            sdp, kind = body["sdp"], body.get("type", "offer")
            if kind != "offer" or not isinstance(sdp, str):
                raise ValueError("not an offer")
        except Exception:
            self.metrics.incr("requests.rejected.bad_request")
            return web.json_response({"error": "the body must be JSON {sdp, type: 'offer'}"}, status=400)
        photo = body.get("photo")
        if photo is not None and body.get("consent") is not True:
            self.metrics.incr("requests.rejected.no_consent")
            return web.json_response({"error": "the consent confirmation is required before a face is used"},
                                     status=403)
        with self.changed:
            if len(self.sessions) >= self.config.max_sessions:
                self.metrics.incr("requests.rejected.full")
                return web.json_response({"error": f"the server is full ({self.config.max_sessions} sessions)"},
                                         status=503)
            session = Session(self, addr)
            self.sessions[session.id] = session
            self.opened_total += 1
            self.changed.notify_all()
        self.metrics.incr("sessions.opened")
        try:
            ident = None
            if photo is not None:
                ident = await session.set_identity(decode_photo(photo), True, str(body.get("name") or "remote"))
            answer = await session.answer(sdp, kind)
        except (ValueError, PermissionError) as exc:
            await session.close(f"refused: {exc}")
            return web.json_response({"error": str(exc)}, status=400)
        except Exception as exc:
            log.exception("offer failed")
            await session.close(f"error: {type(exc).__name__}: {exc}")
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)
        return web.json_response({**answer, "identity": ident})

    def _session(self, request):
        from aiohttp import web

        s = self.sessions.get(request.match_info["sid"])
        if s is None:
            raise web.HTTPNotFound(text="no such session")
        return s

    async def identity(self, request):
        from aiohttp import web

        s = self._session(request)
        try:
            body = await request.json()
            res = await s.set_identity(decode_photo(body.get("photo", "")), body.get("consent") is True,
                                       str(body.get("name") or "remote"))
        except PermissionError as exc:
            self.metrics.incr("requests.rejected.no_consent")
            return web.json_response({"error": str(exc)}, status=403)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(res)

    async def delete(self, request):
        from aiohttp import web

        s = self._session(request)
        await s.close("closed by the client")
        return web.json_response({"closed": s.id})

    async def health_handler(self, request):
        return health_response(await asyncio.get_running_loop().run_in_executor(None, self.health))

    async def metrics_handler(self, request):
        from aiohttp import web

        self.metrics.incr("requests.metrics")  # scrapes served (tests wait on it)

        body = await asyncio.get_running_loop().run_in_executor(None, lambda: render(self.metrics_view))
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def connections(self, request):
        from aiohttp import web

        live = [await s.refresh_stats() for s in list(self.sessions.values())]
        return web.json_response({"sessions": live, "closed": list(self.closed),
                                  "max_sessions": self.config.max_sessions})

    async def index(self, request):
        from aiohttp import web

        name = "index.html" if request.path == "/" else request.path.lstrip("/")
        types = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
        return web.FileResponse(STATIC_DIR / name, headers={
            "Content-Type": types[name.rsplit(".", 1)[1]],
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:",
            "Cache-Control": "no-store"})

    def make_app(self):
        from aiohttp import web

        app = web.Application(middlewares=security_middlewares(self.config.secret, self.metrics),
                              client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/", self.index)
        app.router.add_get("/client.js", self.index)
        app.router.add_get("/client.css", self.index)
        app.router.add_post("/offer", self.offer)
        app.router.add_post("/sessions/{sid}/identity", self.identity)
        app.router.add_delete("/sessions/{sid}", self.delete)
        app.router.add_get("/health", self.health_handler)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_get("/webrtc/connections", self.connections)
        app.router.add_route("OPTIONS", "/{tail:.*}", _preflight)  # answered by the CORS middleware

        async def on_shutdown(_app):
            await self.close_all()

        app.on_shutdown.append(on_shutdown)
        return app


def _hist(h) -> tuple[list, int, float]:
    """A histogram's recent values, lifetime count and sum (ms), for a summary."""
    return h.values().tolist(), h.count, h.total


def client_address(request, trusted_proxies=()) -> str:
    """The address a connection attempt is counted against: the peer, or — when the peer is one
    of ``trusted_proxies`` — the client its X-Forwarded-For names last (the hop the proxy saw).
    An untrusted peer's X-Forwarded-For is ignored: anyone can write one."""
    peer = request.remote or "?"
    if peer in trusted_proxies:
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        if hops:
            return hops[-1]
    return peer


def decode_photo(value: str) -> bytes:
    """A photo sent as base64 (a ``data:image/...;base64,`` URL or plain base64)."""
    if not isinstance(value, str) or not value:
        raise ValueError("no photo")
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError("the photo is not valid base64") from None


def ice_addresses_for(host: str) -> list[str] | None:
    """Media only on the interface the server is bound to: 127.0.0.1 -> loopback only."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None if host in ("", "0.0.0.0", "::") else ["127.0.0.1"] if host == "localhost" else None
    return None if ip.is_unspecified else [str(ip)]


def ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


class AppThread:
    """An aiohttp application on its own event loop in a thread (the desktop's metrics endpoint,
    tests, the benchmark). ``start()`` returns once it listens; ``stop()`` shuts it down."""

    def __init__(self, make_app: Callable, host: str, port: int, ssl_ctx=None):
        self.make_app, self.host, self.port, self.ssl_ctx = make_app, host, port, ssl_ctx
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self.error: BaseException | None = None

    def start(self, timeout: float = 60.0) -> "AppThread":
        self._thread = threading.Thread(target=self._run, name="mirage-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the server did not start")
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        from aiohttp import web

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

        async def up():
            self._runner = web.AppRunner(self.make_app(), handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_ctx)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked

        try:
            self.loop.run_until_complete(up())
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def call(self, coro, timeout: float = 60.0):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        if self.loop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_ctx else 'http'}://{self.host}:{self.port}"


def endpoints_app(secret: bytes, engine, metrics: Metrics | None = None):
    """The monitoring endpoints alone, for the desktop app (``mirage run --metrics-port``)."""
    from aiohttp import web

    from ..control.health import verdict

    m = metrics or Metrics()

    async def health(request):
        return health_response(verdict(engine.snapshot()))

    async def prom(request):
        body = render(lambda: merged_view([engine.metrics], m.snapshot()["counters"], int(engine.running), 1))
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def conns(request):
        return web.json_response({"sessions": [], "closed": [], "max_sessions": 0})

    app = web.Application(middlewares=security_middlewares(secret, m, public=()))
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prom)
    app.router.add_get("/webrtc/connections", conns)
    return app


def start_endpoints(engine, port: int, secret_file: str | None = None) -> AppThread:
    """The desktop's opt-in endpoints (``mirage run --metrics-port``): loopback only, same tokens."""
    from . import require_serve_extra
    from .auth import load_secret

    require_serve_extra()
    secret = load_secret(secret_file)
    return AppThread(lambda: endpoints_app(secret, engine), "127.0.0.1", port).start()


async def _preflight(request):  # the CORS middleware answers OPTIONS before this is reached
    from aiohttp import web

    return web.Response(status=204)
