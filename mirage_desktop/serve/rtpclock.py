"""The server's clock on the desktop client: received frames and audio blocks mapped from their RTP
timestamps onto the sender's wall clock with the RTCP sender reports (SR), so the returned video
can be held to the returned audio (``serve/remote.py``).

What aiortc gives (checked on aiortc 1.16): a received frame's ``pts`` is its RTP timestamp minus
the first RTP timestamp the track's receiver saw (``TimestampMapper`` in ``rtcrtpreceiver.py``,
the receiver's private ``__timestamp_mapper._origin``); an SR's (NTP, RTP) pair reaches
``RTCRtpReceiver._handle_rtcp_packet`` and is not kept. aiortc's sender fills its SR with the last
sent packet's RTP timestamp and the NTP time right after sending it, so an SR maps RTP time to the
server's *send* time. Both are reached here through :meth:`TrackClock.attach`, which wraps the
receiver's RTCP handler on the instance (the DTLS transport looks the method up at each packet).
When either is missing (another aiortc version) the link says so once and syncs on arrival times.

A track's time of a frame: ``ntp(SR) + signed32(rtp(frame) - rtp(SR)) / clock rate`` — modular
arithmetic, so a 32-bit RTP timestamp that wraps (every 13 h of video at 90 kHz, 25 h of audio at
48 kHz; a random start can put it minutes away) changes nothing. Since an SR's NTP time is the
send time, it is late by however long that frame took to encode and send; of the last
``SR_WINDOW`` reports the least delayed one anchors the mapping (the "earliest is on time" rule of
the voice pipeline's stream clocks), so one slowly encoded frame does not move the whole track.
:class:`LinkClock` puts both tracks of one connection on the local ``time.monotonic`` clock with
one constant ``K`` (local time minus the server's NTP time at the first SR's arrival): the clocks'
offset and the network's one-way delay are in ``K``, the same for both tracks, so they cancel in
any comparison of the two (the audio path's latency and the video's hold are both measured from
these times). Until both tracks have an SR (the first ~1 s), or without the hook, both use their
arrival times instead: never one track on each clock (``mode``)."""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable

log = logging.getLogger(__name__)

MASK32 = 0xFFFFFFFF
# a frame whose server time (+ K) is this far from its arrival is mapped wrong: the network and the
# jitter buffers account for well under a second, a bad report or a clock step for any amount
MAX_SKEW_S = 3.0
SR_WINDOW = 8  # sender reports (~1 s apart) whose least delayed one anchors the mapping
_warned: set[str] = set()


def ntp_seconds(ntp: int) -> float:
    """A 64-bit NTP timestamp (32.32 fixed point) in seconds."""
    return (int(ntp) >> 32) + (int(ntp) & MASK32) / 4294967296.0


