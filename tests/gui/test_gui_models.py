"""Models: pass-through with the reason when a model is missing or broken; the models panel
shows present/missing/corrupt and licences, and downloads with progress and cancel."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest


def test_first_run_without_models_opens_passes_video_through_and_calls_to_download(qtbot, make_window, make_engine,
                                                                                     astronaut):
    win = make_window(engine=make_engine(overrides={}))
    assert win.engine.swapper is None
    qtbot.waitUntil(lambda: win.banner.level == "red", timeout=5000)
    assert "inswapper_128_fp16 is missing" in win.banner.text.text()
    assert win.banner.action.isVisibleTo(win) and win.banner.action.text() == "Download models"
    qtbot.waitUntil(lambda: bool(win.models.states), timeout=10000)
    assert "not here" in win.models.headline.text() and "inswapper_128_fp16" in win.models.headline.text()
    assert win.models.download_all.isEnabled()
    win.banner.action.click()
    assert win.tabs.currentWidget() is win.models
    # the video still flows, unchanged apart from the AI mark
    frames = []
    win.engine.subscribe_frames(lambda pkt: frames.append(pkt.frame))
    win.start()
    qtbot.waitUntil(lambda: len(frames) > 3 and win.preview.image is not None, timeout=10000)
    assert np.array_equal(frames[-1][:400], astronaut[:400])


def test_corrupt_swapper_shows_pass_through_and_the_reason(qtbot, make_window, make_engine, gui_models, tmp_path,
                                                           grace_hopper_path, astronaut):
    bad = tmp_path / "inswapper_128_fp16.onnx"
    bad.write_bytes(b"not an onnx model")
    eng = make_engine(overrides={"w600k_r50": gui_models["w600k_r50"], "inswapper_128_fp16": bad})
    win = make_window(engine=eng)
    win.picker.add_photos([str(grace_hopper_path)])
    qtbot.waitUntil(lambda: win.engine.identity is not None, timeout=15000)
    frames = []
    win.engine.subscribe_frames(lambda pkt: frames.append(pkt.frame))
    win.start()
    qtbot.waitUntil(lambda: len(frames) > 5, timeout=10000)
    qtbot.waitUntil(lambda: win.banner.level == "red" and "could not be parsed" in win.banner.text.text(),
                    timeout=5000)
    assert "pass-through" in win.banner.text.text().lower()
    assert win.banner.action.isVisibleTo(win)
    assert np.array_equal(frames[-1][:400], astronaut[:400])  # the face is not swapped
    assert "Swapper: none" in win.sb_models.text()


@pytest.fixture
def panel(qtbot):
    from mirage_desktop.gui.jobs import Jobs
    from mirage_desktop.gui.models_panel import ModelsPanel

    jobs = Jobs()
    p = ModelsPanel(jobs)
    qtbot.addWidget(p)
    yield p
    p.cancel()
    jobs.shutdown()


def _states(p):
    return {n: p.state_text(n) for n in p.row_names()}


def test_panel_shows_present_missing_corrupt_and_licences(qtbot, panel, tmp_path, monkeypatch):
    import hashlib

    good = b"verified weights"
    sha = hashlib.sha256(good).hexdigest()
    toml = tmp_path / "models.toml"
    toml.write_text(f"""
