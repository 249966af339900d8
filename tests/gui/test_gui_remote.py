"""The window's "Engine: remote server": a real `mirage serve` in its own process on 127.0.0.1 (tiny
synthetic models), the window as its client (gui/remote.py over serve/remote.py).

Every wait is for a counter or a state (qtbot.waitUntil with the conftest's generous deadline);
nothing sleeps, nothing asserts on time."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("aiortc", reason="the serve extra is not installed (pip install 'mirage-desktop[serve]')")

from tests_support import HANG_GUARD_S  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"gui-test-secret-0123456789abcdef-0123456789"
SIZE = 256  # the camera frame: small, so the codec stays cheap on a shared CPU


# ---- a real server in its own process --------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`mirage serve` on 127.0.0.1:port with the synthetic models; killed and started again at will."""

    def __init__(self, tmp: Path, models: dict):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = tmp / "secret"
        self.secret.write_bytes(SECRET)
        self.log = tmp / "serve.log"
        self.models = models
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "mirage_desktop", "serve", "--port", str(self.port), "--secret-file",
               str(self.secret), "--idle-timeout", "5"]
        for name in ("det_10g", "w600k_r50", "inswapper_128"):
            cmd += ["--model", f"{name}={self.models[name]}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), env=env)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(HANG_GUARD_S)


def _token(secret: bytes = SECRET) -> str:
    from mirage_desktop.serve.auth import make_token

    return make_token(secret, 3600)


@pytest.fixture(scope="module")
def frame(astronaut) -> np.ndarray:
    return cv2.resize(astronaut, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture
def server(tmp_path, model_factory, astronaut):
    models = model_factory(astronaut)
    srv = ServerProcess(tmp_path, models)
    yield srv
    srv.kill()


@pytest.fixture
def token_file(tmp_path) -> Path:
    p = tmp_path / "token"
    p.write_text(_token() + "\n")
    return p


def _expected_swap(models: dict, frame: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """What the server makes of ``frame`` with the identity of ``photo`` (the same models, here)."""
    from mirage_desktop.config import Settings
    from mirage_desktop.engine import Engine

    e = Engine(Settings(), model_overrides=models)
    e.load_models()
    e.set_source_photos([photo], "local")
    out = frame.copy()
    assert e.process_still(out).swapped >= 1
    return out


def _mask(a, b, level=40):
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > level


def _diff(a, b, mask) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32))[mask].mean())


class Seen:
    """What the window's preview was fed, by kind ("remote": from the server, "local": passed through)."""

    def __init__(self, run):
        self.last: dict[str, np.ndarray] = {}
        inner = run.on_frame

        def on_frame(kind, f):
            self.last[kind] = f.copy()
            inner(kind, f)

        run.on_frame = on_frame


def _choose_remote(win, url: str, token_path: str | Path) -> None:
    win.engine_remote.click()
    win.remote_url.setText(url)
    win.remote_url.editingFinished.emit()
    win.token_file._set(str(token_path))


def _add_face(qtbot, win, path: Path) -> None:
    win.picker.add_photos([str(path)])
    qtbot.waitUntil(lambda: win.controller._remote_identity is not None)


def _counts(win) -> dict:
    run = win.controller.remote
    return dict(run.counts) if run is not None else {"remote": 0, "local": 0}


def _remote_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("mirage-remote", "mirage-gui-remote"))]


# ---- the choice, its checks and its settings ----------------------------------------------------------
def test_the_client_options_are_the_servers():
    from mirage_desktop.gui.remote import FORWARDED
    from mirage_desktop.serve.session import CLIENT_OPTIONS

    assert tuple(FORWARDED) == tuple(CLIENT_OPTIONS)


@pytest.mark.parametrize("url, words", [
    ("", "no server address"), ("host:8443", "is not a server address"), ("ftp://host:8443", "is not a server"),
    ("https://", "is not a server address"), ("https://host:99999", "bad port"),
    ("https://host:8443/offer", "has a path"),
])
def test_a_bad_address_is_one_line_and_nothing_starts(qtbot, make_window, token_file, url, words):
    win = make_window()
    _choose_remote(win, url, token_file)
    win.start()
    assert words in win.last_error and "https://host:8443" in win.last_error  # what is wrong, and the fix
    assert "\n" not in win.last_error and not win.remote_check.isHidden()
    assert not win.controller.running and not win.controller.run_pending and win.start_btn.isEnabled()


