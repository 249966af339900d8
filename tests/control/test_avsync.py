"""The A/V delay buffer on a scripted clock: frames leave at capture + audio latency (+ trim)."""

from dataclasses import dataclass

import pytest

from mirage_desktop.control.avsync import DRIFT_FRAMES, LATE_S, MAX_LATE_RUN, AVSync
from mirage_desktop.metrics import Metrics


@dataclass
class Pkt:
    t_capture: float
    index: int = 0


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def _run(av, clock, frames, latency, process_s, dt=1 / 30, trim_ms=0.0):
    """Feed ``frames`` frames captured every ``dt``, ready ``process_s`` after capture; poll the
    buffer every millisecond of scripted time; return {index: output time}."""
    av.set_audio_latency(latency)
    av.set_trim(trim_ms)
    out = {}
    start = clock.t
    arrivals = [(start + i * dt + process_s, Pkt(start + i * dt, i)) for i in range(frames)]
    t_end = arrivals[-1][0] + latency + trim_ms / 1000 + 1.0
    step = 0.001
    k = 0
    while clock.t <= t_end:
        while k < len(arrivals) and arrivals[k][0] <= clock.t:
            av.push(arrivals[k][1])
            k += 1
        for p in av.pop_due():
            out[p.index] = clock.t
            av.sent(p, clock.t)
        clock.t += step
    return out


@pytest.mark.parametrize("latency", [0.05, 0.2, 0.31])
def test_frames_leave_at_capture_plus_audio_latency(latency):
    clock, m = Clock(), Metrics()
    av = AVSync(m, clock=clock)
    out = _run(av, clock, 60, latency, process_s=0.012)
    assert len(out) == 60
    for i, t in out.items():
        assert abs(t - (100.0 + i / 30 + latency)) <= 0.001 + 1e-9
    off = m.histogram("av.offset_ms").summary()
    assert abs(off["p50"]) <= 1.0 and abs(off["p95"]) <= 1.0
    assert m.counter("dropped.av_late") == 0


def test_the_trim_shifts_release_and_late_limit():
    clock, m = Clock(), Metrics()
    av = AVSync(m, clock=clock)
    out = _run(av, clock, 30, 0.2, process_s=0.01, trim_ms=40)
    for i, t in out.items():
        assert abs(t - (100.0 + i / 30 + 0.24)) <= 0.001 + 1e-9
    # a negative trim brings video earlier; the late limit moves with it
    clock2, m2 = Clock(), Metrics()
    av2 = AVSync(m2, clock=clock2)
    av2.set_audio_latency(0.2)
    av2.set_trim(-100)
    assert av2.push(Pkt(clock2.t - (0.1 + LATE_S) + 0.005)) is True  # 145 ms late: kept
    assert av2.push(Pkt(clock2.t - (0.1 + LATE_S) - 0.005)) is False  # 155 ms late: dropped
    assert m2.counter("dropped.av_late") == 1


def test_a_late_frame_is_dropped_and_counted_but_the_video_never_freezes():
    clock, m = Clock(), Metrics()
    av = AVSync(m, clock=clock)
    av.set_audio_latency(0.1)
    assert av.push(Pkt(clock.t - 0.1 - LATE_S - 0.001)) is False
    assert m.counter("dropped.av_late") == 1
    assert av.push(Pkt(clock.t - 0.1)) is True  # on time again: kept, the run of late ones ends
    kept = [av.push(Pkt(clock.t - 0.5)) for _ in range(3 * MAX_LATE_RUN)]
    # of a steady stream of late frames, one in MAX_LATE_RUN still goes out (counted)
    assert kept.count(True) == m.counter("av.late_sent") == 3  # 45 late: 3 x (14 dropped + 1 sent)
    assert av.behind


def test_without_a_master_frames_leave_on_arrival_and_are_never_dropped():
    clock, m = Clock(), Metrics()
    av = AVSync(m, clock=clock)
    av.set_audio_latency(None)
    assert av.push(Pkt(clock.t - 5.0)) is True  # however old
    assert len(av.pop_due()) == 1
    assert m.counter("dropped.av_late") == 0


def test_a_latency_change_is_spread_over_frames():
    clock, m = Clock(), Metrics()
    av = AVSync(m, clock=clock, slew_s=0.002)
    av.set_audio_latency(0.1)
    av.push(Pkt(clock.t))
    av.set_audio_latency(0.2)
    delays = []
    for _ in range(60):
        av.push(Pkt(clock.t))
        delays.append(av.delay_s)
    steps = [b - a for a, b in zip(delays, delays[1:])]
    assert max(steps) <= 0.002 + 1e-9
    assert delays[-1] == pytest.approx(0.2)


def test_sustained_drift_is_corrected_by_a_soft_skip():
    """An output that slowly falls behind (each send takes 34 ms at 30 FPS in, so frames pile up in
    the hold): nothing is skipped until DRIFT_FRAMES frames in a row left late; then, of several frames
    due at once, only the newest goes, and the lateness stops growing."""
    clock, m = Clock(), Metrics()
    av = AVSync(m, clock=clock)
    av.set_audio_latency(0.1)
    start = clock.t
    arrivals = [(start + i / 30 + 0.01, Pkt(start + i / 30, i)) for i in range(900)]
    k, lateness, first_skip_at = 0, [], None
    while k < len(arrivals) or len(av):
        while k < len(arrivals) and arrivals[k][0] <= clock.t:
            av.push(arrivals[k][1], clock.t)
            k += 1
        due = av.pop_due(clock.t)
        if not due:
            clock.t += 0.001
            continue
        for p in due:
            clock.t += 0.034  # the slightly slow sink
            av.sent(p, clock.t)
            lateness.append(clock.t - (p.t_capture + 0.1))
        if m.counter("dropped.av_drift") and first_skip_at is None:
            first_skip_at = len(lateness)
    assert first_skip_at is not None and first_skip_at > DRIFT_FRAMES
    assert max(lateness) < LATE_S  # bounded: without the skip it grows by 0.67 ms a frame, 0.6 s in all
    assert m.counter("dropped.av_late") == 0  # the skip keeps the frames within the late limit


def test_the_offset_is_measured_against_the_voice_not_against_the_hold():
    """The voice latency steps from 100 to 300 ms: the hold follows at the slew rate, and the
    offset shows the video early meanwhile instead of reading 0 by construction."""
    clock, m = Clock(), Metrics()
    av = AVSync(m, clock=clock)
    av.set_audio_latency(0.1)
    for i in range(5):
        p = Pkt(clock.t)
        av.push(p)
        av.sent(p, clock.t + 0.1)
    av.set_audio_latency(0.3)
    p = Pkt(clock.t)
    av.push(p)
    av.sent(p, clock.t + av.delay_s)
    vals = m.histogram("av.offset_ms").values()
    assert abs(vals[0]) < 1e-6 and vals[-1] < -190  # 196 ms early while the hold catches up


def test_a_trim_and_a_voice_path_that_appears_mid_stream_are_eased_in():
    clock, m = Clock(), Metrics()
    av = AVSync(m, clock=clock, slew_s=0.004)
    av.set_audio_latency(None)
    av.push(Pkt(clock.t))  # frames went out without a master
    av.set_audio_latency(0.2)
    av.push(Pkt(clock.t))
    assert av.delay_s == pytest.approx(0.004)  # not a 200 ms freeze of the camera
    for _ in range(60):
        av.push(Pkt(clock.t))
    assert av.delay_s == pytest.approx(0.2)
    av.set_trim(300)
    before = av.delay_s
    av.push(Pkt(clock.t))
    assert av.delay_s - before == pytest.approx(0.004)
