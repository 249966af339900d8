"""An aiortc client of `mirage serve`: sends frames as a video track, receives the processed
track, talks on the control channel. Used by the desktop's remote mode, the tests and the
benchmark. Frames can carry a stamp (a frame number drawn as blocks in the bottom-left corner,
away from the face and the "AI" mark) so the round trip of each frame can be measured."""

from __future__ import annotations

import asyncio
import base64
import fractions
import json
import time
from typing import Callable

import numpy as np

from .tracks import VIDEO_CLOCK

STAMP_BITS = 12
STAMP_BLOCK = 8  # px per bit: survives VP8 at low bitrates


def stamp(frame: np.ndarray, n: int) -> np.ndarray:
    """Draw ``n`` (mod 2**12) as black/white blocks in the bottom-left corner, in place."""
    h = frame.shape[0]
    b = STAMP_BLOCK
    for i in range(STAMP_BITS):
        frame[h - b:h, i * b:(i + 1) * b] = 255 if (n >> i) & 1 else 0
    return frame


def read_stamp(frame: np.ndarray) -> int:
    h = frame.shape[0]
    b = STAMP_BLOCK
    n = 0
    for i in range(STAMP_BITS):
        block = frame[h - b + 2:h - 2, i * b + 2:(i + 1) * b - 2]
        if float(block.mean()) > 127:
            n |= 1 << i
    return n


def _track_base():
    from aiortc import MediaStreamTrack

    return MediaStreamTrack


class FeedTrack(_track_base()):
    """A video track whose frames come from ``frame_fn(n) -> BGR ndarray``, at ``fps``."""

    kind = "video"

    def __init__(self, frame_fn: Callable[[int], np.ndarray | None], fps: float = 30.0,
                 on_sent: Callable[[int, float], None] | None = None):
        super().__init__()
        self.frame_fn, self.fps, self.on_sent = frame_fn, fps, on_sent
        self.n = 0
        self._t0: float | None = None

    async def recv(self):
        import av

        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + self.n / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing of a camera, not a test wait
        else:
            self._t0 -= delay  # behind (a slow machine): do not burst to catch up
        img = None
        while img is None:
            img = self.frame_fn(self.n)
            if img is None:
                await asyncio.sleep(1.0 / self.fps)
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
        vf.pts = int(self.n * VIDEO_CLOCK / self.fps)
        vf.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        if self.on_sent is not None:
            self.on_sent(self.n, time.monotonic())
        self.n += 1
        return vf


class ServeError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


