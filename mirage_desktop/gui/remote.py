"""The window's "Engine: remote server": `mirage run --remote` (serve/remote.py) run from the window.

* :func:`check_remote` — the address and the token file, checked before anything starts; a bad one
  is one line naming the fix.
* :func:`save_pasted_token` — a pasted token goes to a 0600 file under the config dir (never into
  the settings file, never into a log); the settings keep only that file's path.
* :class:`WindowLink` — :class:`~mirage_desktop.serve.remote.RemoteLink` with the window's use of
  each connected session (its ``on_connected`` hook): live options on the control channel, pings
  for the round trip, a new photo while connected.
* :class:`RemoteRun` — one remote stream: link, runner thread, audio streams; stopped as one.

Nothing here imports the serving libraries at import time (they are an optional extra)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ..errors import MirageError

log = logging.getLogger(__name__)

#: the options a server session accepts on its control channel (serve/session.py CLIENT_OPTIONS,
#: repeated so the window can say what is forwarded without the serving extra installed; a test
#: checks the two agree)
FORWARDED = ("enable_swap", "max_faces", "enable_color_transfer", "enable_mouth_mask", "enable_smoothing")
TOKEN_FILE_NAME = "remote-token"
TOKEN_FIX = "print one on the server with `mirage serve token --ttl 8h` and choose its file, or paste it"


def check_url(url: str) -> str:
    """The server's address without a trailing slash, or a MirageError naming the fix."""
    u = (url or "").strip()
    fix = "type the server's address as https://host:8443"
    if not u:
        raise MirageError("no server address", fix)
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MirageError(f"“{u}” is not a server address", fix)
    try:
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        raise MirageError(f"“{u}” has a bad port", fix) from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MirageError(f"“{u}” has a path; the server is addressed by host and port only", fix)
    return u.rstrip("/")


def read_token(path: str) -> str:
    """The token in ``path`` (whitespace stripped), or a MirageError naming the fix."""
    if not (path or "").strip():
        raise MirageError("no token for the remote server", TOKEN_FIX)
    p = Path(path).expanduser()
    try:
        token = p.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise MirageError(f"cannot read the token file {p}: {why}", TOKEN_FIX) from None
    if not token:
        raise MirageError(f"the token file {p} is empty", TOKEN_FIX)
    if len(token.split()) != 1 or token.count(".") != 2:
        raise MirageError(f"the token file {p} does not hold a token", TOKEN_FIX)
    return token


def check_remote(url: str, token_file: str) -> tuple[str, str]:
    """(address, token) for a remote start; a MirageError (one line with its fix) otherwise."""
    return check_url(url), read_token(token_file)


def save_pasted_token(token: str, config_dir: Path | None = None) -> Path:
    """Write a pasted token to ``<config dir>/remote-token``, readable by the user only (0600 from
    the first byte: created with that mode, then renamed over the old one). Returns its path."""
    from ..paths import config_dir as _config_dir

    t = (token or "").strip()
    if not t:
        raise MirageError("nothing pasted", TOKEN_FIX)
    if len(t.split()) != 1 or t.count(".") != 2:
        raise MirageError("what was pasted is not a token", TOKEN_FIX)
    d = Path(config_dir or _config_dir())
    d.mkdir(parents=True, exist_ok=True)
    path = d / TOKEN_FILE_NAME
    tmp = d / f".{TOKEN_FILE_NAME}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, (t + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise MirageError(f"cannot save the token in {d}: {exc.strerror or exc}",
                          "check that the config folder is writable") from None
    return path


def identity_photo(identity) -> bytes | None:
    """The photo the server builds the identity from: the identity's first source photo still on
    disk, else its thumbnail (a face crop) as PNG; None when it has neither."""
    sources = [getattr(r, "source", "") for r in getattr(identity, "reports", None) or []]
    sources += [p.get("source", "") for p in (getattr(identity, "meta", None) or {}).get("photos", [])
                if isinstance(p, dict)]
    for s in sources:
        try:
            if s and Path(s).is_file():
                return Path(s).read_bytes()
        except OSError:
            continue
    thumb = getattr(identity, "thumbnail", None)
    if isinstance(thumb, np.ndarray) and thumb.size:
        import cv2

        ok, buf = cv2.imencode(".png", thumb)
        if ok:
            return buf.tobytes()
    return None