schema = 1
[licenses.nc]
name = "Research only"
url = "https://example.org/nc"
commercial_use = false
[licenses.mit]
name = "MIT"
url = "https://example.org/mit"
commercial_use = true
[models.det_10g]
filename = "det.onnx"
url = "http://127.0.0.1:9/det.onnx"
sha256 = "{sha}"
size = {len(good)}
license = "nc"
needed_by = ["detect"]
[models.w600k_r50]
filename = "arc.onnx"
url = "http://127.0.0.1:9/arc.onnx"
sha256 = "{sha}"
size = {len(good)}
license = "mit"
needed_by = ["recognize"]
[models.inswapper_128_fp16]
filename = "swap.onnx"
url = "http://127.0.0.1:9/swap.onnx"
sha256 = "{sha}"
size = {len(good)}
license = "nc"
needed_by = ["swap"]
""")
    monkeypatch.setenv("MIRAGE_MODELS_TOML", str(toml))
    mdir = tmp_path / "models"
    monkeypatch.setenv("MIRAGE_MODELS_DIR", str(mdir))
    mdir.mkdir()
    (mdir / "det.onnx").write_bytes(good)
    (mdir / "swap.onnx").write_bytes(b"x" * len(good))  # right size, wrong bytes
    panel.refresh()
    qtbot.waitUntil(lambda: panel.table.rowCount() == 3, timeout=5000)
    st = _states(panel)
    assert st == {"det_10g": "present", "w600k_r50": "missing", "inswapper_128_fp16": "corrupt"}
    names = panel.row_names()
    lic = {n: panel.table.item(r, panel.LICENCE).text() for r, n in enumerate(names)}
    assert "non-commercial" in lic["det_10g"] and lic["w600k_r50"] == "MIT"
    assert panel.table.item(names.index("det_10g"), panel.SIZE).text() == "0 MB"
    assert "sha256 mismatch" in panel._state_labels["inswapper_128_fp16"].toolTip()
    assert sorted(panel.missing_core()) == ["inswapper_128_fp16", "w600k_r50"]
    assert panel._buttons["inswapper_128_fp16"].text() == "Repair"
    assert panel._buttons["det_10g"].text() == "Re-download"
    assert panel.download_all.isEnabled()


def test_licences_are_shown_before_download_and_declining_downloads_nothing(qtbot, panel):
    from mirage_desktop.gui.models_panel import LicenceDialog

    panel.refresh()
    qtbot.waitUntil(lambda: panel.registry is not None, timeout=5000)
    shown, called = [], []
    panel.confirm_licences = lambda specs: shown.append([s.name for s in specs]) or False
    panel.downloader = lambda *a, **k: called.append(a)
    panel.download_missing()
    assert shown and "inswapper_128_fp16" in shown[0]
    assert called == [] and not panel.downloading
    assert "not accepted" in panel.progress_label.text()
    html = LicenceDialog.licence_html([panel.registry.get("codeformer"), panel.registry.get("det_10g")])
    assert "NON-COMMERCIAL" in html and "S-Lab" in html and "InsightFace" in html
    dlg = LicenceDialog([panel.registry.get("codeformer"), panel.registry.get("det_10g"),
                         panel.registry.get("w600k_r50")])
    qtbot.addWidget(dlg)
    # LICENSES.md is rendered, not shown as Markdown source: no "##", no backticks, a real list
    text = dlg.text.toPlainText()
    assert "S-Lab" in text and "##" not in text and "`" not in text and "<" + "https" not in text
    assert text.count("Licence: the insightface Python library") == 1  # a shared section once
    doc = dlg.text.document()
    blocks = [doc.findBlockByNumber(i) for i in range(doc.blockCount())]
    assert any(b.textList() is not None for b in blocks)  # "- Source: …" became a list
    assert any(b.blockFormat().headingLevel() for b in blocks)
    assert not dlg.ok.isEnabled()
    dlg.check.setChecked(True)
    assert dlg.ok.isEnabled()


def test_download_shows_progress_can_be_cancelled_and_never_blocks(qtbot, panel):
    from mirage_desktop.models.download import DownloadCancelled

    panel.refresh()
    qtbot.waitUntil(lambda: panel.registry is not None, timeout=5000)
    started = threading.Event()

    def slow_download(spec, *, progress, force, cancel_event, on_progress, on_warning):
        assert progress is False  # no tqdm bar from a GUI
        total = 10_000_000
        for i in range(1000):
            on_progress(i * 10_000, total)
            started.set()
            if cancel_event.wait(0.01):
                raise DownloadCancelled(f"download of {spec.name} cancelled")
        raise AssertionError("not cancelled")

    panel.confirm_licences = lambda specs: True
    panel.downloader = slow_download
    assert panel.download([panel.registry.get("inswapper_128_fp16")])
    qtbot.waitUntil(lambda: panel.progress.maximum() == 1000 and panel.progress.value() > 0, timeout=5000)
    assert panel.progress.isVisibleTo(panel) and panel.cancel_btn.isVisibleTo(panel)
    assert "inswapper_128_fp16" in panel.progress_label.text() and "MB" in panel.progress_label.text()
    v = panel.progress.value()
    qtbot.waitUntil(lambda: panel.progress.value() > v, timeout=5000)  # the Qt thread keeps running
    panel.cancel_btn.click()
    qtbot.waitUntil(lambda: not panel.downloading, timeout=5000)
    assert "cancelled" in panel.progress_label.text() and panel.last_error == "cancelled"
    assert not panel.progress.isVisibleTo(panel)


def test_finished_download_reloads_the_engine(qtbot, make_window, make_engine):
    win = make_window(engine=make_engine(overrides={}))
    qtbot.waitUntil(lambda: win.models.registry is not None, timeout=5000)
    win.models.confirm_licences = lambda specs: True
    win.models.downloader = lambda spec, **kw: kw["on_progress"](10, 10)
    loads = []
    win.controller.models_loaded.connect(loads.append)
    with qtbot.waitSignal(win.models.models_changed, timeout=10000):
        win.models.download_missing()
    qtbot.waitUntil(lambda: len(loads) >= 1, timeout=10000)
    # the finished download leaves no "Downloading …" line behind
    assert win.models.progress_label.text() == "" and not win.models.progress_label.isVisibleTo(win)
    assert not win.models.progress.isVisibleTo(win)


def test_failed_download_replaces_the_progress_line_with_the_reason(qtbot, panel):
    panel.refresh()
    qtbot.waitUntil(lambda: panel.registry is not None, timeout=5000)

    def broken(spec, **kw):
        kw["on_progress"](5_000_000, 10_000_000)
        raise OSError("connection reset by peer")

    panel.confirm_licences = lambda specs: True
    panel.downloader = broken
    assert panel.download([panel.registry.get("det_10g")])
    qtbot.waitUntil(lambda: not panel.downloading, timeout=5000)
    assert panel.progress_label.text() == "Download of det_10g failed: connection reset by peer"
    assert not panel.progress.isVisibleTo(panel) and not panel.cancel_btn.isVisibleTo(panel)


def test_models_tab_fits_the_default_window(qtbot, make_window):
    """At the default size every column (licence and size too) is in view, rows are a few lines
    high, and no button's text is cut off."""
    win = make_window()
    win.show_models()
    panel = win.models
    qtbot.waitUntil(lambda: panel.table.rowCount() > 0 and bool(panel._buttons), timeout=10000)
    t = panel.table
    t.resizeRowsToContents()
    total = sum(t.columnWidth(c) for c in range(t.columnCount()))
    assert total <= t.viewport().width(), (total, t.viewport().width())
    assert t.columnWidth(panel.LICENCE) > 0 and t.columnWidth(panel.SIZE) > 0
    line = t.fontMetrics().height()
    assert all(t.rowHeight(r) <= 4 * line for r in range(t.rowCount())), [t.rowHeight(r) for r in range(t.rowCount())]
    buttons = [panel.download_all, panel.refresh_btn, *panel._buttons.values()]
    for b in buttons:
        assert b.width() >= b.fontMetrics().horizontalAdvance(b.text()) + 12, (b.text(), b.width())
    # every row's text fits its cell (no "…" elision)
    for r in range(t.rowCount()):
        for c in (panel.MODEL, panel.SIZE, panel.LICENCE):
            it = t.item(r, c)
            fm = t.fontMetrics()
            words = re.split(r"[\s-]+", it.text())  # wrapping at spaces and hyphens is fine
            widest = max(fm.horizontalAdvance(w) for w in words)
            assert widest <= t.columnWidth(c), (it.text(), t.columnWidth(c))
