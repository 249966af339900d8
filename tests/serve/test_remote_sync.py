"""The desktop as a remote client keeps A/V sync from RTP timestamps (serve/rtpclock.py and the hold
in serve/remote.py): the sender-report mapping on scripted packets, the hold on a scripted clock,
and one end to end over aiortc and real PulseAudio devices."""

from __future__ import annotations

import asyncio
import fractions
import importlib.util
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_support import wait_counter
from tests_support import HANG_GUARD_S

from mirage_desktop.metrics import Metrics
from mirage_desktop.serve import rtpclock
from mirage_desktop.serve.remote import AudioBridge, RemoteLink, RemoteRunner
from mirage_desktop.serve.rtpclock import MASK32, LinkClock, TrackClock, ntp_seconds, rtp_diff

# the voice tests' PulseAudio fixtures (a server, null sinks), for the end-to-end test
_spec = importlib.util.spec_from_file_location("_voice_fixtures", Path(__file__).parents[1] / "voice" / "conftest.py")
_voice = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_voice)
pulse, null_sink = _voice.pulse, _voice.null_sink


def _ntp(seconds: float) -> int:
    whole = int(seconds)
    return (whole << 32) | int(round((seconds - whole) * 4294967296.0))


def _sr(ntp_s: float, rtp: int):
    from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

    return RtcpSrPacket(ssrc=1234, sender_info=RtcpSenderInfo(ntp_timestamp=_ntp(ntp_s), rtp_timestamp=rtp & MASK32,
                                                              packet_count=1, octet_count=100))


class FakeReceiver:
    """What TrackClock reaches of an aiortc RTCRtpReceiver: the real TimestampMapper under the
    receiver's private name and an RTCP handler that records what reached it."""

    def __init__(self):
        from aiortc.rtcrtpreceiver import TimestampMapper

        self._RTCRtpReceiver__timestamp_mapper = TimestampMapper()
        self.handled = []

    async def _handle_rtcp_packet(self, packet):
        self.handled.append(packet)


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _feed(receiver, *packets):
    async def go():
        for p in packets:
            await receiver._handle_rtcp_packet(p)

    asyncio.run(go())


# ---- the sender-report mapping -------------------------------------------------------------------

def test_the_ntp_and_rtp_arithmetic():
    assert ntp_seconds(_ntp(3_900_000_000.25)) == pytest.approx(3_900_000_000.25, abs=1e-6)
    assert rtp_diff(5, 2) == 3 and rtp_diff(2, 5) == -3
    assert rtp_diff(100, MASK32 - 99) == 200  # across the wrap, forward
    assert rtp_diff(MASK32 - 99, 100) == -200  # and back


def test_a_real_receiver_is_hooked():
    """aiortc's own RTCRtpReceiver has what the hook needs (else every client falls back)."""
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    class Transport:  # the receiver only keeps it
        state = "new"

    r = RTCRtpReceiver("video", Transport())
    tc = TrackClock("video", 90_000)
    assert tc.attach(r), tc.reason
    assert tc.origin() is None  # no frame yet
    r._RTCRtpReceiver__timestamp_mapper.map(12345)
    assert tc.origin() == 12345


@pytest.mark.parametrize("origin", [1_000_000, MASK32 - 9_000])  # plain, and 0.1 s before the 32-bit wrap
def test_frames_map_onto_the_senders_clock_across_the_wrap(origin):
    clock = Clock(50.0)
    lc = LinkClock(clock)
    rx = FakeReceiver()
    assert lc.attach("video", rx)
    mapper = rx._RTCRtpReceiver__timestamp_mapper
    pts = [mapper.map((origin + i * 3000) & MASK32) for i in range(10)]  # 30 FPS at 90 kHz
    assert pts == [i * 3000 for i in range(10)]  # aiortc's pts: RTP minus the first, unwrapped
    assert lc.mode == "arrival"  # no sender report yet: arrival times
    assert lc.local_time("video", pts[3], fractions.Fraction(1, 90_000), 77.0) == (77.0, "arrival")
    sr_rtp = (origin + 6000) & MASK32  # frame 2 was sent at NTP 3_900_000_000.5
    _feed(rx, _sr(3_900_000_000.5, sr_rtp))
    assert len(rx.handled) == 1  # aiortc's own handling still runs
    assert lc.mode == "rtp"
    assert lc.k == pytest.approx(50.0 - 3_900_000_000.5)
    for i in (0, 2, 5, 9):  # frame i stands for the SR's time + (i - 2) / 30 s, on the local clock
        t, mode = lc.local_time("video", pts[i], fractions.Fraction(1, 90_000), 50.1)
        assert mode == "rtp" and t == pytest.approx(50.0 + (i - 2) / 30.0, abs=1e-6)
    # a later report sent 5 ms late (a frame slow to encode) does not move the mapping ...
    _feed(rx, _sr(3_900_000_000.5 + 7 / 30.0 + 0.005, (origin + 9 * 3000) & MASK32))
    t, _ = lc.local_time("video", pts[9], fractions.Fraction(1, 90_000), 50.3)
    assert t == pytest.approx(50.0 + 7 / 30.0, abs=1e-6)
    # ... one less delayed than the first does (the first report's frame was 2 ms slow)
    _feed(rx, _sr(3_900_000_000.5 + 5 / 30.0 - 0.002, (origin + 7 * 3000) & MASK32))
    t, _ = lc.local_time("video", pts[9], fractions.Fraction(1, 90_000), 50.3)
    assert t == pytest.approx(50.0 + 7 / 30.0 - 0.002, abs=1e-6)
    assert lc.k == pytest.approx(50.0 - 3_900_000_000.5)  # K stays: both tracks keep one offset


