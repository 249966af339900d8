"""The output clock from PortAudio's reported play times (scripted callbacks, no devices)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mirage_desktop.voice import pipeline
from mirage_desktop.voice.pipeline import StreamClock, _adc_reported, _dac_delay_s

SR = 48000
N = 480  # frames per callback


def _ti(current, dac):
    return SimpleNamespace(currentTime=current, outputBufferDacTime=dac, inputBufferAdcTime=0.0)


def test_dac_delay_is_the_difference_on_portaudios_own_clock_or_none():
    assert _dac_delay_s(_ti(1.7e9, 1.7e9 + 0.025)) == pytest.approx(0.025, abs=1e-6)  # doubles near 1.7e9 s
    assert _dac_delay_s(_ti(0.0, 0.0)) is None  # host API does not report it
    assert _dac_delay_s(None) is None  # scripted callers pass no time_info
    assert _dac_delay_s(_ti(100.0, 99.0)) is None  # plays before now: a bad report
    assert _dac_delay_s(_ti(100.0, 100.0 + pipeline.MAX_DAC_DELAY_S + 1)) is None


def test_a_grown_device_buffer_moves_the_exact_clock_a_late_callback_does_not_move_it():
    clock = StreamClock(SR)
    t0, delay = 10.0, 0.020
    # callbacks every 10 ms, some of them late: the reported play time of their first frame is
    # the same either way (the device plays at its own rate), so the clock does not move
    for k in range(20):
        late = 0.008 if k % 3 == 0 else 0.0
        now = t0 + k * N / SR + late
        clock.update_exact(now + (delay - late), k * N)
    assert clock.time_of(0) == pytest.approx(t0 + delay)
    # the sound server grew the buffer by 400 ms after an underrun: every frame plays that much
    # later; within a few callbacks (the median's half window) the clock has it
    for k in range(20, 20 + pipeline.EXACT_WINDOW // 2 + 1):
        clock.update_exact(t0 + k * N / SR + delay + 0.4, k * N)
    assert clock.time_of(30 * N) == pytest.approx(t0 + 30 * N / SR + delay + 0.4)
    # one odd report (1 s off) does not move it
    clock.update_exact(t0 + 40 * N / SR + delay + 1.4, 40 * N)
    assert clock.time_of(40 * N) == pytest.approx(t0 + 40 * N / SR + delay + 0.4)


def test_the_old_min_clock_misses_a_grown_buffer_the_reason_for_the_exact_one():
    """Callback times alone do not show a buffer the server grew: callbacks keep coming at the
    device rate, only every frame plays later. (This is what the reported delay is for.)"""
    clock = StreamClock(SR)
    for k in range(40):  # the same callback times before and after the buffer grew
        clock.update(10.0 + k * N / SR + 0.020, k * N)
    assert clock.time_of(30 * N) == pytest.approx(10.0 + 30 * N / SR + 0.020)  # 400 ms too early


def test_capture_times_reported_means_a_real_device():
    """A real device's input clock takes no reported buffer latency off (the pipeline's rule)."""
    assert _adc_reported(SimpleNamespace(inputBufferAdcTime=1.7e9))
    assert not _adc_reported(SimpleNamespace(inputBufferAdcTime=0.0))
    assert not _adc_reported(None)