@pytest.mark.parametrize("content, words", [
    (None, "No such file"), ("dir", "Is a directory"), ("", "is empty"), ("hello world", "does not hold a token"),
    (b"\xff\xfe\xfa", "UnicodeDecodeError"),
])
def test_an_unusable_token_file_is_one_line_and_nothing_starts(qtbot, make_window, tmp_path, content, words):
    p = tmp_path / "tok"
    if content == "dir":
        p.mkdir()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    win = make_window()
    _choose_remote(win, "https://127.0.0.1:8443", p)
    win.start()
    assert words in win.last_error and "mirage serve token" in win.last_error
    assert "\n" not in win.last_error
    assert not win.controller.running and not win.controller.run_pending


def test_the_choice_address_and_token_file_are_saved_and_a_pasted_token_is_not(qtbot, make_window, settle,
                                                                               caplog):
    from mirage_desktop import config
    from mirage_desktop.paths import config_dir

    caplog.set_level(logging.DEBUG)
    win = make_window()
    assert win.engine_local.isChecked() and not win.remote_url.isEnabled()
    token = _token()
    win.engine_remote.click()
    win.remote_url.setText("https://gpu.example:8443")
    win.remote_url.editingFinished.emit()
    win.token_paste.setText(token)
    win.token_save.click()
    assert win.token_paste.text() == ""  # not kept in the widget
    saved = Path(win.token_file.path())
    assert saved.parent == config_dir() and saved.read_text().strip() == token
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    settle(win)
    win.close()
    text = config.settings_path().read_text()
    assert token not in text and token not in caplog.text
    values = json.loads(text)
    assert values["engine_mode"] == "remote" and values["remote_url"] == "https://gpu.example:8443"
    assert values["remote_token_file"] == str(saved)
    win2 = make_window()  # the next start shows the same choice
    assert win2.engine_remote.isChecked() and win2.remote_url.text() == "https://gpu.example:8443"
    assert win2.token_file.path() == str(saved) and win2.remote_url.isEnabled()
    win2.engine_local.click()
    settle(win2)
    win2.close()
    assert config.load().settings.engine_mode == "local"


def test_pasting_something_that_is_not_a_token_says_so(qtbot, make_window):
    from mirage_desktop.paths import config_dir

    win = make_window()
    win.engine_remote.click()
    win.token_paste.setText("not a token")
    win.token_save.click()
    assert "not a token" in win.remote_check.text() and not win.remote_check.isHidden()
    assert not (config_dir() / "remote-token").exists() and win.token_file.path() == ""


def test_with_a_remote_server_only_the_forwarded_controls_stay_enabled(qtbot, make_window):
    from mirage_desktop.gui.remote import FORWARDED

    win = make_window()
    t = win.toggles
    win.engine_remote.click()
    for name, w in t.controls.items():
        assert w.isEnabled() == (name in FORWARDED), name
    assert not t.reference.isEnabled() and not t.voice.isEnabled()
    assert not t.remote_note.isHidden() and "Face swap" in t.remote_note.text()
    assert "this computer only" in t.remote_note.text()
    win.engine_local.click()
    assert all(w.isEnabled() for n, w in t.controls.items() if n != "codeformer_fidelity")
    assert t.fidelity.isEnabled() == t.enhancer.isChecked()
    assert t.reference.isEnabled() and t.voice.isEnabled() and t.remote_note.isHidden()


def test_a_face_without_consent_is_never_given_to_the_remote_engine(qtbot, make_window, tmp_path, astronaut):
    photo = tmp_path / "face.jpg"
    cv2.imwrite(str(photo), astronaut[:, ::-1].copy())
    asked = []
    win = make_window(consent=lambda name, thumb: asked.append(name) or False)
    win.picker.add_photos([str(photo)])
    qtbot.waitUntil(lambda: bool(asked) and not win.picker.is_busy)
    assert win.controller._remote_identity is None  # refused: no photo would go to a server