def test_a_reordered_timestamp_that_aiortc_takes_for_a_wrap_still_maps():
    """aiortc's mapper takes any smaller timestamp for a wrap (pts jumps by 2**32): the modular
    arithmetic gets the right time anyway."""
    lc = LinkClock(Clock(0.0))
    rx = FakeReceiver()
    lc.attach("video", rx)
    m = rx._RTCRtpReceiver__timestamp_mapper
    m.map(90_000)
    m.map(93_000)
    late = m.map(91_500)  # an older frame after a newer one
    assert late > 1 << 31  # aiortc's pts is off by 2**32
    _feed(rx, _sr(1000.0, 90_000))
    t, mode = lc.local_time("video", late, fractions.Fraction(1, 90_000), 0.05)
    assert mode == "rtp" and t == pytest.approx(lc.k + 1000.0 + 1500 / 90_000, abs=1e-6)


def test_both_tracks_wait_for_both_reports_and_share_one_offset():
    clock = Clock(10.0)
    lc = LinkClock(clock)
    rv, ra = FakeReceiver(), FakeReceiver()
    lc.attach("video", rv)
    lc.attach("audio", ra)
    rv._RTCRtpReceiver__timestamp_mapper.map(500)
    ra._RTCRtpReceiver__timestamp_mapper.map(7000)
    _feed(rv, _sr(2000.0, 500))
    assert lc.mode == "arrival"  # the audio has no report yet: neither track uses RTP time
    assert lc.local_time("video", 0, None, 11.0) == (11.0, "arrival")
    clock.t = 10.4
    _feed(ra, _sr(2000.3, 7000 + 4800))  # audio sample 4800 sent at 2000.3
    assert lc.mode == "rtp"
    assert lc.k == pytest.approx(10.0 - 2000.0)  # from the first report, shared by both tracks
    tv, _ = lc.local_time("video", 0, fractions.Fraction(1, 90_000), 10.05)
    ta, _ = lc.local_time("audio", 4800, fractions.Fraction(1, 48_000), 10.35)
    assert tv == pytest.approx(10.0) and ta == pytest.approx(10.3)  # sent 0.3 s apart by the server


def _sr_before_any_packet():
    """What aiortc's sender reports while its track has sent nothing yet: NTP 0, RTP 0, 0 packets."""
    from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

    return RtcpSrPacket(ssrc=1234, sender_info=RtcpSenderInfo(ntp_timestamp=0, rtp_timestamp=0, packet_count=0,
                                                              octet_count=0))


def test_a_report_sent_before_the_first_packet_is_not_a_mapping():
    """aiortc's RTCP loop reports from the start, NTP 0 until a packet is sent: a server slow with its
    first frame (an engine starting, a voice hold) must not anchor the clock on that."""
    clock = Clock(100.0)
    lc = LinkClock(clock)
    rx = FakeReceiver()
    lc.attach("video", rx)
    _feed(rx, _sr_before_any_packet(), _sr_before_any_packet())
    assert len(rx.handled) == 2 and lc.video.sr is None and lc.k is None and lc.mode == "arrival"
    rx._RTCRtpReceiver__timestamp_mapper.map(3000)
    clock.t = 102.0  # the first real report, 2 s later
    _feed(rx, _sr(5000.0, 3000))
    assert lc.k == pytest.approx(102.0 - 5000.0)
    t, mode = lc.local_time("video", 0, fractions.Fraction(1, 90_000), 102.04)
    assert mode == "rtp" and t == pytest.approx(102.0)
    lc.video.note_sr(0, 0)  # a zero wall clock reaching note_sr directly: ignored too
    assert lc.video.ignored == 1 and lc.video.sender_time(3000) == pytest.approx(5000.0)


