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
        self.audio: "AudioBridge | None" = None  # the microphone's way, when there is one
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
        from .client import FeedAudioTrack, FeedTrack, RemoteSession, ServeError

        assert self._stop is not None
        while not self._stop.is_set():
            bridge = self.audio
            rs = RemoteSession(self.url, self.token, on_frame=self._got, ssl_verify=self.ssl_verify,
                               on_audio=bridge.on_back if bridge is not None else None)
            t_start = time.monotonic()
            try:
                audio = FeedAudioTrack(bridge.next_mic_block) if bridge is not None else None
                await asyncio.wait_for(rs.connect(FeedTrack(self._next_local, self.fps), audio=audio,
                                                  photo=self.photo, consent=self.consent), self.connect_timeout_s)
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
            # known gone: the outputs pass the local camera and microphone through from now
            with self._lock:
                self.last_processed_t = 0.0
            if bridge is not None:
                bridge.last_back_t = 0.0
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


class AudioBridge:
    """The microphone's way: the local microphone to the link, the audio that comes back to the
    virtual microphone, and the local microphone itself whenever nothing has come back for
    ``stale_s`` (the same pass-through as the video). Mono float32 at 48 kHz, 20 ms blocks.

    ``on_mic`` and ``fill`` are made for sound-device callbacks (never block, never allocate much);
    the returned audio is kept to ``max_back_s`` so a stall never turns into lasting delay."""

    def __init__(self, stale_s: float = 0.5, max_back_s: float = 0.2, rate: int = 48_000, metrics=None):
        import collections

        self.stale_s, self.rate = stale_s, rate
        self.max_back = int(max_back_s * rate)
        self.metrics = metrics or Metrics()
        self._mic: collections.deque = collections.deque()  # samples for the link
        self._local: collections.deque = collections.deque()  # the same, for pass-through
        self._back: collections.deque = collections.deque()
        self._mic_n = self._local_n = self._back_n = 0
        self._lock = threading.Lock()
        self.last_back_t = 0.0
        self.last_kind = ""

    @staticmethod
    def _push(q, n: int, x: np.ndarray, limit: int) -> int:
        q.append(x)
        n += x.size
        while n - q[0].size >= limit:
            n -= q.popleft().size
        return n

    @staticmethod
    def _pull(q, n: int, want: int) -> tuple[np.ndarray, int]:
        out = np.zeros(want, np.float32)
        got = 0
        while q and got < want:
            a = q[0]
            k = min(a.size, want - got)
            out[got:got + k] = a[:k]
            got += k
            if k == a.size:
                q.popleft()
            else:
                q[0] = a[k:]
            n -= k
        return out, n

    def on_mic(self, block: np.ndarray) -> None:
        x = np.asarray(block, np.float32).reshape(-1)
        with self._lock:
            self._mic_n = self._push(self._mic, self._mic_n, x, self.rate // 2)
            self._local_n = self._push(self._local, self._local_n, x, self.rate // 10)

    def next_mic_block(self, n: int) -> np.ndarray | None:
        with self._lock:
            if self._mic_n == 0:
                return None
            out, self._mic_n = self._pull(self._mic, self._mic_n, n)
            return out

    def on_back(self, x: np.ndarray, sr: int, t: float) -> None:
        if sr != self.rate:
            from ..voice.resample import resample_block

            x = resample_block(x, sr, self.rate)
        with self._lock:
            self._back_n = self._push(self._back, self._back_n, np.asarray(x, np.float32), self.max_back)
            self.last_back_t = t
        self.metrics.incr("remote.audio_back")

    def fill(self, n: int) -> np.ndarray:
        """``n`` samples for the virtual microphone: the server's audio, or the local microphone."""
        with self._lock:
            if time.monotonic() - self.last_back_t <= self.stale_s:
                out, self._back_n = self._pull(self._back, self._back_n, n)
                kind = "remote"
            else:
                self._back.clear()
                self._back_n = 0
                out, self._local_n = self._pull(self._local, self._local_n, n)
                kind = "local"
            # the pass-through copy stays current either way
            if kind == "remote":
                _, self._local_n = self._pull(self._local, self._local_n, min(n, self._local_n))
        self.last_kind = kind
        self.metrics.incr(f"remote.audio_{kind}_blocks")
        return out


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
    link = RemoteLink(args.remote, token, photo, consent=photo is not None, fps=settings.capture_fps or 30)
    streams = open_audio(link, settings)
    link.start()
    runner = RemoteRunner(src, sinks, link)
    print(f"mirage: remote engine {args.remote}: camera -> server -> {', '.join(s.describe() for s in sinks)}; "
          "local pass-through while the server is away; Ctrl-C to stop", file=sys.stderr)
    try:
        runner.run(max_frames=args.frames, seconds=args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        for st in streams:
            try:
                st.stop()
                st.close()
            except Exception:
                pass
        link.stop()
    print(f"mirage: {runner.sent_remote} frames from the server, {runner.sent_local} passed through locally "
          f"({link.metrics.counter('remote.lost')} reconnects)", file=sys.stderr)
    return 0


def open_audio(link: RemoteLink, settings) -> list:
    """The microphone to the server and its audio to the virtual microphone, when there is one
    (else the remote mode is video only, said once). Returns the started streams."""
    import sys

    from ..engine import virtual_microphone

    out_name = virtual_microphone(settings)
    if out_name is None:
        print("mirage: no virtual microphone: the remote engine carries the video only "
              "(`mirage mic create` makes one)", file=sys.stderr)
        return []
    from ..errors import MirageError
    from ..voice.audio_io import open_stream, resolve_device

    bridge = AudioBridge(stale_s=link.stale_s, metrics=link.metrics)
    try:
        mic = open_stream(resolve_device(settings.voice_input, "input"), bridge.rate, 960,
                          lambda indata, frames, t, status: bridge.on_mic(indata[:, 0].copy()), channels=1)
    except MirageError as exc:
        print(f"mirage: no microphone for the remote engine: {exc}; video only", file=sys.stderr)
        return []

    def play(outdata, frames, t, status):
        outdata[:, 0] = bridge.fill(frames)

    try:
        out = open_stream(resolve_device(out_name, "output"), bridge.rate, 960, play, channels=1)
    except MirageError as exc:
        mic.close()
        print(f"mirage: cannot open {out_name} for the remote engine: {exc}; video only", file=sys.stderr)
        return []
    link.audio = bridge
    mic.start()
    out.start()
    print(f"mirage: microphone -> server -> {out_name} (the local microphone while the server is away)",
          file=sys.stderr)
    return [mic, out]
