"""A look at the window without a camera: the screenshot script, and `mirage gui` on qasync."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    for k, sub in (("MIRAGE_CONFIG_DIR", "c"), ("MIRAGE_DATA_DIR", "d"), ("MIRAGE_CACHE_DIR", "x"),
                   ("MIRAGE_MODELS_DIR", "m")):
        env[k] = str(tmp_path / sub)
    return env


def test_screenshot_script_renders_the_window_with_a_real_photo(tmp_path):
    out = tmp_path / "window.png"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot.py"), str(out), "--seconds", "1.5",
                        "--size", "1280x800"], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    img = cv2.imread(str(out))
    assert img is not None and img.shape[:2] == (800, 1280)
    # the preview shows the astronaut photo: many colours in the middle of the window
    mid = img[200:600, 350:900]
    assert len(np.unique(mid.reshape(-1, 3), axis=0)) > 2000
    assert not (tmp_path / "c").exists(), "the demo must not touch the user's dirs"


def test_mirage_gui_runs_on_the_qasync_loop_and_quits(tmp_path, astronaut):
    photo = tmp_path / "cam.png"
    cv2.imwrite(str(photo), astronaut)
    r = subprocess.run([sys.executable, "-m", "mirage_desktop", "gui", "--input", str(photo), "--output", "null",
                        "--quit-after", "2.5"], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    # the window saved its settings on close
    assert (tmp_path / "c" / "settings.json").exists()