def test_a_mapping_far_from_the_arrival_starts_over_on_arrival_times(caplog, monkeypatch):
    """A wrong report (or a server clock step) must never hold the video for ever: a frame mapped
    more than MAX_SKEW_S from its arrival puts the link on arrival times until the next reports."""
    monkeypatch.setattr(rtpclock, "_warned", set())
    clock = Clock(100.0)
    lc = LinkClock(clock)
    rx = FakeReceiver()
    lc.attach("video", rx)
    rx._RTCRtpReceiver__timestamp_mapper.map(3000)
    _feed(rx, _sr(5000.0, 3000 + 90_000 * 3600))  # says frame 0 was sent an hour before the report
    with caplog.at_level(logging.WARNING):
        assert lc.local_time("video", 0, fractions.Fraction(1, 90_000), 100.05) == (100.05, "arrival")
    assert lc.resets == 1 and lc.k is None and lc.mode == "arrival"
    assert any("mapped" in r.getMessage() for r in caplog.records)
    clock.t = 101.0
    _feed(rx, _sr(6000.0, 3000 + 90_000))  # a good report: frame 0 was sent 1 s before it
    t, mode = lc.local_time("video", 0, fractions.Fraction(1, 90_000), 100.05)
    assert mode == "rtp" and t == pytest.approx(100.0)


def test_without_the_hook_it_says_so_once_and_syncs_on_arrival(caplog, monkeypatch):
    monkeypatch.setattr(rtpclock, "_warned", set())

    class OtherAiortc:  # a receiver of a version without the private mapper
        async def _handle_rtcp_packet(self, packet):
            pass

    with caplog.at_level(logging.WARNING, logger="mirage_desktop.serve.rtpclock"):
        for _ in range(3):  # three connections
            lc = LinkClock(Clock())
            assert not lc.attach("video", OtherAiortc())
            assert not lc.attach("audio", None)
    assert lc.mode == "arrival"
    assert lc.local_time("video", 3000, None, 42.0) == (42.0, "arrival")
    said = [r.getMessage() for r in caplog.records if "arrival times" in r.getMessage()]
    assert len(said) == 2  # one line per cause (no mapper; no receiver), not one per connection
    assert all("remote A/V sync" in s for s in said)


def test_a_frame_without_a_timestamp_is_timed_by_its_arrival():
    lc = LinkClock(Clock(5.0))
    rx = FakeReceiver()
    lc.attach("video", rx)
    rx._RTCRtpReceiver__timestamp_mapper.map(1000)
    _feed(rx, _sr(77.0, 1000))
    assert lc.mode == "rtp"
    assert lc.local_time("video", None, None, 6.5) == (6.5, "arrival")


def test_a_malformed_report_is_passed_on_and_ignored():
    lc = LinkClock(Clock())
    rx = FakeReceiver()
    lc.attach("video", rx)

    class Broken:  # an SR whose fields cannot be read
        sender_info = None

    from aiortc.rtp import RtcpSrPacket

    bad = RtcpSrPacket.__new__(RtcpSrPacket)
    bad.ssrc, bad.sender_info = 1, None
    _feed(rx, bad, Broken())
    assert len(rx.handled) == 2 and lc.video.sr is None and lc.mode == "arrival"


# ---- the audio path and the hold on a scripted clock -----------------------------------------------

class TimeInfo:
    def __init__(self, dac_delay: float | None):
        self.currentTime = 500.0 if dac_delay is not None else 0.0
        self.outputBufferDacTime = 500.0 + dac_delay if dac_delay is not None else 0.0


def test_the_bridge_measures_server_time_to_play():
    clock = Clock(10.0)
    b = AudioBridge(stale_s=0.5, max_back_s=0.5, clock=clock)
    for i in range(4):  # 20 ms blocks that stand for server times 9.80, 9.82 ... (rtp), arriving at 10.0
        b.on_back(np.full(960, 0.1 * (i + 1), np.float32), 48_000, 10.0, 9.80 + 0.02 * i, "rtp")
    assert b.audio_latency_s() is None  # nothing played yet
    out = b.fill(480, TimeInfo(0.050))  # half a block; it plays 50 ms after the callback: 0.25 s path
    assert b.last_kind == "remote" and np.allclose(out, 0.1)
    b.fill(480, TimeInfo(0.030))  # the second half stands for 9.81 (not 9.80) and plays at 10.04: 0.23
    clock.t = 10.01
    b.fill(960, TimeInfo(0.040))  # block 1 (9.82) plays at 10.05: 0.23
    assert b.audio_latency_s("rtp") == pytest.approx(0.23, abs=1e-6)  # the median of 0.25, 0.23, 0.23
    assert b.audio_latency_s("arrival") is None  # measured in another mode: not mixed
    # a host API that reports no DAC time: the stream's static latency stands in
    b2 = AudioBridge(clock=clock)
    b2.out_latency_s = 0.3
    for i in range(3):
        b2.on_back(np.zeros(960, np.float32), 48_000, clock.t, 9.90 + 0.02 * i, "arrival")
    for i in range(3):
        b2.fill(960, None)
    assert b2.audio_latency_s("arrival") == pytest.approx(10.01 + 0.3 - 9.92, abs=1e-6)
    clock.t = 11.0  # nothing came back for 1 s: the local microphone, and no master for the video
    b.fill(960, TimeInfo(0.05))
    assert b.last_kind == "local" and b.audio_latency_s() is None


