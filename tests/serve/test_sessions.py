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
    assert server.closed[-1]["close_reason"] in ("connection closed", "the client's video ended")


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


def test_two_concurrent_sessions_each_get_their_own_identity(serve, token, client_loop, frame, astronaut,
                                                             grace_hopper_path, shared_engine):
    t, server = serve(max_width=SIZE, max_height=SIZE)
    photo_a = jpeg(astronaut[:, ::-1].copy())
    photo_b = grace_hopper_path.read_bytes()
    want_a, want_b = expected_swap(shared_engine, frame, photo_a), expected_swap(shared_engine, frame, photo_b)
    mask = (changed_mask(want_a, frame) | changed_mask(want_b, frame)) & ~_mark_box(frame)
    assert mean_diff(want_a, want_b, mask) > 20  # the two identities give visibly different faces
    a = _connect(client_loop, t.url, token, frame, photo_a)
    b = _connect(client_loop, t.url, token, frame, photo_b)
    for rs, got, ans in (a, b):
        wait_counter(server.sessions[ans["session"]].metrics, "faces.swapped", 3)
    back_a, back_b = a[1].wait(3), b[1].wait(3)
    assert mean_diff(back_a, want_a, mask) < 0.5 * mean_diff(back_a, want_b, mask)
    assert mean_diff(back_b, want_b, mask) < 0.5 * mean_diff(back_b, want_a, mask)
    # the models were loaded once: both sessions run on the shared engine's
    sa, sb = (server.sessions[x[2]["session"]] for x in (a, b))
    assert sa.engine.swapper is sb.engine.swapper is shared_engine.swapper
    assert sa.engine.latent is not None and sb.engine.latent is not None
    assert not np.allclose(sa.engine.latent, sb.engine.latent)
    # one session's end leaves the other running
    client_loop.run(a[0].close())
    assert server.wait_sessions(lambda n: n == 1, 120)
    n = sb.metrics.counter("frames.out")
    wait_counter(sb.metrics, "frames.out", n + 5)
    client_loop.run(b[0].close())


def test_a_failing_session_leaves_the_other_untouched(serve, token, client_loop, frame, astronaut):
    t, server = serve(max_width=SIZE, max_height=SIZE)
    photo = jpeg(astronaut[:, ::-1].copy())
    a = _connect(client_loop, t.url, token, frame, photo)
    b = _connect(client_loop, t.url, token, frame, photo)
    sa, sb = (server.sessions[x[2]["session"]] for x in (a, b))
    wait_counter(sa.metrics, "frames.out", 3)
    wait_counter(sb.metrics, "frames.out", 3)

    def broken(frame):  # this session's sink fails on every frame
        raise RuntimeError("sink exploded")

    sa.sink.send = broken
    wait_counter(sa.metrics, "errors.output:webrtc", 3)
    n = sb.metrics.counter("frames.out")
    wait_counter(sb.metrics, "frames.out", n + 10)
    assert sb.metrics.counter("errors.output:webrtc") == 0
    b[1].wait(3)
    for x in (a, b):
        client_loop.run(x[0].close())


def test_sessions_enhance_with_the_shared_enhancer_model(serve, token, client_loop, frame, astronaut,
                                                         model_factory, tmp_path):
    from mirage_desktop.config import Settings
    from mirage_desktop.engine import Engine
    from mirage_desktop.serve.app import AppThread, ServeConfig, Server
    from mirage_desktop.testing import face_models as synthetic
    from serve_support import SECRET

    paths = dict(model_factory(astronaut), gfpgan_1_4=synthetic.build_gfpgan(tmp_path / "gfpgan_1_4.onnx"))
    shared = Engine(Settings(enable_enhancer=True, enhancer="gfpgan", enhancer_async=False), model_overrides=paths)
    shared.load_models()
    assert shared.enhance_stage is not None
    server = Server(ServeConfig(secret=SECRET, port=0), shared)
    t = AppThread(server.make_app, "127.0.0.1", 0).start()
    try:
        a = _connect(client_loop, t.url, token, frame, jpeg(astronaut[:, ::-1].copy()))
        b = _connect(client_loop, t.url, token, frame, jpeg(astronaut[:, ::-1].copy()))
        sa, sb = (server.sessions[x[2]["session"]] for x in (a, b))
        for s in (sa, sb):
            wait_counter(s.metrics, "enhance.runs", 3)  # each session's own stage ran the model
        assert sa.engine.enhance_stage is not sb.engine.enhance_stage
        assert sa.engine.enhance_stage.enhancer is sb.engine.enhance_stage.enhancer is shared.enhance_stage.enhancer
        for x in (a, b):
            client_loop.run(x[0].close())
    finally:
        t.call(server.close_all("test over"))
        t.stop()
