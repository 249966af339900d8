"""One client of `mirage serve`: its peer connection, its own engine (on the server's shared
models) with its own identity, and the rules it is held to (frame guard, anomaly window,
control-message limits, idle timeout, maximum length). A session's failure closes that session
only: every step that can raise is caught here and becomes its close reason.

Voice: the client's microphone track goes through the session's own
:class:`~mirage_desktop.voice.stream.VoiceStream` (a worker thread; the converter the server is
configured with, WORLD by default, an RVC model loaded once per server and shared) and leaves on
:class:`~.tracks.VoiceOutTrack`. While it converts, the session's video is held to it
(``Engine.set_audio_master``: AVSync in the video pipeline, as on the desktop), so a video frame and
the converted audio that arrived with it are handed to their tracks at the same moment. With
voice off (or a converter that failed: the reason in ``describe()["voice"]`` and a ``voice`` message
on the control channel) the voice goes back as it came, and the video is not held."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MirageError
from ..metrics import Metrics
from .auth import RateLimiter
from .guard import FrameGuard
from .tracks import FrameQueueTrack, TrackSink, TrackSource, VoiceOutTrack, fps_of

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger(__name__)

# settings a client may change on its own session (never the visible "AI" mark, never a model)
CLIENT_OPTIONS = ("enable_swap", "max_faces", "enable_color_transfer", "enable_mouth_mask", "enable_smoothing")
# the session's voice (its own stream, not the engine's settings): on/off and the converter's options
VOICE_OPTIONS = ("enable_voice", "voice_pitch", "voice_formant", "voice_preset")


class Session:
    def __init__(self, server: "Server", remote: str):
        from aiortc import RTCPeerConnection

        self.server = server
        self.cfg = server.config
        self.id = uuid.uuid4().hex[:16]
        self.remote = remote
        self.created = time.monotonic()
        self.created_wall = time.time()
        self.last_frame = self.created
        self.loop = asyncio.get_running_loop()
        self.pc = RTCPeerConnection()
        self.metrics = Metrics()
        self.engine = server.session_engine(self.metrics)
        self.guard = FrameGuard(self.cfg.max_width, self.cfg.max_height)
        self.control_limiter = RateLimiter(self.cfg.control_rate, 1.0)
        self.source = TrackSource(f"webrtc:{self.id}", on_drop=lambda: self.metrics.incr("dropped.network_ahead"))
        self.origin = time.perf_counter()  # pts 0 of both outgoing tracks (see tracks.py)
        self.out_track = FrameQueueTrack(self.loop, origin=self.origin)
        self.voice: Any = None  # VoiceStream once the client's audio track is there
        self.audio_out: VoiceOutTrack | None = None
        self.sink = TrackSink(self.out_track)
        self.in_times: list[float] = []
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self.control: Any = None
        self.control_closed: str | None = None
        self.identity_name = ""
        self._tasks: list[asyncio.Task] = []
        self._stats_prev: dict[str, tuple[float, int]] = {}
        self._rtt: float | None = None
        self._rates: dict[str, float] = {}
        self.started = False
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)

    # ---- identity (with consent) -------------------------------------------------------------
    async def set_identity(self, photo: bytes, consent: bool, name: str = "remote") -> dict:
        """Build this session's identity from an uploaded photo. Refused without the consent
        confirmation: no face is used that the user did not confirm the right to use."""
        if consent is not True:
            raise PermissionError("the consent confirmation is required before a face is used")
        import cv2

        img = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError("the photo could not be decoded (send a JPEG or PNG)")
        h, w = img.shape[:2]
        if max(h, w) > 4096:
            raise ValueError(f"the photo is {w}x{h}; 4096 pixels a side at most")
        from ..errors import MirageError

        try:
            ident = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.engine.set_source_photos([img], name))
        except MirageError as exc:  # no usable face: the client's photo, not the server's failure
            raise ValueError(str(exc)) from None
        if ident.embedding is None:
            self.engine.set_identity(None)
            raise ValueError("no usable face in the photo: " + "; ".join(r.summary() for r in ident.reports))
        ident.consent = True
        self.identity_name = name
        self.metrics.incr("identity.set")
        return {"identity": name, "faces": len(ident.reports)}

    # ---- WebRTC --------------------------------------------------------------------------------
    async def answer(self, sdp: str, kind: str) -> dict:
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._tasks.append(asyncio.ensure_future(self._watchdog()))
        d = self.pc.localDescription
        return {"sdp": d.sdp, "type": d.type, "session": self.id}

    def _on_track(self, track) -> None:
        if track.kind == "video":
            self.pc.addTrack(self.out_track)
            self._tasks.append(asyncio.ensure_future(self._video_in(track)))
        elif track.kind == "audio" and self.voice is None:
            from ..voice.stream import VoiceStream

            self.voice = VoiceStream(self.server.voice_converter, self.metrics, name=self.id,
                                     enabled=bool(self.server.engine.settings.enable_voice),
                                     on_change=self._voice_changed_threadsafe)
            self.voice.start()  # its worker picks the block size (off the event loop), then converts
            self.audio_out = VoiceOutTrack(self.voice.read, self.origin)
            self.pc.addTrack(self.audio_out)
            self.engine.set_audio_master(self.voice.master_latency_s)  # video held while it converts
            self._tasks.append(asyncio.ensure_future(self._audio_in(track)))
        elif track.kind == "audio":  # a second microphone: read and dropped (its frames would pile up)
            self._tasks.append(asyncio.ensure_future(self._discard(track)))

    def _on_datachannel(self, channel) -> None:
        if channel.label != "control":
            channel.close()
            return
        self.control = channel
        channel.on("message", lambda msg: self._on_control(channel, msg))

    async def _on_state(self) -> None:
        st = self.pc.connectionState
        if st in ("failed", "closed"):
            await self.close(f"connection {st}")

    async def _video_in(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while not self.closed.is_set():
                frame = await track.recv()
                now = time.monotonic()
                self.last_frame = now
                self.metrics.incr("frames.received")
                reason = self.guard.check_size(frame.width, frame.height)
                img = None
                if reason is None:
                    try:
                        img = frame.to_ndarray(format="bgr24")
                    except Exception:  # a frame that does not convert is as invalid as an oversized one
                        reason = "malformed"
                self.guard.note(reason)
                if reason is not None:
                    self.metrics.incr(f"frames.rejected.{reason}")
                    self.server.metrics.incr(f"frames.rejected.{reason}")
                    why = self.guard.anomaly()
                    if why is not None:
                        await self.close(why)
                        return
                    continue
                self.in_times.append(now)
                while self.in_times and now - self.in_times[0] > 2.0:
                    self.in_times.pop(0)
                if not self.started:
                    await self._start_engine()
                self.source.push(img)
        except MediaStreamError:
            await self.close("the client's video ended")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # this session's failure, never the server's
            log.exception("session %s: video input failed", self.id)
            await self.close(f"error: {type(exc).__name__}: {exc}")

    async def _audio_in(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        from .client import audio_samples

        from ..voice.resample import StreamResampler

        rs = None  # a codec at another rate (G.711: 8 kHz) is resampled to the stream's 48 kHz
        try:
            while not self.closed.is_set():
                frame = await track.recv()
                t = time.perf_counter()  # the voice's arrival: the clock the video's t_capture is on
                try:
                    x = audio_samples(frame)
                    if frame.sample_rate != self.voice.sr_in:
                        if rs is None or rs.sr_in != frame.sample_rate:
                            rs = StreamResampler(int(frame.sample_rate), self.voice.sr_in)
                        x = rs.process(x)
                except Exception as exc:  # a frame that does not convert: counted, the next one may
                    self.metrics.incr("voice.rejected_frames")
                    log.debug("session %s: audio frame refused: %s", self.id, exc)
                    continue
                self.voice.push(x, t)
        except MediaStreamError:
            pass  # the microphone ended; the video goes on (the outgoing voice is silence)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # this session's voice input stops, nothing else
            log.exception("session %s: audio input failed", self.id)
            self.metrics.set_gauge("voice.input_error", f"{type(exc).__name__}: {exc}")

    async def _discard(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while not self.closed.is_set():
                await track.recv()
                self.metrics.incr("voice.extra_track_frames")
        except MediaStreamError:
            pass

    def _voice_changed_threadsafe(self, status: dict) -> None:
        try:
            self.loop.call_soon_threadsafe(self._voice_changed, status)
        except RuntimeError:  # the loop is gone: so is the session
            pass

    def _voice_changed(self, status: dict) -> None:
        if self.control is not None:
            self._reply(self.control, {"type": "voice", **voice_summary(status)})

    def _voice_option(self, name: str, value) -> dict:
        from ..config import check

        if self.voice is None:
            raise MirageError("this session sends no audio track", "add the microphone to the offer")
        v = check(name, value)
        if name == "enable_voice":
            self.voice.set_enabled(v)
        else:
            self.voice.set_option(name.removeprefix("voice_"), v)
        return voice_summary(self.voice.status())

    async def _start_engine(self) -> None:
        self.started = True
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.engine.start(self.source, [self.sink]))

    def _on_control(self, channel, msg) -> None:
        size = len(msg.encode() if isinstance(msg, str) else msg)
        if not self.control_limiter.allow("control"):
            self.metrics.incr("control.rate_limited")
            self.server.metrics.incr("control.rate_limited")
            self.control_closed = "too many control messages"
            channel.close()
            return
        if size > self.cfg.max_control_bytes:
            self.metrics.incr("control.rejected.oversize")
            self.server.metrics.incr("control.rejected.oversize")
            self._reply(channel, {"type": "error", "error": f"message of {size} bytes over the "
                                  f"{self.cfg.max_control_bytes}-byte limit"})
            return
        try:
            m = json.loads(msg)
            kind = m.get("type") if isinstance(m, dict) else None
        except (ValueError, UnicodeDecodeError):
            kind = None
        if kind == "ping":
            self._reply(channel, {"type": "pong", "t": m.get("t"), "server": self.processing_summary()})
        elif kind == "option" and m.get("name") in CLIENT_OPTIONS:
            try:
                self.engine.set_option(m["name"], m.get("value"))
                self._reply(channel, {"type": "option", "name": m["name"], "ok": True})
            except Exception as exc:
                self._reply(channel, {"type": "error", "error": one_line(exc)})
        elif kind == "option" and m.get("name") in VOICE_OPTIONS:
            try:
                voice = self._voice_option(m["name"], m.get("value"))
                self._reply(channel, {"type": "option", "name": m["name"], "ok": True, "voice": voice})
            except Exception as exc:  # a wrong value: one line naming the fix, the session goes on
                self.metrics.incr("control.rejected.bad_value")
                self._reply(channel, {"type": "error", "name": m["name"], "error": one_line(exc)})
        elif kind == "option":
            self.metrics.incr("control.rejected.unknown")
            self._reply(channel, {"type": "error", "error": f"unknown option {m.get('name')!r}: use one of "
                                  f"{', '.join(CLIENT_OPTIONS + VOICE_OPTIONS)}"})
        else:
            self.metrics.incr("control.rejected.unknown")
            self._reply(channel, {"type": "error", "error": "unknown message"})

    @staticmethod
    def _reply(channel, obj: dict) -> None:
        try:
            if channel.readyState == "open":
                channel.send(json.dumps(obj))
        except Exception:
            pass

    def processing_summary(self) -> dict:
        snap = self.metrics.snapshot()
        tot = snap["stages"].get("total", {})
        return {"frames_out": snap["counters"].get("frames.out", 0),
                "swapped": snap["counters"].get("faces.swapped", 0),
                "total_p50_ms": tot.get("p50"), "total_p95_ms": tot.get("p95"),
                "fps_out": round(fps_of(self.out_track.times), 1),
                "voice": voice_summary(self.voice.status()) if self.voice is not None else None}

    # ---- lifetime ----------------------------------------------------------------------------
    async def _watchdog(self) -> None:
        cfg = self.cfg
        while not self.closed.is_set():
            try:
                await asyncio.wait_for(self.closed.wait(), 0.25)
                return
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            if now - self.last_frame > cfg.idle_timeout_s:
                await self.close(f"idle: no video for {cfg.idle_timeout_s:g} s")
            elif now - self.created > cfg.max_session_s:
                await self.close(f"maximum session length ({cfg.max_session_s:g} s) reached")

    async def close(self, reason: str) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        log.info("session %s closed: %s", self.id, reason)
        try:
            if self.control is not None and self.control.readyState == "open":
                self._reply(self.control, {"type": "closed", "reason": reason})
        except Exception:
            pass
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()
        self.source.close()
        self.out_track.stop()
        if self.audio_out is not None:
            self.audio_out.stop()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.stop)
        except Exception:
            log.exception("session %s: stopping its engine failed", self.id)
        self.engine.set_audio_master(None)
        if self.voice is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.voice.stop)
            except Exception:
                log.exception("session %s: stopping its voice failed", self.id)
        try:
            await self.pc.close()
        except Exception:
            log.exception("session %s: closing its connection failed", self.id)
        self.closed.set()
        self.server.session_closed(self)

    async def refresh_stats(self) -> dict:
        """State, age, RTT, bitrate and fps for /webrtc/connections (asks the connection)."""
        now = time.monotonic()
        if self.close_reason is None:
            try:
                report = await self.pc.getStats()
            except Exception:
                report = {}
            for s in report.values():
                t = getattr(s, "type", "")
                if t == "remote-inbound-rtp" and getattr(s, "roundTripTime", None) is not None:
                    self._rtt = float(s.roundTripTime)
                for field_name, key in (("bytesReceived", "in"), ("bytesSent", "out")):
                    if t in ("inbound-rtp", "outbound-rtp") and getattr(s, "kind", "") == "video" and \
                            hasattr(s, field_name):
                        b = int(getattr(s, field_name))
                        prev = self._stats_prev.get(key)
                        if prev is not None and now > prev[0]:
                            self._rates[key] = (b - prev[1]) * 8 / (now - prev[0])
                        self._stats_prev[key] = (now, b)
        return self.describe()

    def describe(self) -> dict:
        """The same, from what is known now (no I/O): kept for a closed session."""
        now = time.monotonic()
        rtt, rates = self._rtt, self._rates
        return {
            "id": self.id, "remote": self.remote,
            "state": self.pc.connectionState if self.close_reason is None else "closed",
            "age_s": round(now - self.created, 1),
            "rtt_ms": round(rtt * 1000, 1) if rtt is not None else None,
            "bitrate_in_bps": round(rates["in"]) if "in" in rates else None,
            "bitrate_out_bps": round(rates["out"]) if "out" in rates else None,
            "fps_in": round(fps_of(self.in_times), 1), "fps_out": round(fps_of(self.out_track.times), 1),
            "frames_in": self.metrics.counter("frames.received"), "frames_out": self.metrics.counter("frames.out"),
            "invalid_frames": self.guard.invalid, "invalid_by_reason": dict(self.guard.by_reason),
            "identity": self.identity_name, "control": self.control_closed or "open",
            "close_reason": self.close_reason,
            "voice": self.voice.status() if self.voice is not None else None,
            "av": self.av_summary(),
        }

    def av_summary(self) -> dict:
        """The session's A/V sync: the hold applied now, and per frame sent (P50/P95) the video's
        capture -> hand-over latency, the voice latency it was held to, and their difference."""
        m = self.metrics
        out = {"hold_ms": m.gauge("av.delay_ms"), "mode": "voice" if self.voice is not None
               and self.voice.converting else "none"}
        for key, name in (("video_latency", "av.video_latency"), ("audio_latency", "av.audio_latency"),
                          ("offset", "av.offset_ms")):
            h = m.histogram(name).summary()
            out[f"{key}_p50_ms"], out[f"{key}_p95_ms"] = h["p50"], h["p95"]
        out["dropped_late"] = m.counter("dropped.av_late")
        return out


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def voice_summary(st: dict) -> dict:
    """What the client is told about its voice (control channel)."""
    return {k: st.get(k) for k in ("enabled", "converting", "converter", "passthrough_reason", "block_ms",
                                   "latency_ms", "options")}