def test_a_burst_left_in_the_bridge_is_cut_to_what_the_jitter_needs():
    """A (re)connect's burst fills the queue; at a steady rate after it, the queue would stay that
    full for good — all added delay. What stayed above TARGET_BACK_S for a whole window is cut;
    a queue that the jitter empties now and then is never cut."""
    from mirage_desktop.serve.remote import STANDING_WINDOW, TARGET_BACK_S

    clock = Clock(10.0)
    m = Metrics()
    b = AudioBridge(stale_s=0.5, metrics=m, clock=clock)
    n = 0

    def block():
        nonlocal n
        b.on_back(np.full(960, n, np.float32), 48_000, clock.t, 9.9 + 0.02 * n, "rtp")
        n += 1

    for _ in range(8):  # the burst: 160 ms at once
        block()
    levels = []
    for _ in range(3 * STANDING_WINDOW):  # then one block in, one block out, every 20 ms
        clock.t += 0.02
        block()
        b.fill(960, TimeInfo(0.01))
        levels.append(b._back_n)
    assert m.counter("remote.audio_standing_cut") == 1  # once, then the queue stays at its new level
    assert max(levels[-STANDING_WINDOW:]) <= int(TARGET_BACK_S * 48_000) + 960
    assert max(levels[:STANDING_WINDOW - 1]) >= 7 * 960  # nothing was cut before a whole window
    # the cut took the oldest samples and kept the rest's server times
    t_first = b._back[0][1]
    assert t_first == pytest.approx(9.9 + 0.02 * float(b._back[0][0][0]), abs=1e-6)

    # jitter: the queue runs down to one block now and then -> never cut
    m2 = Metrics()
    b2 = AudioBridge(stale_s=0.5, metrics=m2, clock=clock)
    for i in range(4 * STANDING_WINDOW):
        clock.t += 0.02
        for _ in range(3 if i % 10 == 0 else (0 if i % 10 in (1, 2) else 1)):
            b2.on_back(np.zeros(960, np.float32), 48_000, clock.t, clock.t - 0.1, "rtp")
        b2.fill(960, TimeInfo(0.01))
    assert m2.counter("remote.audio_standing_cut") == 0


class Sink:
    name = "scripted"

    def __init__(self, clock):
        self.clock, self.sent = clock, []

    def open(self, w, h, fps):
        pass

    def send(self, frame):
        self.sent.append((self.clock(), int(frame[0, 0, 0])))

    def close(self):
        pass

    def describe(self):
        return "scripted sink"


def _frame(n: int) -> np.ndarray:
    return np.full((4, 4, 3), n % 256, np.uint8)


def _runner(clock, audio_latency: float | None):
    m = Metrics()
    link = RemoteLink("http://127.0.0.1:9", "t", metrics=m)  # never started: frames are handed in
    sink = Sink(clock)
    runner = RemoteRunner(None, [sink], link, clock=clock)
    runner.avsync.clock = clock
    if audio_latency is not None:
        bridge = AudioBridge(clock=clock)
        link.audio = bridge

        def play(now):  # a block standing for server time now - latency plays now
            bridge.on_back(np.zeros(960, np.float32), 48_000, now, now + 0.01 - audio_latency, "rtp")
            bridge.fill(960, TimeInfo(0.01))
        runner.play = play
    return m, link, sink, runner


def _hand_in(link, n, t_server):
    link._got_timed(_frame(n), time.monotonic(), t_server, "rtp")  # a real arrival time: the link is fresh


def test_each_returned_frame_leaves_at_its_server_time_plus_the_audio_path():
    clock = Clock(100.0)
    m, link, sink, runner = _runner(clock, 0.250)
    for _ in range(3):
        runner.play(clock.t)
    assert link.audio.audio_latency_s("rtp") == pytest.approx(0.250)
    for n in range(30):  # 30 FPS; each frame comes back 40 ms after its server time
        t_srv = 100.0 + n / 30.0
        clock.t = t_srv + 0.040
        runner.play(clock.t)
        _hand_in(link, n, t_srv)
        runner.step(clock.t)
        # the output thread is woken at each frame's due time
        while runner.avsync.next_due() is not None and runner.avsync.next_due() <= t_srv + 0.040 + 1 / 30.0 - 1e-9:
            clock.t = runner.avsync.next_due()
            runner.step(clock.t)
    while runner.avsync.next_due() is not None:  # the last ones leave too
        clock.t = runner.avsync.next_due()
        runner.step(clock.t)
    assert [n for _, n in sink.sent] == list(range(30))
    for t_out, n in sink.sent:
        assert t_out == pytest.approx(100.0 + n / 30.0 + 0.250, abs=1e-6)  # server time + audio path
    off = m.snapshot()["stages"]["av.offset_ms"]
    assert abs(off["p50"]) < 1.0 and abs(off["p95"]) < 1.0
    assert m.counter("dropped.av_late") == 0
    from mirage_desktop.serve.remote import sync_summary

    runner.metrics.set_gauge("av.mode", "remote rtp")
    (line,) = sync_summary(m.snapshot())
    assert line.startswith("A/V (remote engine, RTP timestamps)") and "offset (video - voice) P50 0" in line


