"""The pipeline's two ends over WebRTC: an incoming video track as a FrameSource (frames pushed
by the event loop, read by the capture thread) and a FrameSink whose frames leave as an
outgoing video track. Hand-offs keep only the newest frame, like the pipeline's own slots.
The session's converted voice leaves on :class:`VoiceOutTrack`.

Clocks: both outgoing tracks stamp their frames from ``time.perf_counter`` (the clock of the
pipeline's ``t_capture`` and of the voice stream) at hand-over, counted from one origin per
session: video on the 90 kHz clock, audio on the 48 kHz clock. aiortc's RTCP sender reports pair
each stream's last RTP timestamp with the wall clock of its sending, so both map onto the
server's wall clock."""

from __future__ import annotations

import asyncio
import fractions
import threading
import time

import numpy as np

VIDEO_CLOCK = 90_000  # RTP video clock rate
AUDIO_CLOCK = 48_000  # Opus: 48 kHz, 20 ms frames
AUDIO_FRAME = 960
REANCHOR_S = 0.100  # an audio frame asked for this late (a stalled loop): its pts jumps to the clock
READ_TIMEOUT_S = 0.2  # read() returns None after this: "nothing now", the capture loop asks again


class TrackSource:
    """FrameSource fed by :meth:`push` (the event loop); ``kind = "camera"``: a live source whose
    ``read()`` may return None for "nothing yet"."""

    kind = "camera"

    def __init__(self, name: str = "webrtc", fps: float = 30.0, on_drop=None):
        self.name, self.fps = name, fps
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._closed = False
        self.on_drop = on_drop
        self.pushed = 0

    def push(self, frame: np.ndarray) -> None:
        with self._cond:
            if self._frame is not None and self.on_drop is not None:
                self.on_drop()  # the worker had not taken the previous one: the newest wins
            self._frame = frame
            self.pushed += 1
            self._cond.notify_all()

    def read(self) -> np.ndarray | None:
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(READ_TIMEOUT_S)
            f, self._frame = self._frame, None
            return f

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _track_base():
    from aiortc import MediaStreamTrack

    return MediaStreamTrack


class FrameQueueTrack(_track_base()):
    """An outgoing video track: frames handed over by :meth:`offer` from any thread (newest wins),
    stamped on the 90 kHz clock from the time they were handed over."""

    kind = "video"

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: float | None = None):
        super().__init__()
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._t0: float | None = origin  # pts 0 (perf_counter); None: the first frame's hand-over
        self.sent = 0
        self.dropped = 0
        self.times: list[float] = []  # hand-over times of the last ~2 s (fps out)

    def offer(self, frame: np.ndarray) -> None:
        """Thread-safe."""
        try:
            self._loop.call_soon_threadsafe(self._put, frame, time.perf_counter())
        except RuntimeError:  # the loop is closed: the session is gone
            pass

    def _put(self, frame: np.ndarray, t: float) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait((frame, t))
        self.times.append(t)
        while self.times and t - self.times[0] > 2.0:
            self.times.pop(0)

    async def recv(self):
        import av
        from aiortc.mediastreams import MediaStreamError

        if self.readyState != "live":
            raise MediaStreamError
        frame, t = await self._queue.get()
        if self._t0 is None:
            self._t0 = t
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        vf.pts = int((t - self._t0) * VIDEO_CLOCK)
        vf.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return vf


class VoiceOutTrack(_track_base()):
    """An outgoing audio track: 20 ms frames of 48 kHz mono taken from ``read(n, t_handover)`` at
    real-time pace. pts = (hand-over time - ``origin``) x 48 kHz: it advances by 960 per frame while
    the frames are asked for on time, and jumps to the clock when one is asked for more than
    :data:`REANCHOR_S` late (a gap, not a burst of stale audio stamped in the past)."""

    kind = "audio"

    def __init__(self, read, origin: float):
        super().__init__()
        self.read = read
        self.origin = origin
        self._pts: int | None = None
        self.sent = 0
        self.reanchored = 0

    async def recv(self):
        import av
        from aiortc.mediastreams import MediaStreamError

        if self.readyState != "live":
            raise MediaStreamError
        now = time.perf_counter()
        if self._pts is None:
            self._pts = max(0, int(round((now - self.origin) * AUDIO_CLOCK)))
        else:
            self._pts += AUDIO_FRAME
            due = self.origin + self._pts / AUDIO_CLOCK
            if due > now:
                await asyncio.sleep(due - now)  # the pace of a sound card, not a wait for data
                now = time.perf_counter()
            if now - due > REANCHOR_S:
                self._pts = int(round((now - self.origin) * AUDIO_CLOCK))
                self.reanchored += 1
        t = self.origin + self._pts / AUDIO_CLOCK  # the hand-over time this frame's pts says
        x = self.read(AUDIO_FRAME, t)
        pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, AUDIO_CLOCK)
        self.sent += 1
        return frame


class TrackSink:
    """FrameSink: every processed frame goes out on :attr:`track`."""

    name = "webrtc"
    critical = False

    def __init__(self, track: FrameQueueTrack):
        self.track = track
        self.frames = 0

    def open(self, width: int, height: int, fps: float) -> None:
        pass

    def send(self, frame: np.ndarray) -> None:
        self.track.offer(frame)
        self.frames += 1

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "WebRTC track to the client"


def fps_of(times: list[float]) -> float:
    """Frames per second over a list of recent times."""
    ts = list(times)
    if len(ts) < 2 or ts[-1] <= ts[0]:
        return 0.0
    return (len(ts) - 1) / (ts[-1] - ts[0])


_ice_lock = threading.Lock()
_ice_original = None


def restrict_ice_addresses(addresses: list[str] | None) -> None:
    """Gather ICE host candidates only on ``addresses`` (None: every interface, aioice's default).

    A server bound to 127.0.0.1 must not offer its media on the machine's other interfaces, and
    aioice leaves loopback out by default; this applies process-wide (aioice reads the function
    from its module when it gathers)."""
    global _ice_original
    import aioice.ice as ice

    with _ice_lock:
        if _ice_original is None:
            _ice_original = ice.get_host_addresses
        if addresses is None:
            ice.get_host_addresses = _ice_original
            return
        chosen = list(addresses)

        def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

        ice.get_host_addresses = host_addresses
