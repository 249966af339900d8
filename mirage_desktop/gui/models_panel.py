"""Models panel: present / missing / corrupt, licences, downloads with progress and cancel.

Status checks (which hash a file the first time) and downloads run off the Qt thread; a
download can be cancelled (its ``.part`` file is kept, so the next download resumes).
Before anything is downloaded, the licence of each model is shown and non-commercial
licences are flagged; nothing is fetched unless the person accepts.
"""

from __future__ import annotations

import html
import logging
import re
import threading
import time
from pathlib import Path
from typing import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QSizePolicy,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)


from . import theme
from .qtcompat import emit

log = logging.getLogger(__name__)

STATE_COLORS = {"present": theme.GREEN, "missing": theme.YELLOW, "corrupt": theme.RED,
                "unverified": theme.YELLOW, "checking…": theme.MUTED}
CORE_FEATURES = {"detect", "recognize", "swap"}
PURPOSE = {"detect": "face detection", "recognize": "face identity", "swap": "face swap",
           "swap_fp32": "face swap (fp32)", "enhance": "face enhancer", "enhance_codeformer": "face enhancer",
           "enhance_gfpgan": "face enhancer (GFPGAN)", "parse": "occlusion-aware mask",
           "parse_resnet_34": "occlusion-aware mask (ResNet-34)"}


def licence_notes() -> str:
    """LICENSES.md from the source tree, if it is there (it is not installed with the wheel)."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "LICENSES.md", here.parents[1] / "LICENSES.md"):
        try:
            return cand.read_text(encoding="utf-8")
        except OSError:
            continue
    return ""


def licence_section(text: str, model: str) -> str:
    """The ``## ...`` section of LICENSES.md that names ``model`` in backticks."""
    for sec in re.split(r"(?m)^## ", text)[1:]:
        head = sec.splitlines()[0] if sec else ""
        if f"`{model}`" in head:
            return "## " + sec.strip()
    return ""


def purpose_text(needed_by) -> str:
    """What a model is for, in words ("face identity, face swap")."""
    words = dict.fromkeys(PURPOSE.get(f, f) for f in needed_by)
    if "face swap" in words:
        words.pop("face swap (fp32)", None)
    return ", ".join(words) or "—"


def licence_short(spec) -> str:
    """A few words for the table (the full licence is in the tooltip and the licence dialog)."""
    if "unclear" in spec.license.lower():
        return "commercial use unclear ⚠"
    if not spec.commercial_use:
        return "non-commercial ⚠"
    return spec.license if len(spec.license) <= 24 else "commercial use allowed"


def markdown_html(md: str) -> str:
    """Markdown rendered by Qt (headings, lists, bold, code, links), as an HTML fragment."""
    from PySide6.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setMarkdown(md)
    out = doc.toHtml()
    m = re.search(r"<body[^>]*>(.*)</body>", out, re.S)
    body = m.group(1) if m else out
    return re.sub(r"color:#0000ff", f"color:{theme.ACCENT}", body)  # Qt's link blue is unreadable on the dark theme


