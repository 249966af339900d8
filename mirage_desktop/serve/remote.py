"""The desktop as a client of `mirage serve` (``mirage run --remote URL --token-file T``): the
local camera goes to the server, the swapped video comes back to the local virtual camera.

The output never freezes: whenever no processed frame has come back for ``stale_s`` the local
camera frame goes out as it is (pass-through, said in the status), and the link reconnects with
a back-off (0.5 s, 1 s, 2 s ... 10 s) until the server is back."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np

from ..metrics import Metrics

log = logging.getLogger(__name__)


class RemoteLink:
    """A session to a server kept open from a background thread (its own event loop)."""

    def __init__(self, url: str, token: str, photo: bytes | None = None, consent: bool = False, fps: float = 30.0,
                 *, lost_after_s: float = 2.0, connect_timeout_s: float = 20.0, backoff_s: tuple = (0.5, 10.0),
                 stale_s: float = 0.5, ssl_verify: bool = True, metrics: Metrics | None = None):
        self.stale_s = stale_s  # nothing back for this long: the caller passes the local frame through
        self.url, self.token, self.photo, self.consent, self.fps = url, token, photo, consent, fps
        self.lost_after_s, self.connect_timeout_s, self.backoff_s = lost_after_s, connect_timeout_s, backoff_s
        self.ssl_verify = ssl_verify
        self.metrics = metrics or Metrics()
        self.state = "connecting"  # connecting | connected | lost | refused | stopped
        self.error: str | None = None
        self.attempt = 0
        self.retry_at: float | None = None
        self._local: np.ndarray | None = None
        self._local_cond = threading.Condition()
        self._processed: tuple[np.ndarray, float] | None = None
        self._taken_t = 0.0
        self.last_processed_t = 0.0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # ---- the caller's side (any thread) ----------------------------------------------------------
    def start(self) -> "RemoteLink":
        self._thread = threading.Thread(target=self._run, name="mirage-remote", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
        self.state = "stopped"

    def submit(self, frame: np.ndarray) -> None:
        """The newest local camera frame (sent at the link's frame rate; older ones are skipped)."""
        with self._local_cond:
            self._local = frame
            self._local_cond.notify_all()

    def take_processed(self) -> np.ndarray | None:
        """The newest processed frame not yet taken, or None."""
        with self._lock:
            p = self._processed
            if p is None or p[1] <= self._taken_t:
                return None
            self._taken_t = p[1]
            return p[0]

    def stale(self, stale_s: float) -> bool:
        """True when nothing has come back for ``stale_s``: the caller sends the local frame."""
        return time.monotonic() - self.last_processed_t > stale_s

    def status_text(self) -> str:
        if self.state == "connected":
            if self.stale(self.stale_s):
                quiet = time.monotonic() - self.last_processed_t
                return (f"remote engine: no video back from {self.url} for {quiet:.1f} s; local pass-through "
                        "until it comes back")
            return f"remote engine: connected to {self.url}"
        wait = f" in {max(0.0, self.retry_at - time.monotonic()):.0f} s" if self.retry_at else ""
        why = f" ({self.error})" if self.error else ""
        if self.state == "refused":
            return f"remote engine: refused by {self.url}{why}; local pass-through"
        if self.state == "lost":
            return (f"remote engine: server lost{why}; local pass-through, reconnecting{wait} "
                    f"(attempt {self.attempt})")
        return f"remote engine: connecting to {self.url}; local pass-through until it answers"

    # ---- the link's thread -----------------------------------------------------------------------
    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._stop = asyncio.Event()
        try:
            self._loop.run_until_complete(self._keep_connected())
        finally:
            self._loop.close()

    def _next_local(self, n: int) -> np.ndarray | None:
        with self._local_cond:
            f, self._local = self._local, None
            return f

    def _got(self, img: np.ndarray, t: float) -> None:
        with self._lock:
            self._processed = (img, t)
            self.last_processed_t = t
        self.metrics.incr("remote.frames_back")
        if self.state != "connected":
            self.state, self.error, self.attempt, self.retry_at = "connected", None, 0, None
            self.metrics.incr("remote.connected")
            log.warning("remote engine: connected to %s", self.url)

    async def _keep_connected(self) -> None:
        from .client import FeedTrack, RemoteSession, ServeError

        assert self._stop is not None
        while not self._stop.is_set():
            rs = RemoteSession(self.url, self.token, on_frame=self._got, ssl_verify=self.ssl_verify)
            t_start = time.monotonic()
            try:
                await asyncio.wait_for(rs.connect(FeedTrack(self._next_local, self.fps), photo=self.photo,
                                                  consent=self.consent), self.connect_timeout_s)
                while not self._stop.is_set() and not rs.ended.is_set():
                    try:
                        await asyncio.wait_for(self._stop.wait(), 0.25)
                    except asyncio.TimeoutError:
                        pass
                    now = time.monotonic()
                    last = max(self.last_processed_t, t_start)
                    limit = self.lost_after_s if self.last_processed_t > t_start else self.connect_timeout_s
                    if now - last > limit:
                        raise ConnectionError(f"no video back for {now - last:.0f} s")
                if rs.ended.is_set():
                    raise ConnectionError(rs.closed_reason or "the session ended")
            except ServeError as exc:
                self.error = str(exc)
                if exc.status in (401, 403):  # a bad token or no consent: retrying changes nothing soon
                    self.state = "refused"
            except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
                self.error = " ".join(str(exc).split())[:200] or type(exc).__name__
            except Exception as exc:  # a bug in one attempt must not end the link
                log.exception("remote engine: attempt failed")
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                try:
                    await rs.close()
                except Exception:
                    pass
            if self._stop.is_set():
                break
            if self.state != "refused":
                self.state = "lost"
            self.metrics.incr("remote.lost")
            self.attempt += 1
            lo, hi = self.backoff_s
            delay = min(hi, lo * 2 ** (self.attempt - 1))
            self.retry_at = time.monotonic() + delay
            log.warning("%s", self.status_text())
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self.retry_at = None


class RemoteRunner:
    """Camera -> link -> sinks, with local pass-through whenever the link has nothing fresh."""

    def __init__(self, source, sinks: list, link: RemoteLink, metrics: Metrics | None = None):
        self.source, self.sinks, self.link = source, sinks, link
        self.metrics = metrics or link.metrics
        self._stop = threading.Event()
        self.sent_remote = 0
        self.sent_local = 0
        self.last_kind = ""
        self.on_frame = None  # (kind, frame) after each send: tests, the window's preview

    def stop(self) -> None:
        self._stop.set()

    def run(self, max_frames: int | None = None, seconds: float | None = None) -> None:
        t0 = time.monotonic()
        opened = []
        try:
            for s in self.sinks:
                s.open(*(getattr(self.source, "size", None) or (0, 0)), getattr(self.source, "fps", 30) or 30)
                opened.append(s)
            while not self._stop.is_set():
                if max_frames is not None and self.sent_remote + self.sent_local >= max_frames:
                    break
                if seconds is not None and time.monotonic() - t0 >= seconds:
                    break
                frame = self.source.read()
                if frame is None:
                    if getattr(self.source, "kind", "") == "camera":
                        continue
                    break
                self.link.submit(frame)
                out = self.link.take_processed()
                if out is not None:
                    kind = "remote"
                elif self.link.stale(self.link.stale_s):
                    out, kind = frame, "local"  # never a frozen camera: the local picture, unswapped
                else:
                    continue  # a processed frame is on its way
                self._send(out, kind)
        finally:
            for s in opened:
                try:
                    s.close()
                except Exception as exc:
                    log.warning("closing %s failed: %s", s.describe(), exc)
            try:
                self.source.close()
            except Exception:
                pass

    def _send(self, frame: np.ndarray, kind: str) -> None:
        for s in self.sinks:
            try:
                s.send(frame)
            except Exception as exc:
                self.metrics.incr(f"errors.output:{s.name}")
                log.warning("%s failed: %s", s.describe(), exc)
        if kind == "remote":
            self.sent_remote += 1
        else:
            self.sent_local += 1
        if kind != self.last_kind:
            log.warning("%s", "remote engine: swapped video from the server" if kind == "remote"
                        else self.link.status_text())
        self.last_kind = kind
        self.metrics.incr(f"remote.sent_{kind}")
        if self.on_frame is not None:
            self.on_frame(kind, frame)


def run_remote(args, settings, outputs: list[str]) -> int:
    """`mirage run --remote URL --token-file T`: the loop of the desktop as a client."""
    import sys
    from pathlib import Path

    from ..commands.common import confirm_rights
    from ..errors import MirageError
    from ..outputs.sinks import make_sink
    from ..vision.capture import CameraSource, open_source, parse_camera
    from . import require_serve_extra

    require_serve_extra()
    if not args.token_file:
        raise MirageError("--remote needs --token-file", "print a token on the server: mirage serve token --ttl 8h")
    try:
        token = Path(args.token_file).expanduser().read_text().strip()
    except OSError as exc:
        raise MirageError(f"cannot read the token file {args.token_file}: {exc.strerror or exc}",
                          "give --token-file the file with the token from `mirage serve token`") from exc
    photo = None
    if args.source:
        confirm_rights(args, ", ".join(args.source))  # the server refuses a face without this too
        photo = Path(args.source[0]).expanduser().read_bytes()
    if args.input:
        src = open_source(args.input, width=settings.capture_width, height=settings.capture_height,
                          fps=settings.capture_fps, loop=args.loop)
    else:
        src = CameraSource(parse_camera(settings.camera), width=settings.capture_width,
                           height=settings.capture_height, fps=settings.capture_fps)
    sinks = [make_sink(o, backend=settings.vcam_backend, width=settings.output_width, height=settings.output_height,
                       fps=settings.output_fps) for o in outputs]
    link = RemoteLink(args.remote, token, photo, consent=photo is not None, fps=settings.capture_fps or 30).start()
    runner = RemoteRunner(src, sinks, link)
    print(f"mirage: remote engine {args.remote}: camera -> server -> {', '.join(s.describe() for s in sinks)}; "
          "local pass-through while the server is away; Ctrl-C to stop", file=sys.stderr)
    try:
        runner.run(max_frames=args.frames, seconds=args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        link.stop()
    print(f"mirage: {runner.sent_remote} frames from the server, {runner.sent_local} passed through locally "
          f"({link.metrics.counter('remote.lost')} reconnects)", file=sys.stderr)
    return 0