def test_without_audio_coming_back_there_is_no_hold():
    clock = Clock(100.0)
    m, link, sink, runner = _runner(clock, None)
    for n in range(10):
        clock.t = 100.0 + n / 30.0 + 0.040
        _hand_in(link, n, clock.t - 0.040)
        runner.step(clock.t)
    assert [round(t - (100.0 + n / 30.0), 6) for t, n in sink.sent] == [0.04] * 10  # on arrival
    assert m.snapshot()["stages"].get("av.offset_ms", {}).get("count", 0) == 0
    from mirage_desktop.serve.remote import sync_summary

    assert sync_summary(m.snapshot()) == [
        "A/V (remote engine): no server audio played to a virtual microphone, the video was not held"]


def test_a_longer_audio_path_is_eased_in_and_late_video_is_dropped_not_frozen():
    clock = Clock(100.0)
    m, link, sink, runner = _runner(clock, 0.100)
    for _ in range(3):
        runner.play(clock.t)

    def frame_at(n, video_path):
        t_srv = 100.0 + n / 30.0
        clock.t = t_srv + video_path
        runner.play(clock.t)
        _hand_in(link, n, t_srv)
        runner.step(clock.t)
        while runner.avsync.next_due() is not None:
            clock.t = max(clock.t, runner.avsync.next_due())
            runner.step(clock.t)

    for n in range(20):
        frame_at(n, 0.020)
    # the audio path grows to 200 ms: the hold follows at 4 ms per frame (never a freeze or a burst)
    bridge = link.audio

    def play200(now):
        bridge.on_back(np.zeros(960, np.float32), 48_000, now, now + 0.01 - 0.200, "rtp")
        bridge.fill(960, TimeInfo(0.01))
    runner.play = play200
    holds = []
    for n in range(20, 60):
        frame_at(n, 0.020)
        holds.append(runner.avsync.delay_s)
    steps = np.diff(holds)
    assert steps.max() <= 0.004 + 1e-9 and holds[-1] == pytest.approx(0.200, abs=1e-6)
    # the video now comes back 400 ms after its server time: 200 ms behind the audio, past the limit
    before = len(sink.sent)
    for n in range(60, 90):
        frame_at(n, 0.400)
    assert m.counter("dropped.av_late") >= 20
    assert len(sink.sent) - before >= 1  # one is sent anyway every 15: never a frozen camera
    assert runner.avsync.behind


def test_the_local_picture_runs_until_the_first_held_frame_leaves_and_never_alternates():
    clock = Clock(100.0)
    m, link, sink, runner = _runner(clock, 0.300)
    for _ in range(3):
        runner.play(clock.t)
    local = np.full((4, 4, 3), 200, np.uint8)
    runner.camera_frame(local)  # nothing back yet: the local frame
    assert [v for _, v in sink.sent] == [200]
    for n in range(12):  # frames come back (held 300 ms): the local picture keeps going meanwhile
        clock.t = 100.0 + n / 30.0 + 0.02
        runner.play(clock.t)
        _hand_in(link, n, clock.t - 0.02)
        runner.camera_frame(local)
        runner.step(clock.t)
    kinds = [v for _, v in sink.sent]
    first = kinds.index(0)  # the first returned frame left 300 ms after its server time
    assert first >= 9 and set(kinds[:first]) == {200} and 200 not in kinds[first:]
    link.stale_s = 0.3  # shorter than a run of late frames the hold drops (14 frames, 0.47 s)
    for n in range(12, 50):  # then returned frames only, also while the hold drops late ones
        clock.t = 100.0 + n / 30.0 + (0.02 if n < 20 else 0.5)
        runner.play(clock.t)
        _hand_in(link, n, 100.0 + n / 30.0)
        runner.camera_frame(local)
        runner.step(clock.t)
    after = [v for _, v in sink.sent][len(kinds):]
    assert 200 not in after and m.counter("dropped.av_late") >= 14 and m.counter("av.late_sent") >= 1


