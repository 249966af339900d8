"""The desktop as a client of `mirage serve` (``mirage run --remote URL --token-file T``): the
local camera goes to the server, the swapped video comes back to the local virtual camera.

The output never freezes: whenever no processed frame has come back for ``stale_s`` the local
camera frame goes out as it is (pass-through, said in the status), and the link reconnects with
a back-off (0.5 s, 1 s, 2 s ... 10 s) until the server is back.

A/V sync (docs/serving.md, "The desktop client's A/V sync"): every returned video frame and audio
block is mapped onto the server's clock from its RTP timestamp and the RTCP sender reports (``serve/rtpclock.py``); the
audio bridge measures the audio's path from that time to the moment it plays (the virtual
microphone's reported DAC time, in its output callback), and the runner's output thread holds
each returned frame until its server time + that latency, with the local engine's
``control/avsync.py`` rules (audio is the master and never stretched; slew; late frames dropped
past 150 ms; ``av.offset_ms`` and the other ``av.*`` metrics). Without audio coming back there is
no hold."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time

import numpy as np

from ..control.avsync import AVSync
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
        self._timed: collections.deque = collections.deque(maxlen=8)  # (image, local time, mode): the hold's
        self._timed_cond = threading.Condition()
        self.session = None  # the current RemoteSession (its clock says rtp / arrival)
        self.last_processed_t = 0.0
        self._lock = threading.Lock()
        self.audio: "AudioBridge | None" = None  # the microphone's way, when there is one
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()  # stop() was called (also before the loop exists)

    # ---- the caller's side (any thread) ----------------------------------------------------------
    def start(self) -> "RemoteLink":
        self._thread = threading.Thread(target=self._run, name="mirage-remote", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop now: an attempt being connected is cancelled, not waited out. Safe before the
        thread has made its loop (it then ends at once) and after the loop has closed."""
        self._halt.set()
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # the loop has closed: the thread is ending anyway
                pass
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

    def take_timed(self) -> list:
        """The processed frames come back since the last call, oldest first, as (image, local time it
        stands for on the server's clock, mode "rtp" / "arrival"): what the A/V hold takes."""
        with self._timed_cond:
            out = list(self._timed)
            self._timed.clear()
            return out

    def wait_timed(self, timeout: float) -> None:
        """Until a processed frame is there for :meth:`take_timed`, or ``timeout`` s."""
        with self._timed_cond:
            if not self._timed:
                self._timed_cond.wait(max(0.0, timeout))

    @property
    def clock_mode(self) -> str:
        """How the current connection's returned tracks are timed: ``rtp`` or ``arrival``."""
        rs = self.session
        return rs.clock.mode if rs is not None else "arrival"

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
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        self._loop, self._stop = loop, stop
        if self._halt.is_set():  # stop() came before the loop was there to take it
            stop.set()
        try:
            loop.run_until_complete(self._keep_connected())
        finally:
            loop.close()

    async def _unless_stopped(self, aw) -> bool:
        """Await ``aw`` unless stop() comes first (then ``aw`` is cancelled): True when it ended by
        itself (its exception, if any, is raised)."""
        assert self._stop is not None
        task = asyncio.ensure_future(aw)
        halt = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, halt}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            halt.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        task.result()
        return True

    def _next_local(self, n: int) -> np.ndarray | None:
        with self._local_cond:
            f, self._local = self._local, None
            return f

    def _got(self, img: np.ndarray, t: float) -> None:
        with self._lock:
            self._processed = (img, t)
            self.last_processed_t = t
        self.metrics.incr("remote.frames_back")
        self.metrics.set_gauge("av.clock", self.clock_mode)
        if self.state != "connected":
            self.state, self.error, self.attempt, self.retry_at = "connected", None, 0, None
            self.metrics.incr("remote.connected")
            log.warning("remote engine: connected to %s", self.url)

    def on_connected(self, rs) -> None:
        """Runs on the link's event loop once ``rs`` (a :class:`~.client.RemoteSession`) is connected;
        its control channel may still be opening. For subclasses: the window forwards its options
        and a photo chosen meanwhile from here."""

    def call_soon(self, fn, *args) -> bool:
        """Run ``fn(*args)`` on the link's event loop (from any thread); False when it is gone."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile
            return False
        return True

    def _got_timed(self, img: np.ndarray, t: float, t_ref: float, mode: str) -> None:
        self._got(img, t)
        with self._timed_cond:
            self._timed.append((img, t_ref, mode))
            self._timed_cond.notify_all()

    async def _keep_connected(self) -> None:
        from .client import FeedAudioTrack, FeedTrack, RemoteSession, ServeError

        assert self._stop is not None
        while not self._stop.is_set():
            bridge = self.audio
            rs = RemoteSession(self.url, self.token, ssl_verify=self.ssl_verify, on_timed_frame=self._got_timed,
                               on_timed_audio=bridge.on_back if bridge is not None else None)
            self.session = rs
            t_start = time.monotonic()
            try:
                audio = FeedAudioTrack(bridge.next_mic_block) if bridge is not None else None
                rs.with_photo = photo = self.photo  # what this session starts with (on_connected may differ)
                if not await self._unless_stopped(asyncio.wait_for(
                        rs.connect(FeedTrack(self._next_local, self.fps), audio=audio, photo=photo,
                                   consent=self.consent and photo is not None), self.connect_timeout_s)):
                    break  # stopped while connecting (the finally below closes the attempt)
                try:
                    self.on_connected(rs)
                except Exception:  # a subclass's hook must not end the attempt
                    log.exception("remote engine: the on_connected hook failed")
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


TARGET_BACK_S = 0.04  # the returned audio the bridge keeps queued at least, at most for a window
STANDING_WINDOW = 25  # output callbacks (~0.5 s at 20 ms) the queue must stay above that to be cut
LATENCY_WINDOW = 9  # output callbacks the audio path's latency is the median of (~0.2 s at 20 ms)


class AudioBridge:
    """The microphone's way: the local microphone to the link, the audio that comes back to the
    virtual microphone, and the local microphone itself whenever nothing has come back for
    ``stale_s`` (the same pass-through as the video). Mono float32 at 48 kHz, 20 ms blocks.

    ``on_mic`` and ``fill`` are made for sound-device callbacks (never block, never allocate much);
    the returned audio is kept to ``max_back_s`` so a stall never turns into lasting delay, and
    what stays queued for a whole window above ``TARGET_BACK_S`` is cut (``remote.audio_standing_cut``).

    Each returned block keeps the local time it stands for on the server's clock (``on_back``'s
    ``t_ref``; its arrival without one). ``fill`` measures, for its first returned sample, the
    path from that time to the moment it plays: the callback's time plus the delay to the DAC
    (PortAudio's ``outputBufferDacTime - currentTime``, as the voice pipeline reads it), or plus
    ``out_latency_s`` when the host API reports no times. :meth:`audio_latency_s` is the median
    of the last few: what the returned video is held by."""

    def __init__(self, stale_s: float = 0.5, max_back_s: float = 0.2, rate: int = 48_000, metrics=None,
                 clock=time.monotonic):
        self.stale_s, self.rate = stale_s, rate
        self.max_back = int(max_back_s * rate)
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._mic: collections.deque = collections.deque()  # samples for the link
        self._local: collections.deque = collections.deque()  # the same, for pass-through
        self._back: collections.deque = collections.deque()  # [samples, local time of the first, mode]
        self._mic_n = self._local_n = self._back_n = 0
        self._lock = threading.Lock()
        self.last_back_t = 0.0
        self.last_kind = ""
        self.out_latency_s = 0.0  # the output stream's static latency: used when no DAC time is reported
        self._lat: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)  # (mode, seconds)
        # the queue's standing level: what it never went below in the last STANDING_WINDOW callbacks
        # (a burst at a (re)connect leaves it near max_back for good, all of it added delay)
        self.target_back = int(TARGET_BACK_S * rate)
        self._levels: collections.deque = collections.deque(maxlen=STANDING_WINDOW)

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

    def on_back(self, x: np.ndarray, sr: int, t: float, t_ref: float | None = None, mode: str = "arrival") -> None:
        """A block from the server: arrived at ``t``, standing for local time ``t_ref`` (its first
        sample) on the server's clock (``mode`` "rtp"), or for its arrival (``mode`` "arrival")."""
        if sr != self.rate:
            from ..voice.resample import resample_block

            x = resample_block(x, sr, self.rate)
        x = np.asarray(x, np.float32).reshape(-1)
        with self._lock:
            self._back.append([x, t if t_ref is None else t_ref, mode if t_ref is not None else "arrival"])
            self._back_n += x.size
            while self._back_n - self._back[0][0].size >= self.max_back:
                self._back_n -= self._back.popleft()[0].size
                self.metrics.incr("remote.audio_trimmed")  # a burst past max_back: the oldest goes
            self.last_back_t = t
        self.metrics.incr("remote.audio_back")

    def _pull_back(self, n: int) -> tuple[np.ndarray, float | None, str]:
        """``n`` returned samples (zeros past the end), the local time of the first, its mode."""
        out = np.zeros(n, np.float32)
        t0, mode = None, "arrival"
        got = 0
        had = self._back_n
        while self._back and got < n:
            e = self._back[0]
            a = e[0]
            if t0 is None:
                t0, mode = e[1], e[2]
            k = min(a.size, n - got)
            out[got:got + k] = a[:k]
            got += k
            if k == a.size:
                self._back.popleft()
            else:
                e[0] = a[k:]
                e[1] += k / self.rate
            self._back_n -= k
        if had and got < n:
            self.metrics.incr("remote.audio_underruns")  # ran dry while playing: the rest plays later
        return out, t0, mode

    def _cut_standing(self) -> None:
        """Drop the part of the returned audio that has waited in the queue for a whole window:
        the queue keeps what the network's jitter needs (it went that low lately), not what a
        burst left behind. Called under the lock, before a callback pulls."""
        self._levels.append(self._back_n)
        if len(self._levels) < STANDING_WINDOW:
            return
        excess = min(self._levels) - self.target_back
        if excess <= 0:
            return
        self._levels.clear()
        cut = 0
        while self._back and cut < excess:
            e = self._back[0]
            k = min(e[0].size, excess - cut)
            if k == e[0].size:
                self._back.popleft()
            else:
                e[0] = e[0][k:]
                e[1] += k / self.rate
            cut += k
        self._back_n -= cut
        self.metrics.incr("remote.audio_standing_cut")
        self.metrics.record("remote.audio_cut_ms", cut * 1000.0 / self.rate)

    def fill(self, n: int, time_info=None) -> np.ndarray:
        """``n`` samples for the virtual microphone: the server's audio, or the local microphone.
        ``time_info``: the output callback's (its DAC time is when these samples play)."""
        now = self.clock()
        t0 = None
        with self._lock:
            if now - self.last_back_t <= self.stale_s:
                self._cut_standing()
                out, t0, mode = self._pull_back(n)
                kind = "remote"
            else:
                self._back.clear()
                self._back_n = 0
                self._lat.clear()
                out, self._local_n = self._pull(self._local, self._local_n, n)
                kind = "local"
            # the pass-through copy stays current either way
            if kind == "remote":
                _, self._local_n = self._pull(self._local, self._local_n, min(n, self._local_n))
            if t0 is not None:
                from ..voice.pipeline import _dac_delay_s

                delay = _dac_delay_s(time_info)
                played = now + (self.out_latency_s if delay is None else delay)
                self._lat.append((mode, played - t0))
        if t0 is not None:
            self.metrics.record("remote.audio_path", (played - t0) * 1000.0)
        self.last_kind = kind
        self.metrics.incr(f"remote.audio_{kind}_blocks")
        return out

    def audio_latency_s(self, mode: str | None = None) -> float | None:
        """The returned audio's path (server time -> played), the median of the last few output
        callbacks measured in ``mode`` (any when None); None when no server audio plays now."""
        if self.clock() - self.last_back_t > self.stale_s:
            return None
        with self._lock:
            vals = sorted(v for m, v in self._lat if mode is None or m == mode)
        if len(vals) < 3:
            return None
        return vals[len(vals) // 2]


class _Held:
    """A returned frame in the hold: ``t_capture`` is the local time it stands for on the server's
    clock (what AVSync holds it from)."""

    __slots__ = ("frame", "t_capture", "mode", "due")

    def __init__(self, frame: np.ndarray, t: float, mode: str):
        self.frame, self.t_capture, self.mode = frame, t, mode
        self.due = t


class RemoteAVSync(AVSync):
    """control/avsync.py's hold, with :meth:`clear` for a link gone stale (frames from before the
    loss must not come out after the local pass-through started)."""

    def clear(self) -> int:
        n = len(self._held)
        self._held.clear()
        if n:
            self._count("dropped.av_stale", n)
        return n


class RemoteRunner:
    """Camera -> link -> sinks, with local pass-through whenever the link has nothing fresh.

    The camera loop (the caller's thread) sends each local frame to the link, and passes it to the
    sinks itself while nothing comes back. An output thread takes the returned frames, holds each
    in :attr:`avsync` until its server time + the returned audio's path latency (no hold without
    audio coming back) and sends it. Until the first held frame has left (a link gained or
    regained), the local frames keep going out: the picture never stops. On ``on_frame``: it is
    called from either thread (one at a time, under the sinks' lock)."""

    def __init__(self, source, sinks: list, link: RemoteLink, metrics: Metrics | None = None,
                 clock=time.monotonic):
        self.source, self.sinks, self.link = source, sinks, link
        self.metrics = metrics or link.metrics
        self.clock = clock
        self.avsync = RemoteAVSync(self.metrics, clock=clock)
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        # the hold: the output thread fills and empties it, the camera loop clears it
        self._hold_lock = threading.Lock()
        self.sent_remote = 0
        self.sent_local = 0
        self.last_kind = ""
        self.last_remote_t = 0.0  # when a returned frame last left
        self.send_late_s = 0.0  # how much later than its due time the frame being sent leaves
        # no returned frame has left since the link was (re)gained: the camera loop passes the local
        # frames through meanwhile; once one has left, only a stale link brings them back (the local
        # picture never alternates with swapped frames the hold drops as late)
        self._awaiting_remote = True
        self.on_frame = None  # (kind, frame) after each send: tests, the window's preview

    def stop(self) -> None:
        self._stop.set()

    def run(self, max_frames: int | None = None, seconds: float | None = None) -> None:
        t0 = time.monotonic()
        opened = []
        out_thread = None
        try:
            for s in self.sinks:
                s.open(*(getattr(self.source, "size", None) or (0, 0)), getattr(self.source, "fps", 30) or 30)
                opened.append(s)
            out_thread = threading.Thread(target=self._output_loop, name="mirage-remote-out", daemon=True)
            out_thread.start()
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
                self.camera_frame(frame)
        finally:
            self._stop.set()
            if out_thread is not None:
                out_thread.join(10.0)
            for s in opened:
                try:
                    s.close()
                except Exception as exc:
                    log.warning("closing %s failed: %s", s.describe(), exc)
            try:
                self.source.close()
            except Exception:
                pass

    def camera_frame(self, frame: np.ndarray) -> None:
        """One local camera frame (the camera loop): to the link, and to the sinks while nothing
        comes back."""
        self.link.submit(frame)
        if self.link.stale(self.link.stale_s):
            self._awaiting_remote = True
            with self._hold_lock:
                self.avsync.clear()  # nothing held from before the loss comes out after the local frames
            self._send(frame, "local")  # never a frozen camera: the local picture, unswapped
        elif self._awaiting_remote:
            self._send(frame, "local")  # frames are back but the first is still held: keep moving

    def _update_master(self, mode: str) -> None:
        """The hold's master latency: the returned audio's path measured on ``mode``'s clock; none
        when no server audio plays. While audio plays but has no measurement on this clock yet (the
        first callbacks after the link's clock went from arrival to RTP times) the last one stays:
        the hold must not collapse and ease in again."""
        bridge = self.link.audio
        lat = None if bridge is None else bridge.audio_latency_s(mode)
        playing = bridge is not None and bridge.clock() - bridge.last_back_t <= bridge.stale_s
        if lat is not None or not playing:
            self.avsync.set_audio_latency(lat)

    def step(self, now: float | None = None) -> float | None:
        """One turn of the output thread: take the returned frames into the hold, send those due.
        Returns when the next held frame is due (None: nothing held)."""
        with self._hold_lock:
            for img, t_ref, mode in self.link.take_timed():
                self._update_master(mode)
                pkt = _Held(img, t_ref, mode)
                if self.avsync.push(pkt, now):
                    pkt.due = t_ref + self.avsync.delay_s  # what the hold gave it (AVSync's own due)
                self.metrics.set_gauge("av.mode", "remote " + mode)
            due = self.avsync.pop_due(now)
        for pkt in due:
            if self.link.stale(self.link.stale_s):
                self.metrics.incr("dropped.av_stale")  # the local pass-through has taken over
                continue
            t_out = self.clock() if now is None else now
            self.send_late_s = max(0.0, t_out - pkt.due)  # this thread woke late (a loaded machine)
            self._send(pkt.frame, "remote")
            with self._hold_lock:
                self.avsync.sent(pkt, t_out)
        with self._hold_lock:
            return self.avsync.next_due()

    def _output_loop(self) -> None:
        while not self._stop.is_set():
            try:
                due = self.step()
            except Exception:  # a bug here must not end the stream: the camera loop passes through
                log.exception("remote engine: the output thread failed a step")
                due = None
            wait = 0.1 if due is None else min(0.1, due - self.clock())
            if wait > 0:
                self.link.wait_timed(wait)

    def _send(self, frame: np.ndarray, kind: str) -> None:
        with self._send_lock:
            for s in self.sinks:
                try:
                    s.send(frame)
                except Exception as exc:
                    self.metrics.incr(f"errors.output:{s.name}")
                    log.warning("%s failed: %s", s.describe(), exc)
            if kind == "remote":
                self.sent_remote += 1
                self.last_remote_t = self.clock()
                self._awaiting_remote = False
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
    for line in sync_summary(link.metrics.snapshot()):
        print(f"mirage: {line}", file=sys.stderr)
    return 0


def sync_summary(snap: dict) -> list[str]:
    """The remote A/V lines of the run summary (the local engine's, with the remote's clock)."""
    from ..commands.run import av_summary

    g = snap["gauges"]
    mode = str(g.get("av.mode", "remote"))
    what = {"remote rtp": "remote engine, RTP timestamps",
            "remote arrival": "remote engine, arrival times"}.get(mode, mode)
    lines = av_summary(snap, what)
    if not lines and snap["counters"].get("remote.sent_remote"):
        lines.append("A/V (remote engine): no server audio played to a virtual microphone, the video was not held")
    return lines


def open_audio(link: RemoteLink, settings, output_latency: float | str = "low") -> list:
    """The microphone to the server and its audio to the virtual microphone, when there is one
    (else the remote mode is video only, said once). Returns the started streams.
    ``output_latency``: the virtual microphone stream's suggested latency (PortAudio's; its
    reported DAC times say what it really is, and the video is held by that)."""
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
        outdata[:, 0] = bridge.fill(frames, t)  # t: PortAudio's time_info, the DAC time of these samples

    try:
        out = open_stream(resolve_device(out_name, "output"), bridge.rate, 960, play, channels=1,
                          latency=output_latency)
    except MirageError as exc:
        mic.close()
        print(f"mirage: cannot open {out_name} for the remote engine: {exc}; video only", file=sys.stderr)
        return []
    try:
        bridge.out_latency_s = float(out.latency)  # when the host API reports no DAC times
    except (AttributeError, TypeError, ValueError):
        pass
    link.audio = bridge
    mic.start()
    out.start()
    print(f"mirage: microphone -> server -> {out_name} (the local microphone while the server is away)",
          file=sys.stderr)
    return [mic, out]