def rtp_diff(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps, across a wrap (the nearer way round)."""
    d = (int(a) - int(b)) & MASK32
    return d - (1 << 32) if d >= 1 << 31 else d


def _say_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", msg)


class TrackClock:
    """One received track's RTP timestamps on the sender's NTP clock (seconds)."""

    def __init__(self, kind: str, rate: int, clock: Callable[[], float] = time.monotonic):
        self.kind, self.rate, self.clock = kind, int(rate), clock
        self.sr: tuple[float, int] | None = None  # (sender NTP seconds, RTP timestamp): the anchor
        self._reports: collections.deque = collections.deque(maxlen=SR_WINDOW)
        self.sr_arrival: float | None = None  # local time the last SR came
        self.sr_count = 0
        self.ignored = 0  # reports without a wall clock (sent before the first packet)
        self.hooked = False
        self.reason: str | None = None  # why there is no RTP mapping (None: there is one, or will be)
        self._mapper = None
        self.on_first_sr: Callable[["TrackClock"], None] | None = None

    # ---- the aiortc side -----------------------------------------------------------------------
    def attach(self, receiver) -> bool:
        """Hook ``receiver`` (an aiortc RTCRtpReceiver): its SRs and its timestamp origin. False
        (with :attr:`reason`) when this aiortc does not have them."""
        mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        handler = getattr(receiver, "_handle_rtcp_packet", None)
        RtcpSrPacket = None
        for mod in ("aiortc.rtp", "aiortc.rtcp"):  # where aiortc keeps it (1.x: aiortc.rtp)
            try:
                RtcpSrPacket = getattr(__import__(mod, fromlist=["RtcpSrPacket"]), "RtcpSrPacket")
                break
            except (ImportError, AttributeError):
                continue
        if mapper is None or not hasattr(mapper, "_origin") or not callable(handler) or RtcpSrPacket is None:
            self.reason = ("this aiortc has no receiver timestamp mapper / RTCP handler to read sender "
                           "reports from")
            return False

        async def handle_rtcp(packet, _orig=handler, _sr=RtcpSrPacket):
            if isinstance(packet, _sr):
                try:
                    info = packet.sender_info
                    if int(info.packet_count) > 0:  # aiortc reports before its first packet: NTP 0, RTP 0
                        self.note_sr(info.ntp_timestamp, info.rtp_timestamp)
                except Exception:  # a malformed report must not break aiortc's own handling
                    pass
            return await _orig(packet)

        receiver._handle_rtcp_packet = handle_rtcp
        self._mapper = mapper
        self.hooked = True
        return True

    def origin(self) -> int | None:
        """The first RTP timestamp the receiver mapped (pts 0), mod 2**32; None before one."""
        o = getattr(self._mapper, "_origin", None) if self._mapper is not None else None
        return None if o is None else int(o) & MASK32

    # ---- the mapping ---------------------------------------------------------------------------
    def note_sr(self, ntp_timestamp: int, rtp_timestamp: int) -> None:
        if not ntp_timestamp:  # no wall clock in it (a sender that has sent nothing yet): not a mapping
            self.ignored += 1
            return
        first = self.sr is None
        rtp = int(rtp_timestamp) & MASK32
        self._reports.append((ntp_seconds(ntp_timestamp), rtp))
        # each report says when ``rtp`` was sent; the earliest of them is the least delayed (a report
        # follows a frame that took long to encode: its NTP time is late for its RTP time)
        self.sr = (min(n + rtp_diff(rtp, r) / self.rate for n, r in self._reports), rtp)
        self.sr_arrival = self.clock()
        self.sr_count += 1
        if first and self.on_first_sr is not None:
            self.on_first_sr(self)

    def rtp_of(self, pts, time_base=None) -> int | None:
        """A received frame's RTP timestamp (mod 2**32) from its ``pts``; None when unknown."""
        origin = self.origin()
        if origin is None or pts is None:
            return None
        ticks = int(pts)
        if time_base is not None and time_base * self.rate != 1:  # pts on another base than the RTP clock
            ticks = int(round(float(pts * time_base) * self.rate))
        return (ticks + origin) & MASK32

    def sender_time(self, rtp: int | None) -> float | None:
        """The sender's NTP time (s) of RTP timestamp ``rtp``; None without an SR."""
        if rtp is None or self.sr is None:
            return None
        ntp, sr_rtp = self.sr
        return ntp + rtp_diff(rtp, sr_rtp) / self.rate

    @property
    def ready(self) -> bool:
        return self.hooked and self.sr is not None and self.origin() is not None


class LinkClock:
    """The two tracks of one connection on one local clock (``time.monotonic``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.video = TrackClock("video", 90_000, clock)
        self.audio = TrackClock("audio", 48_000, clock)
        self.audio_expected = False  # an audio track is coming back: both must be ready for "rtp"
        self.k: float | None = None  # local time minus the server's NTP time, fixed at the first SR
        self.resets = 0
        for t in (self.video, self.audio):
            t.on_first_sr = self._first_sr

    def _first_sr(self, track: TrackClock) -> None:
        if self.k is None and track.sr is not None and track.sr_arrival is not None:
            self.k = track.sr_arrival - track.sr[0]

    def attach(self, kind: str, receiver) -> bool:
        track = self.video if kind == "video" else self.audio
        if kind == "audio":
            self.audio_expected = True
        if receiver is None:
            track.reason = "the track's receiver was not found"
        elif track.attach(receiver):
            return True
        track.reason = track.reason or "the receiver could not be hooked"
        _say_once(f"hook:{track.reason}", f"remote A/V sync: {track.reason}; the returned video and audio are "
                  "synced on their arrival times instead of their RTP timestamps")
        return False

    @property
    def mode(self) -> str:
        """``rtp`` when every returned track maps onto the server's clock, else ``arrival``."""
        if self.k is None or not self.video.ready:
            return "arrival"
        if self.audio_expected and not self.audio.ready:
            return "arrival"
        return "rtp"

    def local_time(self, kind: str, pts, time_base, arrival: float) -> tuple[float, str]:
        """(the local time a frame/block stands for, the mode): its server time + K, or its arrival."""
        if self.mode != "rtp":
            return arrival, "arrival"
        track = self.video if kind == "video" else self.audio
        s = track.sender_time(track.rtp_of(pts, time_base))
        if s is None or self.k is None:
            return arrival, "arrival"
        t = s + self.k
        if abs(arrival - t) > MAX_SKEW_S:
            # a mapping this far from the arrival is wrong (a bad report, a server clock step):
            # start over from the next reports, on arrival times meanwhile -- never a frozen hold
            _say_once("skew", f"remote A/V sync: a returned {kind} frame mapped {arrival - t:+.1f} s from its "
                      "arrival; the clocks are taken again from the next sender reports")
            self.reset()
            return arrival, "arrival"
        return t, "rtp"

    def reset(self) -> None:
        """Forget both tracks' reports and K (the hooks stay)."""
        self.k = None
        self.resets += 1
        for t in (self.video, self.audio):
            t.sr, t.sr_arrival = None, None
            t._reports.clear()
