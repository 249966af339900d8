"""The `mirage` command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from mirage_desktop.cli import main


def _model_args(paths):
    return [a for name in ("det_10g", "w600k_r50", "inswapper_128_fp16") for a in ("--model", f"{name}={paths[name]}")]


@pytest.fixture
def photos(tmp_path, astronaut, grace_hopper_path, model_factory):
    target = tmp_path / "astronaut.png"
    cv2.imwrite(str(target), astronaut)
    return {"target": target, "source": grace_hopper_path, "paths": model_factory(astronaut)}


def test_swap_a_still(photos, tmp_path, capsys, astronaut):
    out = tmp_path / "out.png"
    rc = main(["swap", "--source", str(photos["target"]), "--target", str(photos["target"]), "-o", str(out),
               "--confirm-rights", *_model_args(photos["paths"])])
    assert rc == 0, capsys.readouterr().err
    res = cv2.imread(str(out))
    diff = np.any(res != astronaut, axis=2)
    ys, xs = np.nonzero(diff[:400, :400])  # the face (the AI mark sits in the bottom-right corner)
    assert diff[100:130, 210:240].all() and xs.min() > 120 and ys.max() < 260
    assert "swapped 1 of 1 face(s)" in capsys.readouterr().err


def test_swap_refuses_without_consent_when_not_interactive(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    rc = main(["swap", "--source", str(photos["source"]), "--target", str(photos["target"]), "-o",
               str(tmp_path / "o.png"), *_model_args(photos["paths"])])
    assert rc == 2 and "--confirm-rights" in capsys.readouterr().err


def test_run_to_a_file_with_metrics(photos, tmp_path, capsys):
    out, metrics = tmp_path / "out.mp4", tmp_path / "m.json"
    rc = main(["run", "--input", str(photos["target"]), "--source", str(photos["target"]), "--confirm-rights",
               "--output", f"file:{out}", "--frames", "20", "--metrics-json", str(metrics),
               *_model_args(photos["paths"])])
    err = capsys.readouterr().err
    assert rc == 0, err
    snap = json.loads(metrics.read_text())
    assert snap["counters"]["frames.out"] >= 20
    assert not any(k.startswith("dropped.") for k in snap["counters"])  # file to file: nothing dropped
    for stage in ("worker", "swap", "total", "output"):
        assert snap["stages"][stage]["p95"] is not None
    assert snap["status"]["provider"] == "CPUExecutionProvider"
    assert "P95 ms" in err and "frames in" in err
    assert cv2.VideoCapture(str(out)).read()[0]


def test_run_without_models_passes_through_and_says_why(photos, tmp_path, capsys):
    rc = main(["run", "--input", str(photos["target"]), "--output", "null", "--frames", "5"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "pass-through:" in err and "mirage models download" in err


def test_ctrl_c_stops_cleanly(photos, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "mirage_desktop", "run", "--input", str(photos["target"]),
                          "--output", "null", "--source", str(photos["target"]), "--confirm-rights",
                          *_model_args(photos["paths"])],
                         stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    line = ""
    while time.time() < deadline and "running" not in line:
        line = p.stderr.readline()
        if not line and p.poll() is not None:
            break
    assert "running" in line, line
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "frames in" in err and "Traceback" not in err


def test_devices_and_doctor(capsys):
    assert main(["devices", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"cameras", "virtual_camera_backends", "audio"} <= set(info)
    assert any(b["backend"] == "v4l2loopback" for b in info["virtual_camera_backends"]) or sys.platform != "linux"
    assert main(["devices"]) == 0  # the human-readable listing too
    listing = capsys.readouterr().out
    assert "Cameras:" in listing and "Virtual camera backends:" in listing and "Audio devices:" in listing
    rc = main(["doctor"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "onnxruntime" in out and "fix: mirage models download" in out and "virtual camera" in out


def test_bench_prints_percentiles_and_fps(capsys):
    rc = main(["bench", "--compute", "tiny", "--frames", "20", "--faces", "1,6", "--source-fps", "60"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "1 face(s), 1280x720" in out and "6 face(s), 1280x720" in out
    assert "worker.outside_model" in out and "FPS out" in out and "P99 ms" in out
    six = out.split("6 face(s)")[1]
    swapped = float(six.split("faces swapped/frame")[0].split(",")[-1])
    assert swapped > 5.0