def test_the_hold_does_not_collapse_when_the_clock_goes_from_arrival_to_rtp_times():
    clock = Clock(100.0)
    m, link, sink, runner = _runner(clock, 0.250)
    bridge = link.audio

    def play(now, mode, lat):
        bridge.on_back(np.zeros(960, np.float32), 48_000, now, now + 0.01 - lat, mode)
        bridge.fill(960, TimeInfo(0.01))
    for _ in range(3):
        play(clock.t, "arrival", 0.200)
    holds = []
    for n in range(40):
        clock.t = 100.0 + n / 30.0 + 0.02
        mode = "arrival" if n < 20 else "rtp"  # both reports came: frames and blocks on RTP times now
        play(clock.t, mode, 0.200 if mode == "arrival" else 0.230)
        link._got_timed(_frame(n), time.monotonic(), clock.t - 0.02, mode)
        runner.step(clock.t)
        holds.append(runner.avsync.delay_s)
    assert min(holds[20:]) >= 0.200 - 1e-9  # kept while the RTP measurements came in, then slewed
    assert holds[-1] == pytest.approx(0.230, abs=1e-6)


def test_a_stale_link_empties_the_hold():
    clock = Clock(100.0)
    m, link, sink, runner = _runner(clock, 0.300)
    for _ in range(3):
        runner.play(clock.t)
    _hand_in(link, 1, 100.0)
    _hand_in(link, 2, 100.033)
    runner.step(100.02)
    assert len(runner.avsync) == 2  # held for the 300 ms audio path
    link.last_processed_t = 0.0  # the link went quiet: the local pass-through takes over
    assert link.stale(link.stale_s)
    runner.step(100.31)  # frame 1 is due: it does not come out after the local frames
    assert sink.sent == [] and m.counter("dropped.av_stale") == 1
    assert runner.avsync.clear() == 1 and len(runner.avsync) == 0  # what the camera loop does
    assert m.counter("dropped.av_stale") == 2


# ---- end to end: a server whose tracks are aligned at hand-over, real devices on the client ----------

SR = 48_000
W, H = 320, 240
FLASHES = 6
GAP_S = 1.0  # between markers: more than any hold, so each flash and click is paired with its instant
LEAD_S = 0.5
OUTPUT_LATENCY_S = 0.25  # the client's virtual-microphone stream: a longer audio path than the video's
TOLERANCE_S = 0.040
MAX_TAKES = 3
LATE_SEND_S = 0.010  # a flash sent this much after its due time: the output thread was held up


class Marks:
    """The test server's marker schedule: ``arm`` sets instants (time.monotonic) at which its video
    shows a white frame and its audio has a click, both handed over to aiortc at those instants."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.instants: list[float] = []
        t = np.arange(int(0.02 * SR)) / SR
        self.burst = (0.6 * np.sin(2 * np.pi * 1000 * t) * np.hanning(t.size)).astype(np.float32)

    def arm(self, lead: float, gap: float, n: int) -> list[float]:
        with self.lock:
            now = time.monotonic()
            self.instants = [now + lead + k * gap for k in range(n)]
            return list(self.instants)

    def pending(self) -> list[float]:
        with self.lock:
            return list(self.instants)


def _track_base():
    from aiortc import MediaStreamTrack

    return MediaStreamTrack


class FlashTrack(_track_base()):
    """30 FPS of dark grey; a white frame handed over exactly at each instant. pts: the hand-over
    time on the 90 kHz clock (the server's contract)."""

    kind = "video"

    def __init__(self, marks: Marks):
        super().__init__()
        self.marks, self.n, self.shown = marks, 0, set()
        self.dark = np.full((H, W, 3), 30, np.uint8)
        self.white = np.full((H, W, 3), 255, np.uint8)

    async def recv(self):
        import av

        nxt = self.marks.t0 + self.n / 30.0
        flash = next((t for t in self.marks.pending() if t not in self.shown and t <= nxt), None)
        due = flash if flash is not None else nxt
        if due > time.monotonic():
            await asyncio.sleep(due - time.monotonic())  # a camera's pace, not a test wait
        if flash is not None:
            self.shown.add(flash)
        else:
            self.n = max(self.n + 1, int((time.monotonic() - self.marks.t0) * 30.0))  # behind: no burst
        t = time.monotonic()
        vf = av.VideoFrame.from_ndarray(self.white if flash is not None else self.dark, format="bgr24")
        vf.pts = int(round((t - self.marks.t0) * 90_000))
        vf.time_base = fractions.Fraction(1, 90_000)
        return vf


class ClickTrack(_track_base()):
    """20 ms blocks at real time, sample ``i`` standing for ``t0 + i / 48000``; a 20 ms 1 kHz burst
    starting at the sample of each instant."""

    kind = "audio"

    def __init__(self, marks: Marks):
        super().__init__()
        self.marks, self.n = marks, 0

    async def recv(self):
        import av

        now = time.monotonic()
        if self.n == 0 or self.marks.t0 + self.n * 960 / SR < now - 0.06:
            self.n = int((now - self.marks.t0) * SR / 960)  # start (or behind): from now, no burst
        due = self.marks.t0 + self.n * 960 / SR
        if due > time.monotonic():
            await asyncio.sleep(due - time.monotonic())  # a microphone's pace
        x = np.zeros(960, np.float32)
        a = self.n * 960
        b = self.marks.burst
        for inst in self.marks.pending():
            s = int(round((inst - self.marks.t0) * SR))
            lo, hi = max(a, s), min(a + 960, s + b.size)
            if lo < hi:
                x[lo - a:hi - a] = b[lo - s:hi - s]
        frame = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SR
        frame.pts = a
        frame.time_base = fractions.Fraction(1, SR)
        self.n += 1
        return frame


class MarkerServer:
    """Answers the desktop client's offer (the same /offer contract as `mirage serve`) with its own
    marker tracks; what the client sends is consumed and dropped."""

    def __init__(self):
        self.marks = Marks()
        self.pcs: list = []

    def make_app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/offer", self.offer)
        app.on_shutdown.append(self.shutdown)
        return app

    async def offer(self, request):
        from aiohttp import web
        from aiortc import RTCPeerConnection, RTCSessionDescription
        from aiortc.contrib.media import MediaBlackhole

        body = await request.json()
        pc = RTCPeerConnection()
        self.pcs.append(pc)
        sink = MediaBlackhole()

        @pc.on("track")
        def on_track(track):
            sink.addTrack(track)
            pc.addTrack(FlashTrack(self.marks) if track.kind == "video" else ClickTrack(self.marks))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        await sink.start()
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                                  "session": "markers"})

    async def shutdown(self, app=None):
        for pc in self.pcs:
            await pc.close()


