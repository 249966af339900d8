"""Sessions over aiortc on 127.0.0.1: frames come back swapped with the session's own identity."""

from __future__ import annotations

import numpy as np
from serve_support import SIZE, Received, changed_mask, expected_swap, jpeg, mean_diff, wait_counter

from mirage_desktop.serve.client import FeedTrack, RemoteSession


def _connect(client_loop, url, token, frame, photo, consent=True):
    got = Received()
    rs = RemoteSession(url, token, on_frame=got)

    async def go():
        return await rs.connect(FeedTrack(lambda n: frame.copy(), fps=15), photo=photo, consent=consent)

    ans = client_loop.run(go())
    return rs, got, ans


def test_frames_come_back_swapped_with_the_uploaded_identity(serve, token, client_loop, frame, astronaut,
                                                             shared_engine):
    t, server = serve(max_width=SIZE, max_height=SIZE)
    photo = jpeg(astronaut[:, ::-1].copy())
    rs, got, ans = _connect(client_loop, t.url, token, frame, photo)
    assert ans["identity"]["identity"] == "remote"
    session = server.sessions[ans["session"]]
    wait_counter(session.metrics, "faces.swapped", 3)
    back = got.wait(5)
    want = expected_swap(shared_engine, frame, photo)
    mask = changed_mask(want, frame)  # where the swap (and the AI mark) changes the picture
    assert mask.sum() > 500
    # the frame that came back is the swapped picture, not the camera's: far closer to the local swap
    assert mean_diff(back, want, mask) < 0.5 * mean_diff(back, frame, mask)
    client_loop.run(rs.close())
    assert server.wait_sessions(lambda n: n == 0, 120)
    assert server.closed[-1].close_reason is not None


def test_without_an_identity_the_video_comes_back_as_it_was_sent(serve, token, client_loop, frame, astronaut,
                                                                  shared_engine):
    t, server = serve(max_width=SIZE, max_height=SIZE)
    rs, got, ans = _connect(client_loop, t.url, token, frame, None)
    session = server.sessions[ans["session"]]
    wait_counter(session.metrics, "frames.out", 5)
    back = got.wait(3)
    want = expected_swap(shared_engine, frame, jpeg(astronaut[:, ::-1].copy()))
    mask = changed_mask(want, frame) & ~_mark_box(frame)
    assert session.metrics.counter("faces.swapped") == 0
    assert mean_diff(back, frame, mask) < 0.5 * mean_diff(back, want, mask)
    client_loop.run(rs.close())


def test_a_photo_without_the_consent_confirmation_is_refused_and_nothing_starts(serve, token, client_loop, frame,
                                                                              astronaut):
    from mirage_desktop.serve.client import ServeError

    t, server = serve(max_width=SIZE, max_height=SIZE)
    try:
        _connect(client_loop, t.url, token, frame, jpeg(astronaut), consent=False)
        raise AssertionError("a photo without consent was accepted")
    except ServeError as exc:
        assert exc.status == 403 and "consent" in str(exc)
    assert not server.sessions and server.opened_total == 0
    assert server.metrics.counter("requests.rejected.no_consent") == 1


def _mark_box(frame) -> np.ndarray:
    """The bottom-right corner where the visible "AI" mark is drawn."""
    m = np.zeros(frame.shape[:2], bool)
    h, w = m.shape
    m[h * 3 // 4:, w * 3 // 4:] = True
    return m
