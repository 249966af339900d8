"""`mirage run` and `mirage swap` as a user meets them: every file they write fails with one line naming
the fix and leaves nothing half-written; recordings are finalised under their name only when complete;
signals stop as cleanly as Ctrl-C; camera values are checked before a driver sees them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from tests_support import as_foreground

from mirage_desktop.cli import main

DEADLINE_S = 120  # only a guard against a hung child: nothing asserts on how long anything takes


def _frames_in(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and not p.name.startswith(".filler")]


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("mirage: error")]


@pytest.fixture(scope="module")
def noise_clip(tmp_path_factory) -> Path:
    """Frames that do not compress: a recording fills a small disk quickly."""
    p = tmp_path_factory.mktemp("clip") / "noise.avi"
    rng = np.random.default_rng(0)
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for _ in range(30):
        w.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    w.release()
    return p


@pytest.fixture(scope="module")
def still(tmp_path_factory, astronaut) -> Path:
    p = tmp_path_factory.mktemp("still") / "astronaut.png"
    cv2.imwrite(str(p), astronaut)
    return p


# ---- recordings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 120])
def test_frames_n_writes_exactly_n(still, noise_clip, tmp_path, capsys, n):
    for src in (still, noise_clip):
        out = tmp_path / f"{src.stem}.mp4"
        rc = main(["run", "--input", str(src), "--output", f"file:{out}", "--frames", str(n), "--no-swap",
                   "--loop" if src == noise_clip else "--no-smoothing"])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert _frames_in(out) == n
        assert f"file {out}: {n} frames written" in err
        assert _leftovers(tmp_path) == []


def test_a_finite_clip_is_recorded_whole(noise_clip, tmp_path, capsys):
    out = tmp_path / "all.avi"
    assert main(["run", "--input", str(noise_clip), "--output", f"file:{out}", "--no-swap"]) == 0
    assert _frames_in(out) == 30
    assert "30 frames written" in capsys.readouterr().err


def test_a_recording_that_cannot_be_written_is_one_line(still, unwritable_target, capsys):
    path, words = unwritable_target
    target = path if path.is_dir() else path.with_suffix(".avi")
    rc = main(["run", "--input", str(still), "--output", f"file:{target}", "--frames", "5", "--no-swap"])
    err = capsys.readouterr().err
    lines = _errors(err)
    assert rc in (1, 2) and len(lines) == 1, err
    assert words in lines[0] and str(target) in lines[0]
    assert "Traceback" not in err
    if not target.is_dir():
        assert not target.exists()
    if target.parent.is_dir():
        assert _leftovers(target.parent) == []


@pytest.mark.parametrize("name", ["out.xyz", "out", "out.png"])
def test_a_recording_with_an_unknown_extension_is_refused_before_anything_runs(still, tmp_path, capsys, name):
    rc = main(["run", "--input", str(still), "--output", f"file:{tmp_path / name}", "--frames", "2"])
    lines = _errors(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and "not a video format" in lines[0] and ".mp4" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_disk_that_fills_mid_recording_stops_the_run_and_keeps_the_frames(noise_clip, small_disk, capsys):
    out = small_disk / "rec.avi"
    rc = main(["run", "--input", str(noise_clip), "--loop", "--output", f"file:{out}", "--frames", "100000",
               "--no-swap"])
    err = capsys.readouterr().err
    lines = _errors(err)
    assert rc == 1 and len(lines) == 1, err
    assert "the disk is full" in lines[0] and "free some space" in lines[0]
    kept = int(lines[0].split("; ")[1].split(" frames are kept")[0])
    assert kept > 0 and _frames_in(out) == kept  # what the message says is what the file holds
    assert _leftovers(small_disk) == []


# ---- signals ----------------------------------------------------------------------------------------

def _spawn_run(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "mirage_desktop", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parents[2],
                            preexec_fn=as_foreground)


def _wait_for(cond, proc: subprocess.Popen) -> None:
    """Wait (bounded) for ``cond`` while the child runs; fail with its output if it dies first."""
    end = time.monotonic() + DEADLINE_S
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"mirage run ended early ({proc.returncode}): {err[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("mirage run did not get going")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_stops_a_recording_cleanly(noise_clip, tmp_path, sig):
    out = tmp_path / "rec.mp4"
    metrics = tmp_path / "m.json"
    proc = _spawn_run(["--input", str(noise_clip), "--loop", "--output", f"file:{out}", "--no-swap",
                       "--metrics-json", str(metrics)])
    _wait_for(metrics.exists, proc)  # frames are flowing
    temp = [p for p in tmp_path.iterdir() if p.name.startswith(".rec.recording-")]
    assert temp and not out.exists()  # written under a temporary name until finalised
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith(f"file {out}:")]
    assert line, err
    written = int(line[0].split(": ")[1].split(" frames")[0])
    assert written > 0 and _frames_in(out) == written
    assert _leftovers(tmp_path) == []


def test_a_metrics_file_that_fills_the_disk_mid_run_is_a_warning_and_a_nonzero_exit(still, small_disk, tmp_path):
    metrics = small_disk / "m.json"
    proc = _spawn_run(["--input", str(still), "--output", "null", "--no-swap", "--metrics-json", str(metrics)])
    _wait_for(metrics.exists, proc)
    with open(small_disk / ".filler", "wb", buffering=0) as fh:  # now the disk fills up under the running command
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 1, err
    warnings = [ln for ln in err.splitlines() if "mirage: warning" in ln]
    assert len(warnings) == 1 and "cannot write metrics file" in warnings[0] and "disk is full" in warnings[0]
    assert "Traceback" not in err


def test_an_unwritable_metrics_file_is_refused_before_the_run(still, unwritable_target, capsys):
    path, words = unwritable_target
    rc = main(["run", "--input", str(still), "--output", "null", "--frames", "3", "--metrics-json", str(path)])
    lines = _errors(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and words in lines[0] and "metrics file" in lines[0]


# ---- mirage swap's output ---------------------------------------------------------------------------

def test_a_swap_output_that_cannot_be_written_is_one_line(model_factory, astronaut, still, unwritable_target,
                                                          capsys):
    path, words = unwritable_target
    target = path if path.is_dir() else path.with_suffix(".png")
    models = model_factory(astronaut)
    rc = main(["swap", "--source", str(still), "--target", str(still), "-o", str(target), "--confirm-rights"]
              + [x for k, p in models.items() for x in ("--model", f"{k}={p}")])
    err = capsys.readouterr().err
    lines = _errors(err)
    assert rc == 2 and len(lines) == 1, err
    assert words in lines[0] and "Traceback" not in err
    if not target.is_dir():
        assert not target.exists()
    if target.parent.is_dir():
        assert _leftovers(target.parent) == []


@pytest.mark.parametrize("name", ["out.xyz", "out.gif", "out"])
def test_a_swap_output_with_an_unknown_extension_is_refused_first(still, tmp_path, capsys, name):
    rc = main(["swap", "--source", str(still), "--target", str(still), "-o", str(tmp_path / name),
               "--confirm-rights"])
    lines = _errors(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and "not an image format" in lines[0] and ".png" in lines[0]
    assert list(tmp_path.iterdir()) == []


# ---- camera values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-1", "-7", "abc", "1.5", "", " ", "/dev/video99", "0x1", "²", "5000",
                                   "99999999999999999999"])
def test_a_bad_camera_value_is_one_line(value, capsys):
    rc = main(["run", "--camera", value, "--output", "null", "--frames", "1"])
    err = capsys.readouterr().err
    lines = _errors(err)
    assert rc == 2 and len(lines) == 1, err
    assert "mirage devices" in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_a_bad_camera_in_the_environment_names_the_variable(value, capsys, monkeypatch):
    monkeypatch.setenv("MIRAGE_CAMERA", value)
    rc = main(["run", "--output", "null", "--frames", "1"])
    lines = _errors(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and f"MIRAGE_CAMERA={value}" in lines[0]


def test_a_camera_device_path_is_opened_as_a_camera(noise_clip, tmp_path, capsys):
    """``/dev/video2`` style paths open through the camera code. No video device exists in a container,
    so the "device" is a path to a real clip, which OpenCV's camera open accepts through its fallback."""
    dev = tmp_path / "video2"
    dev.symlink_to(noise_clip)
    out = tmp_path / "cam.avi"
    rc = main(["run", "--camera", str(dev), "--output", f"file:{out}", "--frames", "5", "--no-swap"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"running camera {dev}" in err
    assert _frames_in(out) == 5


def test_a_camera_that_cannot_be_opened_is_one_line(capsys):
    rc = main(["run", "--camera", "7", "--output", "null", "--frames", "1"])
    lines = _errors(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and "camera 7 cannot be opened" in lines[0]


def test_a_killed_run_never_leaves_a_half_file_under_the_users_name(noise_clip, tmp_path):
    """SIGKILL (or a power cut) cannot be caught: the final name never appears, the partial stays
    under its hidden name, and the next run into the same folder says so."""
    out = tmp_path / "rec.avi"
    metrics = tmp_path / "m.json"
    proc = _spawn_run(["--input", str(noise_clip), "--loop", "--output", f"file:{out}", "--no-swap",
                       "--metrics-json", str(metrics)])
    _wait_for(metrics.exists, proc)
    proc.kill()
    proc.communicate(timeout=DEADLINE_S)
    assert not out.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".rec.recording-")]
    assert len(partial) == 1
    again = subprocess.run([sys.executable, "-m", "mirage_desktop", "run", "--input", str(noise_clip), "--output",
                            f"file:{out}", "--frames", "3", "--no-swap"], capture_output=True, text=True,
                           cwd=Path(__file__).parents[2])
    assert again.returncode == 0, again.stderr
    assert f"an unfinished recording from an earlier run is kept as {partial[0]}" in again.stderr
    assert _frames_in(out) == 3 and partial[0].exists()  # the old partial is the user's to keep or delete


def test_stdin_is_a_video_file_not_a_camera(noise_clip, tmp_path):
    out = tmp_path / "o.avi"
    with open(noise_clip, "rb") as fh:
        r = subprocess.run([sys.executable, "-m", "mirage_desktop", "run", "--input", "/dev/stdin", "--output",
                            f"file:{out}", "--no-swap"], stdin=fh, capture_output=True, text=True,
                           cwd=Path(__file__).parents[2], timeout=DEADLINE_S)
    assert r.returncode == 0, r.stderr
    assert _frames_in(out) == 30  # the clip once: it ended, as a file does


def test_an_ignored_hangup_stays_ignored(still, tmp_path):
    """Under nohup SIGHUP is ignored before mirage starts: closing the terminal must not stop the run."""
    metrics = tmp_path / "m.json"
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "mirage_desktop", "run", "--input", str(still), "--output",
                             "null", "--no-swap", "--metrics-json", str(metrics)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parents[2],
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    _wait_for(metrics.exists, proc)
    proc.send_signal(signal.SIGHUP)
    metrics.unlink()
    _wait_for(metrics.exists, proc)  # still running and writing snapshots after the hangup
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0


def test_the_same_recording_twice_is_refused(still, tmp_path, capsys):
    out = tmp_path / "a.avi"
    rc = main(["run", "--input", str(still), "--output", f"file:{out}", "--output", f"file:{out}", "--frames", "2"])
    lines = _errors(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and "given twice" in lines[0]


def test_a_refused_extension_makes_no_folders(still, tmp_path, capsys):
    rc = main(["run", "--input", str(still), "--output", f"file:{tmp_path / 'new' / 'a' / 'out.xyz'}"])
    assert rc == 2 and not (tmp_path / "new").exists()
    rc = main(["swap", "--source", str(still), "--target", str(still), "-o", str(tmp_path / "new2" / "x.gif"),
               "--confirm-rights"])
    assert rc == 2 and not (tmp_path / "new2").exists()


def test_a_long_file_name_the_system_accepts_is_written(tmp_path):
    from mirage_desktop.fsutil import atomic_write_text, check_writable_target

    p = tmp_path / ("m" * 245 + ".json")
    check_writable_target(p)
    atomic_write_text(p, "{}")
    assert p.read_text() == "{}"


def test_an_unfinished_recording_with_brackets_in_its_name_is_found(noise_clip, tmp_path, caplog):
    import logging

    out = tmp_path / "take[1].avi"
    (tmp_path / ".take[1].recording-999999.avi").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        assert main(["run", "--input", str(noise_clip), "--output", f"file:{out}", "--frames", "2",
                     "--no-swap"]) == 0
    assert "an unfinished recording from an earlier run is kept as" in caplog.text


def test_asking_for_more_frames_than_the_input_has_says_so(noise_clip, tmp_path, capsys):
    out = tmp_path / "o.avi"
    assert main(["run", "--input", str(noise_clip), "--output", f"file:{out}", "--frames", "31", "--no-swap"]) == 0
    err = capsys.readouterr().err
    assert "the input ended after 30 of the 31 frames asked for" in err and _frames_in(out) == 30