class StampSink:
    """The virtual camera: each frame's arrival (time.monotonic) and brightness; and flashes that
    left later than the hold said (the output thread was held up: the take is disturbed)."""

    name = "stamps"

    def __init__(self):
        self.lock = threading.Lock()
        self.arrivals: list[tuple[float, float]] = []
        self.runner = None
        self.late_flashes = 0

    def open(self, w, h, fps):
        pass

    def send(self, frame):
        t = time.monotonic()
        with self.lock:
            self.arrivals.append((t, float(frame.mean())))
            if frame.mean() > 150 and self.runner is not None and self.runner.send_late_s > LATE_SEND_S:
                self.late_flashes += 1

    def close(self):
        pass

    def describe(self):
        return "stamping sink"


class Recorder:
    """The virtual microphone as a call app hears it: its PulseAudio source, sample times from the
    voice pipeline's own StreamClock on time.monotonic (as tests/voice/test_lipsync_e2e.py)."""

    def __init__(self, dev):
        from mirage_desktop.voice import audio_io
        from mirage_desktop.voice.pipeline import StreamClock

        self.clock, self.bases, self.parts, self.n, self.status = StreamClock(SR), [], [], 0, 0
        self.cond = threading.Condition()
        self.stream = audio_io.open_stream(dev, SR, 480, self._cb, channels=1)

    def _cb(self, indata, frames, time_info, status):
        now = time.monotonic()
        with self.cond:
            self.status += bool(status)
            self.parts.append(indata[:, 0].copy())
            self.n += frames
            self.clock.update(now, self.n)
            self.bases.append((self.n, self.clock.base))
            self.cond.notify_all()

    def time_of(self, i):
        with self.cond:
            k = min(np.searchsorted([n for n, _ in self.bases], i + SR // 10), len(self.bases) - 1)
            return self.bases[k][1] + i / SR

    def wait_samples(self, n):
        with self.cond:
            assert self.cond.wait_for(lambda: self.n >= n, HANG_GUARD_S), f"recording stalled at {self.n}"

    def audio(self):
        with self.cond:
            return np.concatenate(self.parts)

    def close(self):
        self.stream.stop()
        self.stream.close()


def _onsets(y, thresh=0.05, min_gap_s=0.3):
    env = np.convolve(np.abs(y), np.ones(48) / 48, mode="same")
    out, last = [], -10 * SR
    for i in np.flatnonzero(env > thresh):
        if i - last > min_gap_s * SR:
            out.append(int(i))
        last = i if i - last > min_gap_s * SR else last
    return out


def _first_after(times, t0, t1):
    return next((t for t in times if t0 < t < t1), None)


def _flash_times(arrivals):
    out, lit = [], False
    for t, mean in arrivals:
        if mean > 150 and not lit:
            out.append(t)
        lit = mean > 150
    return out


def _wait_until(metrics, counter, cond):
    """Wait, counter by counter (frames coming back), until ``cond()`` holds."""
    n = metrics.counter(counter)
    while not cond():
        n += 1
        wait_counter(metrics, counter, n)


@pytest.fixture
def sync_devices(pulse, null_sink):
    from mirage_desktop.voice import mic

    null_sink("mirage_sync_in")  # the client's microphone (silent: the server sends its own markers)
    st = mic.setup()
    assert st["ready"]
    yield
    mic.remove()


@pytest.mark.audio
@pytest.mark.virtual_mic
def test_the_returned_video_leaves_with_the_audio_played_to_the_virtual_microphone(sync_devices, frame):
    from mirage_desktop.config import Settings
    from mirage_desktop.serve.app import AppThread
    from mirage_desktop.serve.remote import open_audio, sync_summary
    from mirage_desktop.vision.capture import ImageSource
    from mirage_desktop.voice import audio_io

    server = MarkerServer()
    app = AppThread(server.make_app, "127.0.0.1", 0).start()
    m = Metrics()
    link = RemoteLink(f"http://127.0.0.1:{app.port}", "token", fps=30, metrics=m)
    arrived: list[tuple[float, float]] = []  # (arrival, brightness) before the hold: the unsynced output
    got = link._got_timed

    def spy(img, t, t_ref, mode):
        arrived.append((t, float(img.mean())))
        got(img, t, t_ref, mode)
    link._got_timed = spy
    streams = open_audio(link, Settings(voice_output="Mirage Microphone", voice_input="mirage_sync_in.monitor"),
                         output_latency=OUTPUT_LATENCY_S)
    assert len(streams) == 2 and link.audio is not None
    sink = StampSink()
    runner = RemoteRunner(ImageSource(frame, fps=30), [sink], link)
    sink.runner = runner
    link.start()
    th = threading.Thread(target=runner.run, daemon=True)
    th.start()
    takes = []
    try:
        wait_counter(m, "remote.connected", 1)
        _wait_until(m, "remote.frames_back", lambda: link.clock_mode == "rtp" and
                    link.audio.audio_latency_s("rtp") is not None)
        wait_counter(m, "remote.sent_remote", m.counter("remote.sent_remote") + 90)  # the hold has eased in
        for _ in range(MAX_TAKES):
            rec = Recorder(audio_io.resolve_device("Mirage Microphone", "input"))
            rec.stream.start()
            rec.wait_samples(SR // 5)
            rec_from = rec.n
            disturbances = ("remote.audio_local_blocks", "remote.lost", "remote.audio_trimmed",
                            "remote.audio_standing_cut", "remote.audio_underruns")
            before = {k: m.counter(k) for k in disturbances}
            sink.late_flashes = 0
            instants = server.marks.arm(LEAD_S, GAP_S, FLASHES)
            rec.wait_samples(rec_from + int((LEAD_S + FLASHES * GAP_S + 0.5) * SR))
            rec.close()
            y = rec.audio()
            clicks = [rec.time_of(i) for i in _onsets(y) if i >= rec_from]
            with sink.lock:
                flashes = _flash_times(list(sink.arrivals))
            raw = _flash_times(list(arrived))
            pairs = [(inst, _first_after(flashes, inst, inst + GAP_S), _first_after(clicks, inst, inst + GAP_S),
                      _first_after(raw, inst, inst + GAP_S)) for inst in instants]
            lost = {k: m.counter(k) - v for k, v in before.items() if m.counter(k) != v}
            lost.update({"recorder": rec.status} if rec.status else {})
            lost.update({"flashes sent late": sink.late_flashes} if sink.late_flashes else {})
            takes.append((pairs, lost))
            ok = all(f is not None and c is not None and abs(f - c) <= TOLERANCE_S for _, f, c, _ in pairs)
            if ok or not lost:
                break  # judged: in sync, or a take without a disturbance
        snap = m.snapshot()
    finally:
        runner.stop()
        th.join(HANG_GUARD_S)
        for st in streams:
            st.stop()
            st.close()
        link.stop()
        app.call(server.shutdown())
        app.stop()
    for i, (pairs, lost) in enumerate(takes, 1):
        print(f"\ntake {i}: flash - click (ms) "
              f"{[round((f - c) * 1000) if f and c else None for _, f, c, _ in pairs]}; unsynced (arrival - click) "
              f"{[round((r - c) * 1000) if r and c else None for _, _, c, r in pairs]}; "
              f"click after instant {[round((c - t) * 1000) if c else None for t, _, c, _ in pairs]}; "
              f"lost: {lost or 'nothing'}")
    print("\n".join(sync_summary(snap)))
    pairs, lost = takes[-1]
    assert all(f is not None for _, f, _, _ in pairs), "a flash did not reach the virtual camera"
    assert all(c is not None for _, _, c, _ in pairs), "a click did not reach the virtual microphone"
    for inst, f, c, r in pairs:
        assert r is not None and f > inst and c > inst  # nothing leaves before it happened
        assert r - c < -2 * TOLERANCE_S  # unheld, the video would lead the audio by far more than the tolerance
        assert abs(f - c) <= TOLERANCE_S, f"flash {(f - inst) * 1000:.0f} ms, click {(c - inst) * 1000:.0f} ms"
    assert snap["gauges"].get("av.mode") == "remote rtp"
    off = snap["stages"]["av.offset_ms"]
    assert abs(off["p50"]) <= TOLERANCE_S * 1000  # the metric says what the devices showed
