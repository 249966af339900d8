"""The `mirage` command as a user runs it."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from tests_support import HANG_GUARD_S, as_foreground

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
    m = re.search(r"first swapped frame ([0-9.]+) s after (process|command) start "
                  r"\(models loaded at ([0-9.]+) s\)", err)
    assert m and float(m.group(1)) >= float(m.group(3)) > 0, err
    assert cv2.VideoCapture(str(out)).read()[0]


def test_run_without_models_passes_through_and_says_why(photos, tmp_path, capsys):
    rc = main(["run", "--input", str(photos["target"]), "--output", "null", "--frames", "5"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "pass-through:" in err and "mirage models download" in err


class _Terminal:
    """A pseudo-terminal a subprocess writes to, as it would in a user's terminal; reads block
    until output arrives (the timeout is a hang guard only)."""

    def __init__(self):
        import pty

        self.master, self.slave = pty.openpty()
        self.text = ""

    def started(self) -> None:
        os.close(self.slave)  # the child holds its own copy: EOF once it exits

    def read_until(self, pred) -> bool:
        end = time.monotonic() + 3 * HANG_GUARD_S  # a hang guard: output that never ends
        while not pred(self.text):
            assert time.monotonic() < end, f"no end after {3 * HANG_GUARD_S:.0f} s; so far: {self.text[-2000:]!r}"
            ready, _, _ = select.select([self.master], [], [], HANG_GUARD_S)
            assert ready, f"no output for {HANG_GUARD_S:.0f} s; so far: {self.text[-2000:]!r}"
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                return pred(self.text)
            self.text += chunk.decode(errors="replace")
        return True

    def close(self) -> None:
        os.close(self.master)


def test_ctrl_c_stops_cleanly(photos, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    term = _Terminal()
    p = subprocess.Popen([sys.executable, "-m", "mirage_desktop", "run", "--input", str(photos["target"]),
                          "--output", "null", "--source", str(photos["target"]), "--confirm-rights",
                          *_model_args(photos["paths"])],
                         stdin=subprocess.DEVNULL, stdout=term.slave, stderr=term.slave, env=env,
                         preexec_fn=as_foreground)
    term.started()
    try:
        # on a terminal the run shows a status line every second: wait for one that says frames
        # are flowing (FPS above 0 needs two frames out), then press Ctrl-C
        def flowing(text):
            return any(float(f) > 0 for f in re.findall(r"\r\s*([0-9.]+) FPS", text))

        assert term.read_until(lambda t: "running" in t and flowing(t)), term.text
        p.send_signal(signal.SIGINT)
        term.read_until(lambda t: False)  # everything, until the process closes the terminal
        p.wait(HANG_GUARD_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        term.close()
    err = term.text
    assert p.returncode == 0, err
    summary = re.search(r"frames in (\d+), out (\d+)", err)
    assert summary and int(summary[2]) > 0, err  # the summary counts the frames that went out
    assert "Traceback" not in err


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
    assert rc == (1 if "[FIX ]" in out else 0)  # non-zero exactly when something needs fixing here
    assert "onnxruntime" in out and "fix: mirage models download" in out and "virtual camera" in out


def test_bench_times_from_the_first_swapped_frame(capsys, monkeypatch, tmp_path, t1_path):
    from mirage_desktop.engine import Engine

    runs = []  # per engine run: faces swapped on each frame out
    real_start, real_stop = Engine.start, Engine.stop

    def start(self, *a, **k):
        seen = []
        runs.append(seen)
        self._test_token = self.subscribe_frames(lambda p: seen.append(p.swapped))
        return real_start(self, *a, **k)

    def stop(self):
        real_stop(self)
        if getattr(self, "_test_token", None) is not None:
            self.unsubscribe_frames(self._test_token)
            self._test_token = None

    monkeypatch.setattr(Engine, "start", start)
    monkeypatch.setattr(Engine, "stop", stop)
    res = tmp_path / "bench.json"
    rc = main(["bench", "--compute", "tiny", "--frames", "20", "--faces", "1,6", "--source-fps", "60",
               "--json", str(res)])
    cap = capsys.readouterr()
    out = cap.out
    assert rc == 0, cap.err
    assert "tiny models" in cap.err
    assert "1 face(s), 1280x720" in out and "6 face(s), 1280x720 (insightface's t1.jpg" in out
    assert "worker.outside_model" in out and "FPS out" in out and "P99 ms" in out and "detect.lag" in out
    report = json.loads(res.read_text())["scenarios"]
    # four runs: a warm-up and the measured run per scenario; in each measured run, the frames
    # before the first swapped one are reported, not counted, and every counted frame has all faces
    assert len(runs) == 4
    for seen, r, n in zip(runs[1::2], report, (1, 6)):
        first = next(i for i, k in enumerate(seen) if k)
        assert r["unswapped_before_first"] == first
        assert r["frames_measured"] == 20 and r["faces_swapped_per_frame"] == n == r["faces_expected"]
        assert seen[first:first + 20] == [n] * 20
        assert f"{n}.00 faces swapped/frame (of {n})" in out
        assert f"({first} unswapped before it, not counted)" in out
        assert r["stages"]["detect.interval"]["count"] >= 1 and r["stages"]["detect.lag"]["p50"] > 0
        # the scripted (fixed-size) detector answers the same whatever it is shown: never run on a region
        assert r["detect_crop"] == 0 and r["detect_full"] >= 1
    assert "on the faces' region" in out


def test_bench_measures_the_parser_as_its_own_stage(capsys, tmp_path):
    res = tmp_path / "bench.json"
    rc = main(["bench", "--compute", "tiny", "--frames", "12", "--faces", "1", "--source-fps", "60",
               "--parser", "--parser-interval", "1", "--parser-sync", "--json", str(res)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    (r,) = json.loads(res.read_text())["scenarios"]
    # inline, every frame: one model run per measured frame (the first one's ran before the clock started)
    assert r["frames_measured"] == 12 and r["stages"]["parse.model"]["count"] >= 11
    assert "parse.model" in cap.out


def test_bench_fails_when_a_face_is_not_swapped(capsys, monkeypatch, t1_path):
    from mirage_desktop.testing import face_models as synthetic

    real = synthetic.scripted_faces_for_image
    # a detector that misses one of the six faces in the clip
    monkeypatch.setattr(synthetic, "scripted_faces_for_image", lambda *a, **k: real(*a, **k)[:5])
    rc = main(["bench", "--compute", "tiny", "--frames", "5", "--faces", "6", "--source-fps", "60"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "5.00 faces swapped/frame (of 6)" in cap.out
    assert "5 of 5 measured frames had fewer than 6 faces swapped (fewest 5)" in cap.err


def test_bench_gpu_suite_runs_here_and_says_what_it_skipped(tmp_path, capsys):
    from mirage_desktop.models.runtime import available_providers

    res = tmp_path / "gpu.json"
    rc = main(["bench", "--providers", "cuda", "--json", str(res), "--frames", "4"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    r = json.loads(res.read_text())
    gpu = "CUDAExecutionProvider" in available_providers()
    assert r["ran_on"] == ("CUDAExecutionProvider" if gpu else "CPUExecutionProvider")
    if not gpu:
        assert any("CUDAExecutionProvider is not in this onnxruntime" in s["why"] for s in r["skipped"])
        assert r["swapper_paths"]["fp32"]["io_binding"]["skipped"] and "skipped" in cap.out
    for prec in ("fp32", "fp16"):
        for m in ("det_10g", "w600k_r50", "inswapper_128"):
            assert r["stages"][prec][m]["p50"] > 0
        assert r["swapper_paths"][prec]["session.run"]["p50"] > 0
    combos = {(e["size"], e["faces"], e["precision"]) for e in r["end_to_end"]}
    assert combos == {("1280x720", 1, "fp16"), ("1280x720", 1, "fp32"), ("1280x720", 6, "fp16"),
                      ("1920x1080", 1, "fp16"), ("1920x1080", 6, "fp16")}
    for e in r["end_to_end"]:
        assert e["fps"] > 0 and e["faces_swapped_per_frame"] == e["faces"]
        assert e["latency_ms_p95"] >= e["latency_ms_p50"] > 0
        assert "skipped" in e["nvml"] or e["nvml"]["samples"] > 0
    fs = r["first_swapped_frame"]
    assert fs["cold"]["seconds"] > 0 and fs["warm"]["seconds"] > 0


def test_bench_refuses_region_detections_that_match_no_tracked_face():
    """A detector that answers the same whatever it is shown (the side-by-side harness's scripted
    one) finds "faces" on the region where none is tracked: the run says so and names the flag."""
    from mirage_desktop.commands.bench import failure

    r = {"faces": 1, "frames_measured": 50, "frames_short": 0, "finished": True, "faces_expected": 1,
         "fewest_swapped": 1, "detect_crop": 10, "detect_crop_unmatched": 8}
    assert "--full-frame-detect" in failure(r)
    r["detect_crop_unmatched"] = 1  # a face walking into the region now and then is not that
    assert failure(r) is None
