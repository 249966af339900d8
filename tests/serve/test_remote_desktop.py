"""The desktop as a client: `mirage serve` in its own process, killed and started again; the
desktop's output falls back to local pass-through at once and resumes swapping when it is back.
Also the desktop's opt-in endpoints (``mirage run --metrics-port``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from serve_support import SECRET, changed_mask, expected_swap, jpeg, mean_diff, wait_counter
from tests_support import HANG_GUARD_S

from mirage_desktop.metrics import Metrics
from mirage_desktop.outputs.sinks import NullSink
from mirage_desktop.serve.remote import RemoteLink, RemoteRunner
from mirage_desktop.vision.capture import ImageSource

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int, secret_file: Path, models: dict, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "mirage_desktop", "serve", "--port", str(port), "--secret-file", str(secret_file),
           "--idle-timeout", "5"]
    for name in ("det_10g", "w600k_r50", "inswapper_128"):
        cmd += ["--model", f"{name}={models[name]}"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=env)


class Outputs:
    def __init__(self):
        self.last: dict[str, np.ndarray] = {}

    def __call__(self, kind, frame):
        self.last[kind] = frame.copy()


def test_the_desktop_falls_back_to_pass_through_when_the_server_dies_and_resumes(
        tmp_path, shared_engine, frame, astronaut, token):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    port = _free_port()
    log = tmp_path / "serve.log"
    photo = jpeg(astronaut[:, ::-1].copy())
    want = expected_swap(shared_engine, frame, photo)
    mask = changed_mask(want, frame)
    m = Metrics()
    link = RemoteLink(f"http://127.0.0.1:{port}", token, photo, consent=True, fps=15, lost_after_s=1.0,
                      backoff_s=(0.2, 1.0), stale_s=0.5, metrics=m)
    runner = RemoteRunner(ImageSource(frame, fps=15), [NullSink()], link)
    seen = Outputs()
    runner.on_frame = seen
    proc = _start_server(port, secret, shared_engine.overrides, log)
    link.start()
    th = threading.Thread(target=runner.run, daemon=True)
    th.start()
    try:
        wait_counter(m, "remote.connected", 1)
        wait_counter(m, "remote.sent_remote", 5)
        assert mean_diff(seen.last["remote"], want, mask) < 0.5 * mean_diff(seen.last["remote"], frame, mask)
        lost = m.counter("remote.lost")  # the attempts before the server listened
        proc.kill()  # the server goes away without a word
        proc.wait(HANG_GUARD_S)
        n = m.counter("remote.sent_local")
        wait_counter(m, "remote.sent_local", n + 10)  # the output keeps moving: local frames
        np.testing.assert_array_equal(seen.last["local"], frame)  # unswapped, never a frozen old frame
        assert "local pass-through" in link.status_text()
        wait_counter(m, "remote.lost", lost + 1)
        assert "server lost" in link.status_text() and "reconnecting" in link.status_text()
        proc = _start_server(port, secret, shared_engine.overrides, log)  # back, on the same address
        wait_counter(m, "remote.connected", 2)
        n = m.counter("remote.sent_remote")
        wait_counter(m, "remote.sent_remote", n + 5)
        assert mean_diff(seen.last["remote"], want, mask) < 0.5 * mean_diff(seen.last["remote"], frame, mask)
        assert link.status_text().startswith("remote engine: connected")
    finally:
        runner.stop()
        th.join(HANG_GUARD_S)
        link.stop()
        proc.kill()
        proc.wait(HANG_GUARD_S)
    assert not th.is_alive()


def test_the_desktop_endpoints_need_the_token_and_serve_the_engine(monkeypatch, client_loop, model_factory,
                                                                   astronaut, token):
    from mirage_desktop.config import Settings
    from mirage_desktop.engine import Engine
    from mirage_desktop.serve.app import start_endpoints

    monkeypatch.setenv("MIRAGE_SERVE_SECRET", SECRET.decode())
    eng = Engine(Settings(), model_overrides=model_factory(astronaut))
    eng.load_models()
    eng.set_source_photos([astronaut[:, ::-1].copy()], "mirror")
    eng.start(ImageSource(astronaut, fps=30), [NullSink()])
    ep = start_endpoints(eng, 0)
    try:
        assert ep.host == "127.0.0.1"  # loopback only, whatever else the machine has
        wait_counter(eng.metrics, "frames.out", 10)

        async def get(path, auth=True):
            async with aiohttp.ClientSession() as http:
                async with http.get(ep.url + path, headers={"Authorization": f"Bearer {token}"} if auth else {}) as r:
                    return r.status, await r.text()

        assert client_loop.run(get("/metrics", auth=False))[0] == 401
        status, text = client_loop.run(get("/metrics"))
        assert status == 200
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert any(s.labels.get("stage") == "total" and s.labels.get("quantile") == "0.95"
                   for s in fams["mirage_stage_latency_seconds"].samples)
        assert fams["mirage_frames_out"].samples[0].value >= 10
        status, text = client_loop.run(get("/health"))
        assert status == 200 and '"level"' in text
    finally:
        ep.stop()
        eng.stop()


def test_the_microphone_goes_through_the_server_and_falls_back_to_the_local_one(serve, token, frame):
    from mirage_desktop.serve.client import AUDIO_RATE
    from mirage_desktop.serve.remote import AudioBridge

    t, server = serve()
    m = Metrics()
    link = RemoteLink(t.url, token, None, fps=15, lost_after_s=1.0, backoff_s=(0.2, 1.0), metrics=m)
    bridge = AudioBridge(stale_s=0.5, metrics=m)
    link.audio = bridge
    back = []
    on_back = bridge.on_back
    bridge.on_back = lambda x, *rest: (back.append(x.copy()), on_back(x, *rest))
    i = np.arange(int(0.45 * AUDIO_RATE))
    bridge.on_mic(0.5 * np.sin(2 * np.pi * 440.0 * i / AUDIO_RATE))  # 0.45 s said into the microphone
    runner = RemoteRunner(ImageSource(frame, fps=15), [NullSink()], link)  # the camera keeps it alive
    link.start()
    th = threading.Thread(target=runner.run, daemon=True)
    th.start()
    try:
        wait_counter(m, "remote.connected", 1)
        wait_counter(m, "remote.audio_back", 50)  # 1 s of audio back
        x = np.concatenate(back)
        spec = np.abs(np.fft.rfft(x))
        hz = np.fft.rfftfreq(x.size, 1.0 / 48_000)[int(np.argmax(spec[1:])) + 1]
        assert abs(hz - 440.0) < 5.0  # the microphone's tone came back from the server
        bridge.fill(960)
        assert bridge.last_kind == "remote"
        lost = m.counter("remote.lost")
        t.call(server.close_all("server going away"))
        t.stop()
        wait_counter(m, "remote.lost", lost + 1)
        local = np.full(960, 0.25, np.float32)
        bridge.on_mic(local)
        out = bridge.fill(960)
        assert bridge.last_kind == "local"  # nothing from the server: the microphone as it is
        assert np.count_nonzero(out) > 0
    finally:
        runner.stop()
        th.join(HANG_GUARD_S)
        link.stop()


def test_stop_cancels_an_attempt_that_the_server_never_answers():
    """A server that takes the connection and never answers: stop() cancels the attempt at once
    instead of waiting out the connect timeout (here an hour, far past the hang guard)."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)  # the kernel accepts the connection; nobody ever reads or answers
        port = lsock.getsockname()[1]
        link = RemoteLink(f"http://127.0.0.1:{port}", "t", connect_timeout_s=3600.0).start()
        accepted, _ = lsock.accept()  # the attempt is under way: its request went out
        with accepted:
            link.stop(timeout=HANG_GUARD_S)
            assert not link._thread.is_alive() and link.state == "stopped"


def test_a_stop_before_the_link_has_its_loop_is_not_lost():
    """stop() before the link's thread has made its event loop (here: before it starts at all):
    the thread ends at once and makes no attempt."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        lsock.settimeout(0)
        link = RemoteLink(f"http://127.0.0.1:{lsock.getsockname()[1]}", "t")
        link.stop()
        link.start()
        link._thread.join(HANG_GUARD_S)
        assert not link._thread.is_alive()
        try:
            lsock.accept()
            connected = True
        except BlockingIOError:
            connected = False
        assert not connected and link.metrics.counter("remote.lost") == 0