class LicenceDialog(QDialog):
    """Each model's licence, non-commercial ones flagged; OK only after ticking the box."""

    def __init__(self, specs: list, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Model licences")
        self.resize(640, 520)
        lay = QVBoxLayout(self)
        self.text = QTextBrowser()
        self.text.setOpenExternalLinks(True)
        self.text.document().setDefaultStyleSheet(f"a {{ color: {theme.ACCENT}; }}")
        self.text.setHtml(self.licence_html(specs))
        lay.addWidget(self.text, 1)
        self.check = QCheckBox("I have read these licences and accept them for the models I download")
        lay.addWidget(self.check)
        box = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.ok = box.button(QDialogButtonBox.Ok)
        self.ok.setText("Download")
        self.ok.setEnabled(False)
        self.check.toggled.connect(self.ok.setEnabled)
        box.accepted.connect(self.accept)
        box.rejected.connect(self.reject)
        lay.addWidget(box)

    @staticmethod
    def licence_html(specs: list) -> str:
        """Each model with its flag, then the LICENSES.md sections that name them, rendered from
        their Markdown (each section once, under the first model it names)."""
        notes = licence_notes()
        parts, shown = [], set()
        for s in specs:
            flag = ("<span style='color:%s; font-weight:700'>NON-COMMERCIAL</span>" % theme.RED
                    if not s.commercial_use else
                    "<span style='color:%s; font-weight:700'>commercial use allowed</span>" % theme.GREEN)
            size = f" — {s.size / 1e6:.0f} MB" if s.size else ""
            parts.append(f"<h3>{html.escape(s.name)} <small>({html.escape(s.filename)}{size})</small></h3>"
                         f"<p>{flag}<br>{html.escape(s.license)}<br>"
                         f"<a href='{html.escape(s.license_url)}'>{html.escape(s.license_url)}</a></p>")
            sec = licence_section(notes, s.name)
            if sec and sec not in shown:
                shown.add(sec)
                parts.append(markdown_html("##" + sec))  # "## …" → "#### …": below the model's own heading
        return "".join(parts)

    @classmethod
    def ask(cls, specs: list, parent: QWidget | None = None) -> bool:
        dlg = cls(specs, parent)
        return dlg.exec() == QDialog.Accepted and dlg.check.isChecked()


class ModelsPanel(QWidget):
    models_changed = Signal()  # a download finished: the engine should reload
    _progress = Signal(str, object, object)  # from the download thread: name, done, total

    #: the table's columns; each row's action button sits under its state, so the four columns
    #: fit the side panel at the default window size (no sideways scrolling)
    COLS = ("Model", "State", "Size", "Licence")
    MODEL, STATE, SIZE, LICENCE = range(4)

    def __init__(self, jobs, parent: QWidget | None = None):
        super().__init__(parent)
        self.jobs = jobs
        self.registry = None
        self.states: dict[str, object] = {}  # name -> ModelStatus
        self.confirm_licences: Callable[[list], bool] = lambda specs: LicenceDialog.ask(specs, self)
        self.downloader = None  # for tests: replaces models.download.download
        self._cancel = threading.Event()
        self._queue: list = []
        self._current: str | None = None
        self._buttons: dict[str, QPushButton] = {}
        self._state_labels: dict[str, QLabel] = {}
        self.last_error = ""
        self._last_progress = 0.0

        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 10, 10, 10)
        lay.setSpacing(8)
        self.headline = QLabel("Checking models…")
        self.headline.setWordWrap(True)
        lay.addWidget(self.headline)
        self.table = QTableWidget(0, len(self.COLS))
        self.table.setHorizontalHeaderLabels(self.COLS)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.NoSelection)
        self.table.setFocusPolicy(Qt.NoFocus)
        self.table.setShowGrid(False)
        self.table.setWordWrap(True)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        hh = self.table.horizontalHeader()
        hh.setDefaultAlignment(Qt.AlignLeft | Qt.AlignVCenter)
        hh.setSectionResizeMode(self.MODEL, QHeaderView.Stretch)
        hh.setSectionResizeMode(self.STATE, QHeaderView.ResizeToContents)
        hh.setSectionResizeMode(self.SIZE, QHeaderView.ResizeToContents)
        hh.setSectionResizeMode(self.LICENCE, QHeaderView.Fixed)
        self.table.setColumnWidth(self.LICENCE, self.fontMetrics().horizontalAdvance("commercial ⚠") + 10)
        lay.addWidget(self.table, 1)
        row = QHBoxLayout()
        self.download_all = QPushButton("Download missing")
        self.download_all.setObjectName("Primary")
        self.download_all.setToolTip("Download the models face swap needs that are not here yet")
        self.download_all.clicked.connect(self.download_missing)
        row.addWidget(self.download_all)
        self.refresh_btn = QPushButton("Re-check")
        self.refresh_btn.setToolTip("Check every model file again (SHA-256)")
        self.refresh_btn.clicked.connect(lambda: self.refresh(verify=True))
        row.addWidget(self.refresh_btn)
        row.addStretch(1)
        for b in (self.download_all, self.refresh_btn):  # never squeezed below their text
            b.setSizePolicy(QSizePolicy.Minimum, QSizePolicy.Fixed)
        lay.addLayout(row)
        self.progress_label = QLabel()
        self.progress_label.setObjectName("Muted")
        self.progress_label.setWordWrap(True)
        self.progress = QProgressBar()
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(self.cancel)
        prow = QHBoxLayout()
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.cancel_btn)
        lay.addWidget(self.progress_label)
        lay.addLayout(prow)
        self._show_progress(False)
        self.progress_label.hide()
        self._progress.connect(self._on_progress)

    # ---- status --------------------------------------------------------------------------
    def refresh(self, verify: bool = False) -> None:
        def job():
            from ..models.registry import load_registry, status

            reg = load_registry()
            return reg, {s.name: status(s, refresh=verify) for s in reg.specs()}

        def done(res):
            self.registry, self.states = res
            self._fill()

        def failed(exc):
            self.headline.setText(f"The model list cannot be read: {exc}")

        self.jobs.submit(job, on_done=done, on_error=failed)

    def missing_core(self) -> list[str]:
        """Models the swap needs (detector, recognizer, fp16 swapper) that are not usable."""
        return [n for n, st in self.states.items()
                if st.state != "present" and CORE_FEATURES.intersection(self.registry.get(n).needed_by)]

    def state_text(self, name: str) -> str:
        """The state shown in ``name``'s row ("present", "missing", ...)."""
        lab = self._state_labels.get(name)
        return lab.text() if lab is not None else ""

    def row_names(self) -> list[str]:
        return [self.table.item(r, self.MODEL).data(Qt.UserRole) for r in range(self.table.rowCount())]

    def _fill(self) -> None:
        specs = self.registry.specs() if self.registry else []
        self.table.setRowCount(len(specs))
        self._buttons.clear()
        self._state_labels.clear()
        for r, spec in enumerate(specs):
            st = self.states.get(spec.name)
            state = st.state if st else "checking…"
            purpose = purpose_text(spec.needed_by)
            model = QTableWidgetItem(f"{spec.name}\n{purpose}")
            model.setData(Qt.UserRole, spec.name)
            model.setToolTip(f"{spec.name} ({spec.filename}): needed for {purpose}")
            self.table.setItem(r, self.MODEL, model)
            size = QTableWidgetItem(f"{spec.size / 1e6:.0f} MB" if spec.size else "?")
            size.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            self.table.setItem(r, self.SIZE, size)
            lic = QTableWidgetItem(licence_short(spec))
            lic.setToolTip(f"{spec.license}\n{spec.license_url}")
            if not spec.commercial_use:
                lic.setData(Qt.ForegroundRole, _qcolor(theme.YELLOW))
            self.table.setItem(r, self.LICENCE, lic)
            self.table.setItem(r, self.STATE, QTableWidgetItem(""))  # under the widget: keeps the row's height
            cell = QWidget()
            cl = QVBoxLayout(cell)
            cl.setContentsMargins(2, 3, 2, 3)
            cl.setSpacing(3)
            label = QLabel(state)
            label.setStyleSheet(f"color: {STATE_COLORS.get(state, theme.MUTED)}; font-weight: 600;"
                                " background: transparent;")
            if st is not None and st.detail:
                label.setToolTip(st.detail)
            cl.addWidget(label)
            btn = QPushButton({"present": "Re-download", "corrupt": "Repair"}.get(state, "Download"))
            btn.setObjectName("Small")
            btn.clicked.connect(lambda _=False, s=spec: self.download([s]))
            btn.setEnabled(self._current is None)
            cl.addWidget(btn)
            cell.setStyleSheet("background: transparent;")
            self._buttons[spec.name] = btn
            self._state_labels[spec.name] = label
            self.table.setCellWidget(r, self.STATE, cell)
        self.table.resizeRowsToContents()
        missing = self.missing_core()
        if missing:
            self.headline.setText(
                f"<b style='color:{theme.YELLOW}'>Face swap needs {len(missing)} model(s) that are not here: "
                f"{', '.join(missing)}.</b> Video passes through unchanged until you download them.")
        else:
            self.headline.setText(f"<span style='color:{theme.GREEN}'>The face-swap models are installed "
                                  "and verified.</span>")
        self.download_all.setEnabled(bool(missing) and self._current is None)

    def resizeEvent(self, event) -> None:  # noqa: N802 - wrapped text needs new row heights
        super().resizeEvent(event)
        self.table.resizeRowsToContents()

    # ---- downloads -----------------------------------------------------------------------
    def download_missing(self) -> None:
        names = self.missing_core()
        if self.registry is None or not names:
            return
        self.download([self.registry.get(n) for n in names])

    def download(self, specs: list) -> bool:
        """Show the licences, then download ``specs`` one after the other. False if declined."""
        if self._current is not None or not specs:
            return False
        if not self.confirm_licences(list(specs)):
            self.progress_label.setText("Download cancelled: the licences were not accepted.")
            self.progress_label.show()
            return False
        self._queue = list(specs)
        self._cancel.clear()
        self.last_error = ""
        self._next()
        return True

    def _next(self) -> None:
        if not self._queue:
            self._current = None
            self._show_progress(False)
            self.progress_label.clear()  # done: no stale "Downloading …" line
            self.progress_label.hide()
            self.refresh()
            emit(self.models_changed)
            return
        spec = self._queue.pop(0)
        self._current = spec.name
        for b in self._buttons.values():
            b.setEnabled(False)
        self.download_all.setEnabled(False)
        self.progress.setRange(0, 0)
        self.progress_label.setText(f"Downloading {spec.name}…")
        self._show_progress(True)
        force = getattr(self.states.get(spec.name), "state", "missing") in ("corrupt", "present")

        def job():
            from ..models import download as dl

            fn = self.downloader or dl.download
            return fn(spec, progress=False, force=force, cancel_event=self._cancel,
                      on_progress=lambda d, t: self._emit_progress(spec.name, d, t),
                      on_warning=lambda m: log.warning("%s", m))

        def done(_path):
            self._next()

        def failed(exc):
            from ..models.download import DownloadCancelled

            self._queue.clear()
            self._current = None
            self._show_progress(False)
            cancelled = isinstance(exc, DownloadCancelled) or self._cancel.is_set()
            self.last_error = "cancelled" if cancelled else str(exc)
            self.progress_label.setText(
                f"Download of {spec.name} cancelled; it resumes next time." if cancelled
                else f"Download of {spec.name} failed: {exc}")
            self.progress_label.show()
            self.refresh()

        self.jobs.thread(job, on_done=done, on_error=failed)

    def _emit_progress(self, name: str, done: int, total) -> None:
        now = time.monotonic()
        if total is None or done < total:
            if now - self._last_progress < 0.1:
                return
        self._last_progress = now
        try:
            emit(self._progress, name, int(done), int(total) if total else None)
        except RuntimeError:
            pass

    def _on_progress(self, name: str, done, total) -> None:
        if name != self._current:  # a late report from a download that has ended
            return
        if total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * min(done, total) / total))
            self.progress_label.setText(f"Downloading {name}: {done / 1e6:.1f} of {total / 1e6:.1f} MB")
        else:
            self.progress.setRange(0, 0)
            self.progress_label.setText(f"Downloading {name}: {done / 1e6:.1f} MB")

    def cancel(self) -> None:
        self._cancel.set()
        self._queue.clear()

    @property
    def downloading(self) -> bool:
        return self._current is not None

    def _show_progress(self, on: bool) -> None:
        self.progress.setVisible(on)
        self.cancel_btn.setVisible(on)
        if on:
            self.progress_label.show()


def _qcolor(c: str):
    from PySide6.QtGui import QColor

    return QColor(c)