# ---- against a real server -------------------------------------------------------------------------------
def test_remote_engine_swaps_passes_through_while_the_server_is_away_and_resumes(
        qtbot, make_window, server, token_file, frame, astronaut, tmp_path):
    baseline = set(threading.enumerate())
    mirrored = astronaut[:, ::-1].copy()
    photo = tmp_path / "face.jpg"
    cv2.imwrite(str(photo), mirrored, [cv2.IMWRITE_JPEG_QUALITY, 95])
    want = _expected_swap(server.models, frame, cv2.imread(str(photo)))
    mask = _mask(want, frame)
    server.start()
    win = make_window(image=frame)
    _choose_remote(win, server.url, token_file)
    _add_face(qtbot, win, photo)  # consent confirmed in the picker: its photo goes to the server
    win.start()
    qtbot.waitUntil(lambda: win.controller.remote is not None)
    run = win.controller.remote
    seen = Seen(run)
    fed = win.controller.feed.frames_in

    # swapped frames from the server reach the preview
    qtbot.waitUntil(lambda: run.counts["remote"] >= 5 and "remote" in seen.last)
    last = seen.last["remote"]
    assert _diff(last, want, mask) < 0.5 * _diff(last, frame, mask)
    assert win.controller.feed.frames_in > fed
    qtbot.waitUntil(lambda: win.preview.painted_frames > 0)
    qtbot.waitUntil(lambda: win.sb_engine.text().startswith("remote engine: connected"))
    qtbot.waitUntil(lambda: win.banner.level == "green")  # the banner follows at the next status poll
    assert win.toggles.controls["enable_enhancer"].isEnabled() is False

    # the plots show the remote path: the control channel's round trip, the server's time, the frame gap
    qtbot.waitUntil(lambda: {"round trip", "frame gap"} <= set(win.history.stages))
    qtbot.waitUntil(lambda: bool(win.history.fps) and win.history.fps[-1] > 0)

    # a forwarded option reaches the server's session: face swap off -> the face comes back unswapped
    win.toggles.swap.setChecked(False)
    qtbot.waitUntil(lambda: _diff(seen.last["remote"], frame, mask) < 0.5 * _diff(seen.last["remote"], want, mask))
    win.toggles.swap.setChecked(True)
    qtbot.waitUntil(lambda: _diff(seen.last["remote"], want, mask) < 0.5 * _diff(seen.last["remote"], frame, mask))

    # the server goes away: the preview keeps getting the local camera, the status says so, in red
    server.kill()
    n = run.counts["local"]
    qtbot.waitUntil(lambda: run.counts["local"] >= n + 10)
    np.testing.assert_array_equal(seen.last["local"], frame)  # unswapped, never a frozen old frame
    qtbot.waitUntil(lambda: "local pass-through" in win.sb_engine.text())
    qtbot.waitUntil(lambda: "server lost" in win.remote_state.text() and "reconnecting" in win.remote_state.text())
    qtbot.waitUntil(lambda: win.banner.level == "red")
    assert win.controller.running

    # back on the same address: swapped again, by itself
    server.start()
    n = run.counts["remote"]
    qtbot.waitUntil(lambda: run.counts["remote"] >= n + 5)
    qtbot.waitUntil(lambda: _diff(seen.last["remote"], want, mask) < 0.5 * _diff(seen.last["remote"], frame, mask))
    qtbot.waitUntil(lambda: win.sb_engine.text().startswith("remote engine: connected"))

    # stop, then close: nothing of the remote stream is left running
    win.stop()
    qtbot.waitUntil(lambda: not win.controller.running and not win.controller.run_pending)
    assert not _remote_threads() and win.start_btn.text() == "Start"
    win.close()
    qtbot.waitUntil(lambda: not [t for t in threading.enumerate() if t not in baseline and t.is_alive()
                                 and not t.name.startswith("mirage-gui-job")])


def test_a_bad_token_is_one_line_401_and_the_app_keeps_running(qtbot, make_window, server, tmp_path, frame):
    server.start()
    bad = tmp_path / "forged"
    bad.write_text(_token(b"another-secret-0123456789abcdef-0123456789"))
    win = make_window(image=frame)
    _choose_remote(win, server.url, bad)
    win.start()
    qtbot.waitUntil(lambda: "401" in win.last_error)
    assert "\n" not in win.last_error and "mirage serve token" in win.last_error
    assert win.controller.running  # the app runs on: the camera goes out unswapped
    run = win.controller.remote
    n = run.counts["local"]
    qtbot.waitUntil(lambda: run.counts["local"] >= n + 5)
    assert run.counts["remote"] == 0 and "refused" in win.sb_engine.text()
    qtbot.waitUntil(lambda: win.banner.level == "red")
    win.close()
    qtbot.waitUntil(lambda: not _remote_threads())


