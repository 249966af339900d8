"""SIGTERM, SIGHUP and Ctrl-C close the real window as its close button does: the camera and the
engine stop, the settings are written, the exit is clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from tests_support import as_foreground

DEADLINE_S = 120  # a hang guard only


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_closes_the_window_cleanly(tmp_path, astronaut, sig):
    img = tmp_path / "me.png"
    cv2.imwrite(str(img), astronaut)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "MIRAGE_MAX_FACES": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "mirage_desktop", "-v", "gui", "--input", str(img),
                             "--output", "null"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, cwd=Path(__file__).parents[2], preexec_fn=as_foreground)
    lines = []
    end = time.monotonic() + DEADLINE_S
    for line in proc.stderr:  # the window says when it is up (-v)
        lines.append(line)
        if "window open" in line or time.monotonic() > end:
            break
    assert any("window open" in ln for ln in lines), "".join(lines)
    proc.send_signal(getattr(signal, sig))
    _, rest = proc.communicate(timeout=DEADLINE_S)
    err = "".join(lines) + rest
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    saved = Path(os.environ["MIRAGE_CONFIG_DIR"]) / "settings.json"
    assert saved.is_file()  # closing wrote the settings, as the close button does
    data = json.loads(saved.read_text())
    assert "max_faces" not in data or data["max_faces"] != 3  # a one-off MIRAGE_* override is not kept
