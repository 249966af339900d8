import numpy as np
import pytest

from mirage_desktop.voice.resample import StreamResampler
from mirage_desktop.voice.sola import SolaCrossfader


@pytest.mark.parametrize("sr_in,sr_out", [(48000, 16000), (16000, 48000), (44100, 16000), (16000, 44100)])
def test_stream_resampler_matches_tone_and_is_block_independent(sr_in, sr_out):
    t = np.arange(int(sr_in * 0.5)) / sr_in
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = StreamResampler(sr_in, sr_out).process(x)
    rs = StreamResampler(sr_in, sr_out)
    rng = np.random.default_rng(1)
    parts, i = [], 0
    while i < x.size:
        n = int(rng.integers(1, 900))
        parts.append(rs.process(x[i:i + n]))
        i += n
    pieced = np.concatenate(parts)
    assert np.allclose(whole, pieced[: whole.size], atol=1e-5)  # same result however it is cut
    # output sample n is the input at time n / sr_out (no phase shift)
    n = np.arange(whole.size)
    ref = 0.5 * np.sin(2 * np.pi * 440 * n / sr_out)
    mid = slice(200, whole.size - 10)
    assert np.max(np.abs(whole[mid] - ref[mid])) < 0.01


def test_sola_removes_clicks_from_phase_jumps():
    """Chunks of a sine whose phase restarts every chunk: plain concatenation clicks, SOLA does not."""
    sr, block, xf, search, f = 16000, 3072, 640, 160, 200.0
    sola = SolaCrossfader(xf, search)
    outs, naive = [], []
    rng = np.random.default_rng(0)
    for _ in range(8):
        n = np.arange(block + xf + search)
        chunk = 0.5 * np.sin(2 * np.pi * f * n / sr + rng.uniform(0, 2 * np.pi))
        outs.append(sola.process(chunk.astype(np.float32), block))
        naive.append(chunk[:block])
    smooth = np.abs(np.diff(np.concatenate(outs)))
    clicky = np.abs(np.diff(np.concatenate(naive)))
    normal_step = 0.5 * 2 * np.pi * f / sr  # largest sample step of the sine itself
    assert clicky.max() > 3 * normal_step
    assert smooth.max() < 1.2 * normal_step