def test_a_face_chosen_while_remote_goes_to_the_server_and_closing_stops_everything(
        qtbot, make_window, server, token_file, frame, astronaut, tmp_path):
    photo = tmp_path / "face.jpg"
    cv2.imwrite(str(photo), astronaut[:, ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 95])
    want = _expected_swap(server.models, frame, cv2.imread(str(photo)))
    mask = _mask(want, frame)
    server.start()
    win = make_window(image=frame)
    _choose_remote(win, server.url, token_file)
    win.start()  # no face yet: the server sends the camera back unswapped
    qtbot.waitUntil(lambda: win.controller.remote is not None)
    run = win.controller.remote
    seen = Seen(run)
    qtbot.waitUntil(lambda: run.counts["remote"] >= 3 and "remote" in seen.last)
    assert _diff(seen.last["remote"], frame, mask) < 0.5 * _diff(seen.last["remote"], want, mask)
    assert win.latency_plot.title.startswith("Remote server")
    _add_face(qtbot, win, photo)  # consent confirmed: the running session gets the photo
    qtbot.waitUntil(lambda: _diff(seen.last["remote"], want, mask) < 0.5 * _diff(seen.last["remote"], frame, mask))
    # the face is removed (its consent withdrawn, say): the server cannot take a session's face
    # back, so the session ends and the link reconnects without it -- the camera comes back unswapped
    sessions = run.link.sessions_seen
    win.controller.set_identity(None)
    qtbot.waitUntil(lambda: run.link.sessions_seen > sessions and run.counts["remote"] > 0)
    n = run.counts["remote"]
    qtbot.waitUntil(lambda: run.counts["remote"] >= n + 3)
    assert _diff(seen.last["remote"], frame, mask) < 0.5 * _diff(seen.last["remote"], want, mask)
    win.close()  # no Stop first
    assert win.controller.remote is None
    qtbot.waitUntil(lambda: not _remote_threads())


def test_no_server_at_the_address_is_pass_through_and_reconnecting(qtbot, make_window, token_file, frame):
    win = make_window(image=frame)
    _choose_remote(win, f"http://127.0.0.1:{_free_port()}", token_file)  # nothing listens there
    win.start()
    qtbot.waitUntil(lambda: win.controller.remote is not None)
    run = win.controller.remote
    qtbot.waitUntil(lambda: run.link.metrics.counter("remote.lost") >= 1 and run.counts["local"] >= 5)
    assert run.counts["remote"] == 0
    qtbot.waitUntil(lambda: "server lost" in win.sb_engine.text() and "reconnecting" in win.sb_engine.text())
    qtbot.waitUntil(lambda: win.banner.level == "red")  # the banner follows at the next status poll
    assert win.controller.running
    win.stop()
    qtbot.waitUntil(lambda: not win.controller.running and not win.controller.run_pending)
    assert not _remote_threads() and not win.sb_engine.isVisibleTo(win)


# ---- the opt-in monitoring endpoints (`mirage run --metrics-port` as a window setting) -------------------
def _get(url: str, token: str | None) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=HANG_GUARD_S) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_monitoring_endpoints_need_the_token_are_kept_and_stop_with_the_window(qtbot, make_window, tmp_path,
                                                                                 settle):
    from mirage_desktop import config

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    port = _free_port()
    win = make_window()
    win.monitor_secret._set(str(secret))
    win.monitor_port.setValue(port)
    win.monitor.setChecked(True)
    qtbot.waitUntil(lambda: win.controller.endpoints is not None and "/health" in win.monitor_state.text())
    url = win.controller.endpoints.url
    assert url == f"http://127.0.0.1:{port}"
    assert _get(url + "/health", None) == 401 and _get(url + "/metrics", _token(b"x" * 40)) == 401
    assert _get(url + "/health", _token()) in (200, 503)  # the verdict, with the token
    assert _get(url + "/metrics", _token()) == 200
    settle(win)
    win.close()
    assert win.controller.endpoints is None and not [t for t in threading.enumerate() if t.name == "mirage-serve"]
    prefs = config.load().settings.extra["gui"]
    assert prefs["monitor"] is True and prefs["monitor_port"] == port and prefs["monitor_secret"] == str(secret)
    win2 = make_window()  # on again at the next start, from the saved choice
    qtbot.waitUntil(lambda: win2.controller.endpoints is not None)
    assert _get(win2.controller.endpoints.url + "/metrics", _token()) == 200
    win2.monitor.setChecked(False)
    qtbot.waitUntil(lambda: win2.controller.endpoints is None and win2.monitor_state.text() == "Off")


