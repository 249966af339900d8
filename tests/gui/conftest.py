"""Fixtures for the desktop window tests (pytest-qt, offscreen)."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture
def gui_models(model_factory):
    """Synthetic ArcFace + inswapper with the real signatures; no det_10g, so the engine uses
    its real OpenCV fallback detector (which finds the astronaut's face and none in coffee)."""
    m = model_factory(None)
    return {"w600k_r50": m["w600k_r50"], "inswapper_128_fp16": m["inswapper_128_fp16"]}


@pytest.fixture
def make_engine(gui_models):
    from mirage_desktop import config
    from mirage_desktop.engine import Engine

    def make(overrides=None, settings=None):
        s = settings or config.load().settings
        return Engine(s, model_overrides=gui_models if overrides is None else overrides)

    return make


@pytest.fixture
def make_window(qtbot, make_engine, astronaut):
    """A themed MainWindow over an engine, with a still photo as the camera and no real sinks."""
    from mirage_desktop import config
    from mirage_desktop.gui.cli import create_app
    from mirage_desktop.gui.window import MainWindow
    from mirage_desktop.vision.capture import ImageSource

    create_app()
    windows = []

    def make(engine=None, image=None, consent=True, notices=None):
        loaded = config.load()
        eng = engine or make_engine(settings=loaded.settings)
        src = ImageSource(astronaut if image is None else image, fps=30, realtime=True)
        win = MainWindow(eng, eng.settings, (notices or []) + loaded.notices, source=src, outputs=["null"],
                         list_cameras=False)
        win.picker.ask_consent = (lambda name, thumb: consent) if not callable(consent) else consent
        qtbot.addWidget(win)
        win.show()
        qtbot.waitUntil(win.controller.models_ready.is_set, timeout=15000)
        windows.append(win)
        return win

    yield make
    for w in windows:
        w.close()