class RemoteSession:
    """One connection to a server. ``on_frame(bgr, t)`` runs on the event loop for every
    processed frame received."""

    def __init__(self, url: str, token: str, on_frame: Callable[[np.ndarray, float], None] | None = None,
                 ssl_verify: bool | object = True, on_audio: Callable[[np.ndarray, int, float], None] | None = None,
                 on_timed_frame: Callable[[np.ndarray, float, float, str], None] | None = None,
                 on_timed_audio: Callable[[np.ndarray, int, float, float, str], None] | None = None):
        from .rtpclock import LinkClock

        self.on_audio = on_audio  # (float32 mono samples, sample rate, arrival time) per received block
        # the same with the time each stands for on the server's clock (serve/rtpclock.py):
        # (image, arrival, local time, mode) and (samples, rate, arrival, local time, mode)
        self.on_timed_frame, self.on_timed_audio = on_timed_frame, on_timed_audio
        self.clock = LinkClock()
        self.audio_received = 0
        self._audio_task: asyncio.Task | None = None
        self.url = url.rstrip("/")
        self.token = token
        self.on_frame = on_frame
        self.ssl_verify = ssl_verify
        self.pc = None
        self.control = None
        self.session_id: str | None = None
        self.frames_received = 0
        self.closed_reason: str | None = None
        self.with_photo: bytes | None = None  # the photo this session was opened with (RemoteLink sets it)
        self.identity_sent = False  # a photo was sent to it after it opened
        self.pongs: list[dict] = []  # the last 50 replies to ping
        self.pongs_total = 0  # replies ever received (the list keeps only the last ones)
        self.ended = asyncio.Event()
        self._recv_task: asyncio.Task | None = None

    async def _post(self, path: str, body: dict) -> dict:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.post(self.url + path, json=body, ssl=self.ssl_verify,
                                 headers={"Authorization": f"Bearer {self.token}"},
                                 timeout=aiohttp.ClientTimeout(total=60)) as r:
                data = await r.json(content_type=None)
                if r.status != 200:
                    raise ServeError(r.status, data.get("error") or data.get("reason") or str(data))
                return data

    async def connect(self, video: FeedTrack, audio=None, photo: bytes | None = None, consent: bool = False,
                      name: str = "remote") -> dict:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        self.pc = pc = RTCPeerConnection()
        self.control = pc.createDataChannel("control")
        self.control.on("message", self._on_control)
        pc.addTrack(video)
        if audio is not None:
            pc.addTrack(audio)

        @pc.on("track")
        def on_track(track):
            if track.kind in ("video", "audio"):  # the server's clock for this track (RTCP sender reports)
                receiver = next((t.receiver for t in pc.getTransceivers()
                                 if getattr(t.receiver, "track", None) is track), None)
                self.clock.attach(track.kind, receiver)
            if track.kind == "video":
                self._recv_task = asyncio.ensure_future(self._receive(track))
            elif track.kind == "audio":
                self._audio_task = asyncio.ensure_future(self._receive_audio(track))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                self.closed_reason = self.closed_reason or f"connection {pc.connectionState}"
                self.ended.set()

        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "name": name}
        if photo is not None:
            body["photo"] = base64.b64encode(photo).decode()
            body["consent"] = consent
        try:
            ans = await self._post("/offer", body)
        except BaseException:
            await pc.close()
            raise
        self.session_id = ans["session"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=ans["sdp"], type=ans["type"]))
        return ans

    async def set_identity(self, photo: bytes, consent: bool, name: str = "remote") -> dict:
        return await self._post(f"/sessions/{self.session_id}/identity",
                                {"photo": base64.b64encode(photo).decode(), "consent": consent, "name": name})

    async def _receive(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                f = await track.recv()
                img = f.to_ndarray(format="bgr24")
                self.frames_received += 1
                now = time.monotonic()
                if self.on_frame is not None:
                    self.on_frame(img, now)
                if self.on_timed_frame is not None:
                    t, mode = self.clock.local_time("video", f.pts, f.time_base, now)
                    self.on_timed_frame(img, now, t, mode)
        except MediaStreamError:
            self.closed_reason = self.closed_reason or "the server's video ended"
        finally:
            self.ended.set()

    async def _receive_audio(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                f = await track.recv()
                self.audio_received += 1
                now = time.monotonic()
                x = audio_samples(f) if self.on_audio is not None or self.on_timed_audio is not None else None
                if self.on_audio is not None:
                    self.on_audio(x, f.sample_rate, now)
                if self.on_timed_audio is not None:
                    t, mode = self.clock.local_time("audio", f.pts, f.time_base, now)
                    self.on_timed_audio(x, f.sample_rate, now, t, mode)
        except MediaStreamError:
            pass

    def _on_control(self, msg) -> None:
        try:
            m = json.loads(msg)
        except ValueError:
            return
        if m.get("type") == "pong":
            m["rtt_ms"] = (time.monotonic() - float(m.get("t") or 0)) * 1000
            self.pongs_total += 1
            m["seq"] = self.pongs_total  # readers take the ones above the last they saw
            self.pongs.append(m)
            del self.pongs[:-50]
        elif m.get("type") == "closed":
            self.closed_reason = m.get("reason")

    def send_control(self, obj: dict | str) -> None:
        if self.control is not None and self.control.readyState == "open":
            self.control.send(obj if isinstance(obj, str) else json.dumps(obj))

    def ping(self) -> None:
        self.send_control({"type": "ping", "t": time.monotonic()})

    async def close(self) -> None:
        for task in (self._recv_task, self._audio_task):
            if task is not None:
                task.cancel()
        if self.pc is not None:
            await self.pc.close()
        self.ended.set()


AUDIO_RATE = 48_000
AUDIO_BLOCK = 960  # 20 ms, what Opus carries per packet


class FeedAudioTrack(_track_base()):
    """An audio track of 20 ms blocks from ``block_fn(n_samples) -> float32 mono in [-1, 1]``
    (None: silence), paced at real time."""

    kind = "audio"

    def __init__(self, block_fn: Callable[[int], np.ndarray | None]):
        super().__init__()
        self.block_fn = block_fn
        self.n = 0
        self._t0: float | None = None

    async def recv(self):
        import av

        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + self.n * AUDIO_BLOCK / AUDIO_RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # a microphone's pace
        else:
            self._t0 -= delay
        x = self.block_fn(AUDIO_BLOCK)
        pcm = np.zeros(AUDIO_BLOCK, np.int16) if x is None else \
            (np.clip(np.asarray(x, np.float32)[:AUDIO_BLOCK], -1, 1) * 32767).astype(np.int16)
        if pcm.size < AUDIO_BLOCK:
            pcm = np.pad(pcm, (0, AUDIO_BLOCK - pcm.size))
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.n * AUDIO_BLOCK
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self.n += 1
        return frame


def audio_samples(frame) -> np.ndarray:
    """A received av.AudioFrame as float32 mono."""
    a = frame.to_ndarray()
    fmt = frame.format.name
    ch = len(frame.layout.channels)
    if frame.format.is_planar:
        x = a.astype(np.float32).mean(axis=0) if a.shape[0] > 1 else a[0].astype(np.float32)
    else:
        x = a.reshape(-1, ch).astype(np.float32).mean(axis=1)
    if fmt.startswith("s16"):
        x = x / 32768.0
    elif fmt.startswith("s32"):
        x = x / 2147483648.0
    return x