@pytest.mark.parametrize("problem, words", [("no secret", "no shared secret"), ("port taken", "choose another port"),
                                            ("short secret", "too short")])
def test_monitoring_that_cannot_start_is_one_line(qtbot, make_window, tmp_path, monkeypatch, problem, words):
    monkeypatch.delenv("MIRAGE_SERVE_SECRET", raising=False)
    secret = tmp_path / "secret"
    secret.write_bytes(b"short" if problem == "short secret" else SECRET)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        win = make_window()
        if problem != "no secret":
            win.monitor_secret._set(str(secret))
        win.monitor_port.setValue(busy.getsockname()[1] if problem == "port taken" else _free_port())
        win.monitor.setChecked(True)
        qtbot.waitUntil(lambda: words in win.last_error)
        assert "\n" not in win.last_error and win.controller.endpoints is None
        assert words in win.monitor_state.text()
    finally:
        busy.close()


# ---- the devices on this computer, with a remote engine --------------------------------------------------
def _remote_controller(make_engine, token_file, url):
    from mirage_desktop.gui.app import create_app
    from mirage_desktop.gui.controller import EngineController

    create_app()
    eng = make_engine()
    for name, value in (("engine_mode", "remote"), ("remote_url", url), ("remote_token_file", str(token_file))):
        eng.set_option(name, value)
    c = EngineController(eng)
    notes, errors, running = [], [], []
    c.notice.connect(notes.append)
    c.error.connect(errors.append)
    c.running_changed.connect(running.append)
    return c, notes, errors, running


def test_remote_without_a_virtual_camera_keeps_the_preview_and_says_why(qtbot, make_engine, token_file, frame,
                                                                       monkeypatch):
    from mirage_desktop.errors import VirtualCameraError
    from mirage_desktop.outputs import sinks
    from mirage_desktop.vision.capture import ImageSource

    def no_vcam(self, width, height, fps):
        raise VirtualCameraError("no virtual camera could be started (no loopback device)", "load v4l2loopback")

    monkeypatch.setattr(sinks.VirtualCameraSink, "open", no_vcam)
    c, notes, errors, running = _remote_controller(make_engine, token_file, f"http://127.0.0.1:{_free_port()}")
    try:
        c.start(ImageSource(frame, fps=15, realtime=True), ["virtualcam"])
        qtbot.waitUntil(lambda: bool(running))
        assert running == [True] and errors == [] and c.remote is not None
        assert len(notes) == 1 and notes[0].startswith("Virtual camera unavailable") and "no loopback" in notes[0]
        n = c.feed.frames_in
        qtbot.waitUntil(lambda: c.feed.frames_in >= n + 5)  # the preview goes on (local pass-through here)
    finally:
        c.shutdown()
    assert c.remote is None and not _remote_threads()


def test_remote_with_a_busy_camera_is_an_error_and_nothing_runs(qtbot, make_engine, token_file, frame):
    from test_gui_controller import BusyCamera

    c, notes, errors, running = _remote_controller(make_engine, token_file, f"http://127.0.0.1:{_free_port()}")
    try:
        cam = BusyCamera(frame, fail_times=1)
        c.start(cam, ["null"])
        qtbot.waitUntil(lambda: bool(running))
        assert running == [False] and errors and "camera 0 cannot be opened" in errors[0]
        assert c.remote is None and cam.cap is None and not _remote_threads()
    finally:
        c.shutdown()


def test_the_round_trip_keeps_updating_past_the_last_fifty_replies():
    """The session keeps only its last 50 pong replies: the window's reader goes by their sequence
    numbers, so the round trip and the server's figures never stop updating."""
    import time as _time

    from mirage_desktop.gui.remote import make_link
    from mirage_desktop.metrics import Metrics
    from mirage_desktop.serve.client import RemoteSession

    m = Metrics()
    link = make_link("http://127.0.0.1:9", "t", None, 30.0, {}, metrics=m)  # never started
    rs = RemoteSession("http://127.0.0.1:9", "t")
    link.live = rs
    for i in range(120):
        rs._on_control(json.dumps({"type": "pong", "t": _time.monotonic(), "server": {"frames_out": i}}))
        if i % 7 == 6:
            link.read_pongs()
    link.read_pongs()
    link.read_pongs()  # nothing new: nothing recorded twice
    assert m.histogram("remote.rtt").count == 120 and link.server == {"frames_out": 119}