def _link_class():
    from ..serve.remote import RemoteLink

    class WindowLink(RemoteLink):
        """RemoteLink plus what the window does with a connected session (:meth:`on_connected`):
        options set with :meth:`set_options` are sent to every new session once its control
        channel is open, and again on each change; pings; a photo chosen while connected."""

        def __init__(self, *args, options: dict | None = None, **kw):
            super().__init__(*args, **kw)
            self.live = None  # the last session that connected (its ``ended`` says when it is gone)
            self.options: dict = dict(options or {})
            self._pongs_read = 0
            self.server: dict = {}  # the server's processing summary, from its last pong
            self.sessions_seen = 0
            self._on_photo_error = None
            self._photo_lock = threading.Lock()  # photo and live: the window's thread and the link's loop

        def on_connected(self, rs) -> None:
            with self._photo_lock:
                self.live = rs
                photo, started = self.photo, getattr(rs, "with_photo", None)
            self._pongs_read = 0
            self.sessions_seen += 1
            self._when_open(rs, lambda: self._send_options(rs))
            if started is not None and photo is None:
                # the face was removed while this session was being opened: it must not use it
                self._drop(rs)
            elif photo is not None and photo is not started:
                self._post_photo(rs, photo)  # chosen while it was being opened

        def _drop(self, rs) -> None:
            """End ``rs`` (the link reconnects without a face): a session's face cannot be taken back."""
            rs.closed_reason = "the face was removed: reconnecting without it"
            self.call_soon(lambda: asyncio.ensure_future(rs.close()))

        @staticmethod
        def _when_open(rs, fn) -> None:
            ch = rs.control
            if ch is None:
                return
            if ch.readyState == "open":
                fn()
            else:
                ch.once("open", fn)

        def _send_options(self, rs, names=None) -> None:
            for name in names or list(self.options):
                rs.send_control({"type": "option", "name": name, "value": self.options[name]})
            self.metrics.incr("remote.options_sent", len(names or self.options))

        # ---- the window's side (any thread) ------------------------------------------------
        def set_options(self, values: dict) -> None:
            """Forward ``values`` (names of :data:`FORWARDED`) now and to every later session."""
            values = {k: v for k, v in values.items() if k in FORWARDED}
            self.options.update(values)
            rs = self.live
            if rs is not None and values:
                self.call_soon(self._send_options, rs, list(values))

        def ping(self) -> None:
            rs = self.live
            if rs is not None and not rs.ended.is_set():
                self.call_soon(rs.ping)

        def read_pongs(self) -> None:
            """Round trips of the pings answered since the last call -> ``remote.rtt`` (ms)."""
            rs = self.live
            if rs is None:
                return
            new = [p for p in list(rs.pongs) if p.get("seq", 0) > self._pongs_read]  # (the list keeps 50)
            if new:
                self._pongs_read = new[-1]["seq"]
            for p in new:
                if isinstance(p.get("rtt_ms"), (int, float)):
                    self.metrics.record("remote.rtt", float(p["rtt_ms"]))
                if isinstance(p.get("server"), dict):
                    self.server = dict(p["server"])

        def send_photo(self, photo: bytes | None, on_error) -> None:
            """The identity for the next sessions, and for the current one at once. None: no face
            any more -- the server cannot take a session's identity back, so the current session is
            ended and the link reconnects without one (a removed face is never used again)."""
            with self._photo_lock:
                self.photo, self.consent = photo, photo is not None
                self._on_photo_error = on_error
                rs = self.live
            if rs is None or rs.ended.is_set():
                return  # the next session starts with it (on_connected checks the one being opened)
            if photo is None:
                if getattr(rs, "with_photo", None) is not None or rs.identity_sent:
                    self._drop(rs)
                return
            self._post_photo(rs, photo)

        def _post_photo(self, rs, photo: bytes) -> bool:
            loop = self._loop
            if loop is None or loop.is_closed():
                return False
            try:
                fut = asyncio.run_coroutine_threadsafe(rs.set_identity(photo, True), loop)
            except RuntimeError:
                return False
            rs.identity_sent = True

            def done(f):
                exc = f.exception() if not f.cancelled() else None
                if exc is not None and self._on_photo_error is not None:
                    self._on_photo_error(exc)

            fut.add_done_callback(done)
            return True

    return WindowLink


def make_link(url: str, token: str, photo: bytes | None, fps: float, options: dict, metrics=None):
    from ..metrics import Metrics

    return _link_class()(url, token, photo, consent=photo is not None, fps=fps or 30.0, options=options,
                         metrics=metrics or Metrics())


