"""Source-face picker: add photos (drag-and-drop or a file dialog), see the quality checks,
confirm consent once per identity, and pick from the gallery of saved identities.

Photos are checked and the identity is built off the Qt thread (a busy bar shows meanwhile).
An identity is saved — and given to the engine — only after the person confirmed that they
have the right to use that face; the confirmation is stored with the identity.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPainterPath, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)


from . import theme
from .qtcompat import emit

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
CONSENT_TEXT = "I confirm I have the right to use this person's face"


def bgr_to_qimage(img: np.ndarray) -> QImage:
    img = np.ascontiguousarray(img)
    return QImage(img.data, img.shape[1], img.shape[0], img.strides[0], QImage.Format_BGR888).copy()


def rounded_pixmap(img: QImage | None, size: int) -> QPixmap:
    pm = QPixmap(size, size)
    pm.fill(Qt.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.Antialiasing, True)
    path = QPainterPath()
    path.addRoundedRect(0, 0, size, size, size * 0.14, size * 0.14)
    p.setClipPath(path)
    if img is not None and not img.isNull():
        p.drawImage(pm.rect(), img.scaled(size, size, Qt.KeepAspectRatioByExpanding, Qt.SmoothTransformation))
    else:
        p.fillPath(path, QColor(theme.PANEL_2))
    p.end()
    return pm


def checks_html(reports: list[dict]) -> str:
    """Quality checks as pass/fail lines: ``[{"source", "checks": [{"name","passed","reason"}]}]``."""
    rows = []
    for rep in reports:
        src = Path(str(rep.get("source", "photo"))).name
        rows.append(f"<div style='color:{theme.MUTED}; margin-top:4px'>{html.escape(src)}</div>")
        for c in rep.get("checks", []):
            ok = bool(c.get("passed"))
            mark = "✓" if ok else "✗"
            color = theme.GREEN if ok else theme.RED
            rows.append(f"<div><span style='color:{color}; font-weight:700'>{mark}</span> "
                        f"<b>{html.escape(str(c.get('name', '')))}</b> — {html.escape(str(c.get('reason', '')))}</div>")
    return "".join(rows)


def report_dicts(reports) -> list[dict]:
    return [{"source": r.source, "passed": r.passed,
             "checks": [{"name": c.name, "passed": c.passed, "reason": c.reason} for c in r.checks]}
            for r in reports]


class ConsentDialog(QDialog):
    """Explicit, per identity: OK stays disabled until the box is ticked."""

    def __init__(self, name: str, thumb: QImage | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Confirm you may use this face")
        self.setModal(True)
        lay = QVBoxLayout(self)
        lay.setSpacing(12)
        row = QHBoxLayout()
        pic = QLabel()
        pic.setPixmap(rounded_pixmap(thumb, 96))
        row.addWidget(pic, 0, Qt.AlignTop)
        text = QLabel(
            f"<b>{html.escape(name)}</b><br><br>Mirage will make you look like this person in live video. "
            "Only use a face you have the right to use — your own, or one whose owner agreed. "
            "Do not use it to deceive or impersonate. The output carries an “AI” mark unless you turn it off.")
        text.setWordWrap(True)
        text.setMinimumWidth(340)
        row.addWidget(text, 1)
        lay.addLayout(row)
        self.check = QCheckBox(CONSENT_TEXT)
        lay.addWidget(self.check)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.ok = self.buttons.button(QDialogButtonBox.Ok)
        self.ok.setText("Use this face")
        self.ok.setEnabled(False)
        self.check.toggled.connect(self.ok.setEnabled)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)

    def accept(self) -> None:
        if self.check.isChecked():  # never accepted without the box ticked
            super().accept()

    @property
    def confirmed(self) -> bool:
        return self.result() == QDialog.Accepted and self.check.isChecked()

    @classmethod
    def ask(cls, name: str, thumb: QImage | None, parent: QWidget | None = None) -> bool:
        dlg = cls(name, thumb, parent)
        dlg.exec()
        return dlg.confirmed


class DropZone(QLabel):
    files_dropped = Signal(list)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("DropZone")
        self.setAlignment(Qt.AlignCenter)
        self.setWordWrap(True)
        self.setText("<b>Drop face photos here</b><br>one clear, frontal, well-lit face per photo")
        self.setAcceptDrops(True)
        self.setMinimumHeight(74)

    @staticmethod
    def _paths(event) -> list[str]:
        md = event.mimeData()
        if not md.hasUrls():
            return []
        return [u.toLocalFile() for u in md.urls()
                if u.isLocalFile() and Path(u.toLocalFile()).suffix.lower() in IMAGE_EXTS]

    def _hover(self, on: bool) -> None:
        self.setProperty("hover", "true" if on else "false")
        self.style().unpolish(self)
        self.style().polish(self)

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if self._paths(event):
            event.acceptProposedAction()
            self._hover(True)
        else:
            event.ignore()

    def dragLeaveEvent(self, event) -> None:  # noqa: N802
        self._hover(False)

    def dropEvent(self, event) -> None:  # noqa: N802
        self._hover(False)
        paths = self._paths(event)
        if paths:
            event.acceptProposedAction()
            emit(self.files_dropped, paths)


class SourcePicker(QWidget):
    """Emits nothing the window must wire: it talks to the controller itself."""

    active_changed = Signal(str)
    busy_changed = Signal(bool)

    def __init__(self, controller, parent: QWidget | None = None):
        super().__init__(parent)
        from ..vision.identity import IdentityStore

        self.controller = controller
        self.store = IdentityStore()
        self.ask_consent: Callable[[str, QImage | None], bool] = lambda n, t: ConsentDialog.ask(n, t, self)
        self.active = ""
        self.last_message = ""
        self._items: dict[str, QListWidgetItem] = {}
        self._meta: dict[str, dict] = {}
        self._busy = 0
        self._choice = 0  # bumped by every click on a face and every added face: the newest wins

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)
        title = QLabel("Source face")
        title.setObjectName("Title")
        lay.addWidget(title)
        self.drop = DropZone()
        self.drop.files_dropped.connect(self.add_photos)
        lay.addWidget(self.drop)
        row = QHBoxLayout()
        self.add_btn = QPushButton("Add photos…")
        self.add_btn.clicked.connect(self._browse)
        row.addWidget(self.add_btn)
        self.delete_btn = QPushButton("Remove")
        self.delete_btn.setToolTip("Delete the selected saved identity")
        self.delete_btn.clicked.connect(self._delete_selected)
        row.addWidget(self.delete_btn)
        lay.addLayout(row)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setTextVisible(False)
        self.busy.hide()
        lay.addWidget(self.busy)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.message.hide()
        lay.addWidget(self.message)

        self.gallery = QListWidget()
        self.gallery.setViewMode(QListWidget.IconMode)
        self.gallery.setIconSize(QSize(84, 84))
        self.gallery.setGridSize(QSize(104, 118))
        self.gallery.setResizeMode(QListWidget.Adjust)
        self.gallery.setMovement(QListWidget.Static)
        self.gallery.setWordWrap(True)
        self.gallery.setTextElideMode(Qt.ElideNone)
        self.gallery.setSpacing(2)
        self.gallery.setMinimumHeight(130)
        self.gallery.itemClicked.connect(lambda it: self.activate(it.data(Qt.UserRole)))
        self.gallery.currentItemChanged.connect(self._show_selected)
        lay.addWidget(self.gallery, 2)

        self.active_label = QLabel("No face chosen")
        self.active_label.setObjectName("Muted")
        lay.addWidget(self.active_label)
        checks_title = QLabel("Quality checks")
        checks_title.setObjectName("Muted")
        lay.addWidget(checks_title)
        self.checks = QLabel("Add a photo to see its checks.")
        self.checks.setWordWrap(True)
        self.checks.setTextFormat(Qt.RichText)
        self.checks.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        self.checks.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.checks.setMinimumHeight(60)
        lay.addWidget(self.checks, 1)

    # ---- busy / messages ---------------------------------------------------------------
    def _set_busy(self, delta: int) -> None:
        self._busy = max(0, self._busy + delta)
        self.busy.setVisible(self._busy > 0)
        self.add_btn.setEnabled(self._busy == 0)
        emit(self.busy_changed, self._busy > 0)

    @property
    def is_busy(self) -> bool:
        return self._busy > 0

    def _say(self, text: str, level: str = "info") -> None:
        self.last_message = text
        color = {"error": theme.RED, "ok": theme.GREEN}.get(level, theme.MUTED)
        self.message.setStyleSheet(f"color: {color};")
        self.message.setText(text)
        self.message.setVisible(bool(text))

    # ---- gallery -------------------------------------------------------------------------
    def refresh(self, select: str | None = None) -> None:
        """Reload the saved identities off the Qt thread."""
        store = self.store

        def job():
            out = []
            for name in store.names():
                try:  # the embedding is checked (and rebuilt if need be) when the face is chosen
                    ident = store.load(name, require_embedding=False)
                except Exception as exc:  # a broken folder must not hide the others
                    log.warning("cannot load identity %s: %s", name, exc)
                    continue
                out.append((ident.name, ident.consent, ident.thumbnail, getattr(ident, "meta", {})))
            return out

        self._set_busy(+1)

        def done(rows):
            self._set_busy(-1)
            self._fill(rows, select)

        def failed(exc):
            self._set_busy(-1)
            self._say(f"Saved faces could not be read: {exc}", "error")

        self.controller.jobs.submit(job, on_done=done, on_error=failed)

    def _fill(self, rows, select: str | None) -> None:
        self.gallery.blockSignals(True)
        self.gallery.clear()
        self._items.clear()
        self._meta.clear()
        for name, consent, thumb, meta in rows:
            img = bgr_to_qimage(thumb) if thumb is not None else None
            item = QListWidgetItem(QIcon(rounded_pixmap(img, 84)), name if consent else f"{name}\n(needs consent)")
            item.setData(Qt.UserRole, name)
            item.setData(Qt.UserRole + 1, bool(consent))
            item.setToolTip(name + ("" if consent else " — consent not yet confirmed; click to confirm"))
            item.setSizeHint(QSize(100, 114))
            self.gallery.addItem(item)
            self._items[name] = item
            self._meta[name] = meta
        self.gallery.blockSignals(False)
        want = select or self.active
        if want in self._items:
            self.gallery.setCurrentItem(self._items[want])
            self._show_selected(self._items[want])

    def names(self) -> list[str]:
        return list(self._items)

    def _show_selected(self, item, _prev=None) -> None:
        if item is None:
            return
        meta = self._meta.get(item.data(Qt.UserRole), {})
        photos = meta.get("photos", [])
        self.checks.setText(checks_html(photos) if photos else "No check results saved for this face.")

    # ---- adding photos ------------------------------------------------------------------
    def _browse(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Choose photos of one face", str(Path.home()),
            "Images (" + " ".join(f"*{e}" for e in sorted(IMAGE_EXTS)) + ")")
        if paths:
            self.add_photos(paths)

    def add_photos(self, paths: list, name: str | None = None) -> None:
        """Check the photos and, if one passes, build, confirm and save the identity."""
        if not paths:
            return
        self._say("Checking the photo…" if len(paths) == 1 else f"Checking {len(paths)} photos…")
        self._set_busy(+1)

        def failed(exc):
            self._set_busy(-1)
            self._say(f"The photo could not be checked: {exc}", "error")

        self.controller.analyse_photos(paths, name, on_done=self._analysed, on_error=failed)

    def _analysed(self, result) -> None:
        self._set_busy(-1)
        reports, ident, why = result
        self.checks.setText(checks_html(report_dicts(reports)))
        if ident is None:
            self._say(f"Not added — {why}", "error")
            return
        ident.name = self._unique(ident.name)
        thumb = bgr_to_qimage(ident.thumbnail) if ident.thumbnail is not None else None
        if not self.ask_consent(ident.name, thumb):
            self._say(f"“{ident.name}” was not saved: the right to use this face was not confirmed.", "error")
            return
        ident.consent = True
        self._set_busy(+1)
        choice = self._next_choice()

        def saved(_path):
            self._set_busy(-1)
            self._say(f"Added “{ident.name}”.", "ok")
            self.refresh(select=ident.name)
            if choice == self._choice:  # not if another face was clicked meanwhile
                self._use(ident)

        def failed(exc):
            self._set_busy(-1)
            self._say(f"“{ident.name}” could not be saved: {exc}", "error")

        self.controller.jobs.submit(self.store.save, ident, on_done=saved, on_error=failed)

    def _unique(self, name: str) -> str:
        """``name``, or ``name 2``, ``name 3``... if the store already holds an identity by that
        name (the store, not the gallery, decides what saving would replace)."""
        taken = set(self.store.names())
        if name not in taken:
            return name
        i = 2
        while f"{name} {i}" in taken:
            i += 1
        return f"{name} {i}"

    # ---- choosing ---------------------------------------------------------------------------
    def _next_choice(self) -> int:
        self._choice += 1
        return self._choice

    def activate(self, name: str, ask: bool = True) -> None:
        """Use a saved identity; asks for consent first if it was never confirmed. Loads run on
        a pool and may finish in any order: only the last face chosen is used."""
        if not name:
            return
        self._set_busy(+1)
        choice = self._next_choice()

        def loaded(ident):
            self._set_busy(-1)
            if choice != self._choice:  # another face was chosen after this one
                return
            if not ident.consent:
                if not ask:
                    self._say(f"“{name}” is not used until you confirm you may use this face.", "error")
                    return
                thumb = bgr_to_qimage(ident.thumbnail) if ident.thumbnail is not None else None
                if not self.ask_consent(ident.name, thumb):
                    self._say(f"“{name}” is not used: the right to use this face was not confirmed.", "error")
                    return
                ident.consent = True
                self.controller.jobs.submit(self.store.set_consent, ident.name, True,
                                            on_done=lambda _: self.refresh(select=ident.name))
                if choice != self._choice:  # another face was chosen while the dialog was open
                    return
            self._use(ident)

        def failed(exc):
            self._set_busy(-1)
            self._say(str(exc), "error")

        self.controller.jobs.submit(self._load_saved, name, on_done=loaded, on_error=failed)

    def _load_saved(self, name: str):
        """A saved identity; an unusable embedding is rebuilt from its photos (off the Qt thread)."""
        from ..vision.identity import IdentityBuilder

        analyzer = self.controller.engine.analyzer
        return self.store.load(name, builder=IdentityBuilder(analyzer) if analyzer is not None else None)

    def _use(self, ident) -> None:
        if self.controller.set_identity(ident) is None:
            return
        self.active = ident.name
        self.active_label.setText(f"Live face: {ident.name}")
        emit(self.active_changed, ident.name)

    def _delete_selected(self) -> None:
        item = self.gallery.currentItem()
        if item is None:
            return
        name = item.data(Qt.UserRole)

        def done(_):
            if name == self.active:
                self.active = ""
                self.active_label.setText("No face chosen")
                self.controller.set_identity(None)
                emit(self.active_changed, "")
            self.refresh()

        self.controller.jobs.submit(self.store.delete, name, on_done=done)
