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


def test_screenshot_with_real_models_never_touches_the_users_profile(qtbot, tmp_path, astronaut, gui_models):
    """`mirage gui --screenshot --model ...` adds the demo face with consent: it must land in a
    throw-away profile, not in the user's gallery and settings (or the next launch uses it)."""
    import argparse
    import json

    from mirage_desktop import config
    from mirage_desktop.commands import gui as gui_cli

    user = {k: os.environ[k] for k in ("MIRAGE_CONFIG_DIR", "MIRAGE_DATA_DIR", "MIRAGE_CACHE_DIR")}
    assert "MIRAGE_MODELS_DIR" in os.environ
    config.save(config.Settings(source_identity=""))
    settings_file = config.config_dir() / "settings.json"
    before = settings_file.read_text()
    photo = tmp_path / "cam.png"
    cv2.imwrite(str(photo), astronaut)
    p = argparse.ArgumentParser()
    gui_cli.add_arguments(p)
    args = p.parse_args(["--screenshot", str(tmp_path / "shot.png"), "--input", str(photo),
                         "--model", f"w600k_r50={gui_models['w600k_r50']}",
                         "--model", f"inswapper_128_fp16={gui_models['inswapper_128_fp16']}"])
    assert gui_cli.run(args) == 0
    assert cv2.imread(str(tmp_path / "shot.png")) is not None
    assert settings_file.read_text() == before
    assert json.loads(before)["source_identity"] == ""
    assert not (config.data_dir() / "identities").exists()
    assert not config.cache_dir().exists() or not any(config.cache_dir().iterdir())
    assert {k: os.environ.get(k) for k in user} == user  # the environment is put back


def test_isolated_profile_keeps_the_users_models_folder(monkeypatch, tmp_path):
    from mirage_desktop import config
    from mirage_desktop.gui.screenshot import isolated_profile

    monkeypatch.delenv("MIRAGE_MODELS_DIR")  # the default: a folder inside the data folder
    real_models, real_data = config.models_dir(), config.data_dir()
    with isolated_profile(keep_models=True) as folder:
        assert config.models_dir() == real_models
        assert config.data_dir() != real_data and folder in config.data_dir().parents
        assert folder in config.config_dir().parents and folder in config.cache_dir().parents
    assert "MIRAGE_MODELS_DIR" not in os.environ and config.data_dir() == real_data
    with isolated_profile(keep_models=False) as folder:
        assert folder in config.models_dir().parents
    assert not folder.exists()


def test_no_display_is_one_clear_line(monkeypatch, capsys):
    from mirage_desktop.cli import main

    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mirage: error: no display") and "mirage run" in err and "\n" not in err