class OpenedSink:
    """A sink opened before the runner starts (so a missing virtual camera is known at Start);
    the runner's own ``open`` is then a no-op."""

    def __init__(self, sink):
        self.sink = sink
        self.name = getattr(sink, "name", type(sink).__name__)

    def open(self, *a) -> None:
        pass

    def send(self, frame) -> None:
        self.sink.send(frame)

    def close(self) -> None:
        self.sink.close()

    def describe(self) -> str:
        return self.sink.describe() if hasattr(self.sink, "describe") else self.name


class RemoteRun:
    """One remote stream: the link's thread, the runner's thread, the audio streams.

    ``on_frame(kind, frame)`` gets every frame the runner sends ("remote": from the server,
    "local": passed through); counts of each are kept for the window and the tests."""

    def __init__(self, link, runner, streams: list, sinks: list, on_frame=None):
        self.link, self.runner, self.streams, self.sinks = link, runner, streams, sinks
        self.on_frame = on_frame
        self.counts = {"remote": 0, "local": 0}
        self.last_kind = ""
        self.error: BaseException | None = None
        self._last_remote_t = 0.0
        self._cond = threading.Condition()
        runner.on_frame = self._frame
        self.thread = threading.Thread(target=self._run, name="mirage-gui-remote-runner", daemon=True)

    def start(self) -> "RemoteRun":
        self.link.start()
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:  # said by the controller; the stream is over
            self.error = exc
            log.warning("remote engine: the stream ended: %s", exc)

    def _frame(self, kind: str, frame) -> None:
        now = time.monotonic()
        if kind == "remote":
            if self._last_remote_t:
                self.link.metrics.record("remote.gap", (now - self._last_remote_t) * 1000.0)
            self._last_remote_t = now
        else:
            self._last_remote_t = 0.0
        with self._cond:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.last_kind = kind
            self._cond.notify_all()
        if self.on_frame is not None:
            self.on_frame(kind, frame)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self.runner.stop()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        for st in self.streams:
            try:
                st.stop()
                st.close()
            except Exception as exc:
                log.debug("closing an audio stream: %s", exc)
        self.streams = []
        self.link.stop(timeout)

    def health(self) -> dict:
        """The link's state as the window's green / yellow / red: green while swapped video comes
        back, yellow while it first connects, red while the local camera goes out unswapped
        (server lost, refused, or nothing back)."""
        link = self.link
        text = link.status_text()
        if link.state == "connected" and not link.stale(link.stale_s):
            level = "green"
        elif link.state == "connecting":
            level = "yellow"
        else:
            level = "red"
        return {"level": level, "reasons": [text]}

    def snapshot(self, prev: dict | None = None) -> dict:
        """An engine-like snapshot for the plots and the banner: the remote path's figures."""
        link = self.link
        link.read_pongs()
        link.ping()  # answered by the next snapshot
        snap = link.metrics.snapshot()
        stages = {}
        rtt = snap["stages"].get("remote.rtt")
        if rtt and rtt.get("count"):
            stages["round trip"] = rtt
        srv = link.server
        if srv.get("total_p50_ms") is not None and link.state == "connected":
            stages["server"] = {"count": int(srv.get("frames_out") or 1), "p50": srv.get("total_p50_ms"),
                                "p95": srv.get("total_p95_ms")}
        gap = snap["stages"].get("remote.gap")
        if gap and gap.get("count"):
            stages["frame gap"] = gap
        now = time.monotonic()
        sent = self.counts.get("remote", 0) + self.counts.get("local", 0)
        back = self.counts.get("remote", 0)
        fps = fps_back = 0.0
        if prev and prev.get("_t") and now > prev["_t"]:
            dt = now - prev["_t"]
            fps = max(0, sent - prev.get("_sent", 0)) / dt
            fps_back = max(0, back - prev.get("_back", 0)) / dt
        elif prev:
            fps, fps_back = prev.get("gauges", {}).get("fps", 0.0), prev.get("gauges", {}).get("remote.fps_back", 0.0)
        outputs = [s.describe() for s in self.sinks]
        return {
            "_t": now, "_sent": sent, "_back": back,
            "stages": stages,
            "counters": {**snap["counters"], "frames.out": sent, "remote.frames": back,
                         "local.frames": self.counts.get("local", 0)},
            "gauges": {"fps": fps, "remote.fps_back": fps_back},
            "status": {"running": True, "provider": "remote", "outputs": outputs, "issues": [],
                       "remote": link.state},
            "health": self.health(),
        }
