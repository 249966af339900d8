"""Live preview: frames from the engine's output thread, painted on the Qt thread.

The engine calls :meth:`FrameFeed.on_packet` on its output thread; that only drops the
packet into a one-slot holder (an older unread packet is dropped). A converter thread
takes the newest packet, scales it to the preview's current size (side by side when asked)
and wraps it in a ``QImage``; it hands the image over through a second one-slot holder and
a signal that is emitted only when the Qt thread has taken the previous image. The Qt
thread only paints.

With each image come its panes (where each copy of the frame sits in it, as fractions: one in
the output view, two side by side) and the face map's tags (each mapped face's box and the
identity it was given). A click on the picture is turned into the point of the frame under it
(``face_clicked(u, v)``, fractions of the frame's width and height): in "Pick faces" mode the
window maps the person there to the source face chosen in the picker.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget


from ..vision.slot import LatestSlot
from . import theme
from .qtcompat import emit

MODES = ("output", "side_by_side")


class FrameFeed(QObject):
    """Engine frames → scaled ``QImage`` for the preview, newest only."""

    image_ready = Signal()

    def __init__(self, parent: QObject | None = None, max_fps: float = 30.0):
        super().__init__(parent)
        self._slot = LatestSlot()
        self._lock = threading.Lock()
        self._image: QImage | None = None
        self._pending = False
        self._target = (640, 360)
        self._mode = "output"
        self._min_dt = 1.0 / max_fps
        self._stop = threading.Event()
        self.frames_in = 0  # packets seen (engine side)
        self.frames_shown = 0  # images handed to the Qt thread
        self.last_shape: tuple[int, int] | None = None
        self._layout: tuple = ((), ())  # the pending image's panes and tags
        self.taken_layout: tuple = ((), ())  # those of the image take_image() returned last
        self._thread = threading.Thread(target=self._loop, name="mirage-gui-preview", daemon=True)
        self._thread.start()

    # -- engine output thread ------------------------------------------------------------
    def on_packet(self, pkt) -> None:
        self.frames_in += 1
        self._slot.put(pkt)

    # -- Qt thread -------------------------------------------------------------------------
    def set_target(self, width: int, height: int) -> None:
        self._target = (max(16, int(width)), max(16, int(height)))

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"preview mode must be one of {MODES}")
        self._mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    def take_image(self) -> QImage | None:
        """The newest image (None if none came since); its panes and tags are in
        :attr:`taken_layout` from then on."""
        with self._lock:
            img, self._image, self._pending = self._image, None, False
            if img is not None:
                self.taken_layout = self._layout
            return img

    def close(self) -> None:
        self._stop.set()
        self._slot.close()
        self._thread.join(2.0)

    # -- converter thread ------------------------------------------------------------------
    def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            pkt = self._slot.get(timeout=0.2)
            if pkt is None:
                if self._slot.closed:
                    break
                continue
            wait = self._min_dt - (time.perf_counter() - last)
            if wait > 0:  # a screen needs no more; the newest packet wins after the pause
                time.sleep(wait)
                newer = self._slot.take_nowait()
                pkt = newer if newer is not None else pkt
            last = time.perf_counter()
            original, mode = getattr(pkt, "original", None), self._mode
            img = self.render(pkt.frame, original, self._target, mode)
            if img is None:
                continue
            panes = self.panes(pkt.frame.shape, self._target, mode, original is not None)
            tags = tuple(getattr(pkt, "mapped", None) or ())
            with self._lock:
                self._image = img
                self._layout = (panes, tags)
                notify = not self._pending
                self._pending = True
            self.frames_shown += 1
            if notify:
                try:
                    emit(self.image_ready)
                except RuntimeError:  # the feed was deleted while closing
                    break

    @staticmethod
    def _side_by_side(shape: tuple, target: tuple[int, int]) -> tuple[tuple[int, int], int]:
        """The size of each half of a side-by-side image, and the gap between them (px)."""
        (h, w), (tw, th) = shape[:2], target
        gap_w = max(2, tw // 160)
        s = min((tw - gap_w) / (2 * w), th / h)
        return (max(1, int(w * s)), max(1, int(h * s))), gap_w

    @classmethod
    def panes(cls, shape: tuple, target: tuple[int, int], mode: str, has_original: bool) -> tuple:
        """Where the frame sits in the image :meth:`render` makes, as fractions (x1, y1, x2, y2):
        the whole image, or (side by side) the original's half and the output's half."""
        if mode != "side_by_side" or not has_original:
            return ((0.0, 0.0, 1.0, 1.0),)
        (w, _), gap = cls._side_by_side(shape, target)
        total = 2 * w + gap
        return ((0.0, 0.0, w / total, 1.0), ((w + gap) / total, 0.0, 1.0, 1.0))

    @classmethod
    def render(cls, frame: np.ndarray, original: np.ndarray | None, target: tuple[int, int],
               mode: str) -> QImage | None:
        """BGR frame(s) → a QImage that fits ``target`` (aspect kept); safe off the Qt thread."""
        if frame is None or frame.ndim != 3:
            return None
        tw, th = target
        if mode == "side_by_side" and original is not None:
            size, gap_w = cls._side_by_side(frame.shape, target)
            gap = np.zeros((size[1], gap_w, 3), np.uint8)
            gap[:] = (39, 32, 29)
            left = cv2.resize(original, size, interpolation=cv2.INTER_AREA)
            right = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            out = np.ascontiguousarray(np.hstack([left, gap, right]))
        else:
            h, w = frame.shape[:2]
            s = min(tw / w, th / h)
            size = (max(1, int(w * s)), max(1, int(h * s)))
            interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            out = np.ascontiguousarray(cv2.resize(frame, size, interpolation=interp))
        qimg = QImage(out.data, out.shape[1], out.shape[0], out.strides[0], QImage.Format_BGR888)
        return qimg.copy()  # own the pixels: ``out`` dies with this call


class PreviewWidget(QWidget):
    """Paints the newest image from a :class:`FrameFeed` (with the face map's tags), or a message
    when there is none; a click on the picture says where in the frame it was."""

    face_clicked = Signal(float, float)  # the point of the frame under a click, as fractions (u, v)

    def __init__(self, feed: FrameFeed, parent: QWidget | None = None):
        super().__init__(parent)
        self.feed = feed
        self._image: QImage | None = None
        self._panes: tuple = ()
        self.tags: tuple = ()  # (box in fractions of the frame, label) of the faces shown mapped
        self.image_rect: QRectF | None = None  # where the image was painted last, in widget pixels
        self._message = "Press Start to begin"
        self._detail = ""
        self._labels = ("Original", "Output")
        self.painted_frames = 0
        self.setMinimumSize(QSize(480, 270))
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setAttribute(Qt.WA_OpaquePaintEvent, True)
        feed.image_ready.connect(self._on_image)

    def set_message(self, text: str, detail: str = "") -> None:
        self._message, self._detail = text, detail
        self.update()

    def clear(self) -> None:
        self._image = None
        self._panes, self.tags, self.image_rect = (), (), None
        self.update()

    def frame_to_widget(self, u: float, v: float, pane: int = -1) -> QPointF | None:
        """The widget point showing the frame's point (``u``, ``v``) in one pane (default: the
        output's), or None with no image painted."""
        r = self.image_rect
        if r is None or not self._panes:
            return None
        x1, y1, x2, y2 = self._panes[pane]
        return QPointF(r.x() + (x1 + u * (x2 - x1)) * r.width(), r.y() + (y1 + v * (y2 - y1)) * r.height())

    def widget_to_frame(self, x: float, y: float) -> tuple[float, float] | None:
        """The frame's point (fractions) under the widget point, in whichever pane holds it."""
        r = self.image_rect
        if r is None or r.width() <= 0 or r.height() <= 0:
            return None
        fx, fy = (x - r.x()) / r.width(), (y - r.y()) / r.height()
        for x1, y1, x2, y2 in self._panes:
            if x1 <= fx <= x2 and y1 <= fy <= y2 and x2 > x1 and y2 > y1:
                return (fx - x1) / (x2 - x1), (fy - y1) / (y2 - y1)
        return None

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        if event.button() == Qt.LeftButton:
            pos = event.position()
            at = self.widget_to_frame(pos.x(), pos.y())
            if at is not None:
                self.face_clicked.emit(*at)
                return
        super().mousePressEvent(event)

    @property
    def image(self) -> QImage | None:
        return self._image

    def _on_image(self) -> None:
        img = self.feed.take_image()
        if img is not None:
            self._image = img
            self._panes, self.tags = self.feed.taken_layout
            self.update()

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        dpr = self.devicePixelRatioF()
        self.feed.set_target(int(self.width() * dpr), int(self.height() * dpr))
        super().resizeEvent(event)

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing, True)
        r = QRectF(self.rect())
        path = QPainterPath()
        path.addRoundedRect(r.adjusted(0.5, 0.5, -0.5, -0.5), 10, 10)
        p.fillRect(self.rect(), QColor(theme.BG))
        p.fillPath(path, QColor("#0d0f12"))
        p.setClipPath(path)
        img = self._image
        if img is not None and not img.isNull():
            dpr = self.devicePixelRatioF()
            iw, ih = img.width() / dpr, img.height() / dpr
            s = min(r.width() / iw, r.height() / ih, 1.0 if dpr == 1 else 10.0)
            w, h = iw * s, ih * s
            target = QRectF(r.x() + (r.width() - w) / 2, r.y() + (r.height() - h) / 2, w, h)
            p.setRenderHint(QPainter.SmoothPixmapTransform, True)
            p.drawImage(target, img)
            self.image_rect = target
            self.painted_frames += 1
            for box, label in self.tags:  # the face map: who was given which face, on the output
                at = self.frame_to_widget(box[0], box[1])
                if at is not None and label:
                    self._draw_tag(p, at.x(), max(target.y(), at.y() - p.fontMetrics().height() - 8), label)
            if self.feed.mode == "side_by_side":
                self._draw_tag(p, target.x() + 10, target.y() + 10, self._labels[0])
                self._draw_tag(p, target.center().x() + 10, target.y() + 10, self._labels[1])
        else:
            p.setPen(QColor(theme.TEXT))
            f = QFont(self.font())
            f.setPointSizeF(f.pointSizeF() * 1.4)
            f.setBold(True)
            p.setFont(f)
            p.drawText(r.adjusted(20, -30, -20, -30), Qt.AlignCenter | Qt.TextWordWrap, self._message)
            if self._detail:
                p.setFont(self.font())
                p.setPen(QColor(theme.MUTED))
                p.drawText(r.adjusted(40, 40, -40, 0), Qt.AlignHCenter | Qt.AlignVCenter | Qt.TextWordWrap,
                           self._detail)
        p.end()

    def _draw_tag(self, p: QPainter, x: float, y: float, text: str) -> None:
        fm = p.fontMetrics()
        w = fm.horizontalAdvance(text) + 14
        rect = QRectF(x, y, w, fm.height() + 6)
        p.setPen(Qt.NoPen)
        p.setBrush(QColor(0, 0, 0, 150))
        p.drawRoundedRect(rect, 6, 6)
        p.setPen(QPen(QColor(theme.TEXT)))
        p.drawText(rect, Qt.AlignCenter, text)
