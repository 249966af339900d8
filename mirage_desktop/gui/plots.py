"""Live latency plots and the health banner, drawn with QPainter from engine snapshots.

:class:`MetricsHistory` keeps a rolling window of snapshots (P50/P95 per stage, the A/V offset,
FPS and dropped frames per second); the plot widgets only read it and paint.
"""

from __future__ import annotations

import math
import time
from collections import deque

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from . import theme
from .qtcompat import emit

# Stages drawn, in legend order; others that show up in a snapshot are appended.
STAGE_ORDER = ["total", "detect", "embed", "track", "parse", "swap", "enhance", "worker", "output"]
#: video output latency minus the voice's (ms, negative: the video is early); a signed value, so
#: it has a plot of its own (:class:`AvOffsetPlot`), not a line on the latency plot's log axis;
#: that plot also names the two latencies (capture -> output) it is the difference of
AV_OFFSET = "av.offset_ms"
AV_LATENCIES = (("video", "av.video_latency"), ("voice", "av.audio_latency"))
AV_MODES = {"convert": "voice changer", "lipsync": "lip-sync mic"}


class MetricsHistory:
    """Rolling history of engine snapshots, ``window_s`` seconds long."""

    def __init__(self, window_s: float = 60.0, max_points: int = 600):
        self.window_s = window_s
        self.t: deque[float] = deque(maxlen=max_points)
        self.stages: dict[str, tuple[deque, deque]] = {}
        self.fps: deque[float] = deque(maxlen=max_points)
        self.dropped_rate: deque[float] = deque(maxlen=max_points)
        self.av_offset: tuple[deque, deque] = (deque(maxlen=max_points), deque(maxlen=max_points))  # P50, P95
        self.av_mode = "none"  # the voice path the video is lined up with (gauge av.mode)
        self.dropped_total = 0
        self.frames_out = 0
        self.last: dict = {}
        self._prev: tuple[float, int] | None = None
        self.updates = 0

    def clear(self) -> None:
        self.__init__(self.window_s, self.t.maxlen or 600)

    def stage_names(self) -> list[str]:
        known = [s for s in STAGE_ORDER if s in self.stages]
        return known + sorted(s for s in self.stages if s not in STAGE_ORDER)

    def add(self, snap: dict, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.last = snap
        self.updates += 1
        self.t.append(now)
        n = len(self.t)
        for name, s in (snap.get("stages") or {}).items():
            if name.startswith(("voice", "av.")) or not s or not s.get("count"):
                continue  # not video stages: the voice's, and the A/V ones (their own plot)
            if name not in self.stages:
                ml = self.t.maxlen
                self.stages[name] = (deque([math.nan] * (n - 1), maxlen=ml), deque([math.nan] * (n - 1), maxlen=ml))
        for name, (p50, p95) in self.stages.items():
            s = (snap.get("stages") or {}).get(name) or {}
            p50.append(s["p50"] if s.get("p50") is not None else math.nan)
            p95.append(s["p95"] if s.get("p95") is not None else math.nan)
        av = (snap.get("stages") or {}).get(AV_OFFSET) or {}
        for dq, key in zip(self.av_offset, ("p50", "p95")):
            v = av.get(key) if av.get("count") else None
            dq.append(float(v) if isinstance(v, (int, float)) else math.nan)
        gauges = snap.get("gauges") or {}
        self.av_mode = str(gauges.get("av.mode") or "none")
        fps = gauges.get("fps")
        running = (snap.get("status") or {}).get("running", True)
        self.fps.append(float(fps) if isinstance(fps, (int, float)) and running else 0.0)
        counters = snap.get("counters") or {}
        dropped = sum(int(v) for k, v in counters.items() if k.startswith("dropped."))
        self.dropped_total = dropped
        self.frames_out = int(counters.get("frames.out", 0))
        if self._prev is not None and now > self._prev[0]:
            self.dropped_rate.append(max(0, dropped - self._prev[1]) / (now - self._prev[0]))
        else:
            self.dropped_rate.append(0.0)
        self._prev = (now, dropped)

    def latest(self, stage: str) -> tuple[float, float]:
        p50, p95 = self.av_offset if stage == AV_OFFSET else self.stages.get(stage, ((), ()))
        return (p50[-1] if p50 else math.nan, p95[-1] if p95 else math.nan)


def _nice_ceiling(v: float, ticks: int = 4) -> float:
    """The smallest ``ticks`` × (1, 2, 2.5 or 5 × 10^k) that holds ``v``."""
    if not v or v <= 0 or math.isnan(v):
        return 10.0
    step = v / ticks
    exp = 10 ** math.floor(math.log10(step))
    for m in (1, 2, 2.5, 5, 10):
        if step <= m * exp + 1e-12:
            return ticks * m * exp
    return ticks * 10 * exp


#: the spans the plots can show, in seconds (the history keeps the longest)
SPANS = (10.0, 60.0)


class _PlotBase(QWidget):
    title = ""

    def __init__(self, history: MetricsHistory, parent: QWidget | None = None):
        super().__init__(parent)
        self.history = history
        self.span_s = min(history.window_s, SPANS[0])  # seconds drawn, up to now: a new run fills the plot
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.paints = 0
        self.corner: QWidget | None = None  # a widget kept in the top-right corner (the span switch)

    def set_corner(self, w: QWidget) -> None:
        w.setParent(self)
        self.corner = w
        self._place_corner()
        w.show()

    def _place_corner(self) -> None:
        if self.corner is not None:
            hint = self.corner.sizeHint()
            self.corner.setGeometry(self.width() - hint.width() - 8, 5, hint.width(), hint.height())

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._place_corner()

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(420, 180)

    def set_span(self, seconds: float) -> None:
        self.span_s = float(min(seconds, self.history.window_s))
        self.update()

    def _first_visible(self) -> int:
        """Index of the oldest point inside the span."""
        h = self.history
        if not h.t:
            return 0
        now = h.t[-1]
        for i, t in enumerate(h.t):
            if now - t <= self.span_s:
                return i
        return len(h.t)

    def _frame(self, p: QPainter) -> QRectF:
        r = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        path = QPainterPath()
        path.addRoundedRect(r, 10, 10)
        p.fillRect(self.rect(), QColor(theme.BG))
        p.fillPath(path, QColor(theme.PANEL))
        p.setPen(QPen(QColor(theme.BORDER), 1))
        p.drawPath(path)
        p.setPen(QColor(theme.TEXT))
        f = QFont(self.font())
        f.setBold(True)
        p.setFont(f)
        p.drawText(QRectF(r.x() + 12, r.y() + 6, r.width() - 24, 20), Qt.AlignLeft | Qt.AlignVCenter, self.title)
        p.setFont(self.font())
        return r

    def _axes(self, p: QPainter, area: QRectF, ymax: float, ymin: float = 0.0, unit: str = "") -> None:
        """Five grid lines from ``ymin`` to ``ymax``; the one at 0 is solid."""
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.82))
        p.setFont(small)
        signed = ymin < 0
        for i in range(5):
            y = area.bottom() - area.height() * i / 4
            v = ymin + (ymax - ymin) * i / 4
            p.setPen(QPen(QColor(theme.BORDER), 1, Qt.SolidLine if abs(v) < 1e-9 else Qt.DotLine))
            p.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            p.setPen(QColor(theme.MUTED))
            label = (f"{v:+.0f}" if signed and abs(v) > 1e-9 else f"{v:.0f}") if abs(v - round(v)) < 1e-6 \
                else f"{v:.1f}"
            p.drawText(QRectF(area.left() - 60, y - 8, 54, 16), Qt.AlignRight | Qt.AlignVCenter, label + unit)
        p.drawText(QRectF(area.left(), area.bottom() + 2, 80, 14), Qt.AlignLeft, f"-{self.span_s:.0f} s")
        p.drawText(QRectF(area.right() - 60, area.bottom() + 2, 60, 14), Qt.AlignRight, "now")
        p.setFont(self.font())

    def _xs(self, area: QRectF) -> list[float]:
        h = self.history
        if not h.t:
            return []
        now = h.t[-1]
        return [area.right() - (now - t) / self.span_s * area.width() for t in h.t]

    @staticmethod
    def _line(p: QPainter, xs: list[float], ys, area: QRectF, ymap, pen: QPen) -> None:
        """Polyline of ``ys`` at ``xs``; ``ymap(v)`` gives a value's y pixel; NaN breaks the line."""
        path = QPainterPath()
        started = False
        vals = list(ys)[-len(xs):] if xs else []
        off = len(xs) - len(vals)
        for i, v in enumerate(vals):
            x = xs[i + off]
            if x < area.left() or v is None or (isinstance(v, float) and math.isnan(v)):
                started = False
                continue
            y = ymap(v)
            if started:
                path.lineTo(x, y)
            else:
                path.moveTo(x, y)
                started = True
        p.setPen(pen)
        p.setBrush(Qt.NoBrush)
        p.drawPath(path)


def _linear(area: QRectF, ymax: float, ymin: float = 0.0):
    return lambda v: area.bottom() - (max(ymin, min(v, ymax)) - ymin) / (ymax - ymin) * area.height()


def _log_range(values: list[float]) -> tuple[float, float]:
    """Whole decades around the positive values (at least 1 ms .. 100 ms)."""
    pos = [v for v in values if v > 0 and not math.isnan(v)]
    lo = min(pos) if pos else 1.0
    hi = max(pos) if pos else 100.0
    lo_e = max(-1, min(0, math.floor(math.log10(lo))))
    hi_e = max(2, math.ceil(math.log10(hi)))
    return 10.0 ** lo_e, 10.0 ** hi_e


def _logmap(area: QRectF, lo: float, hi: float):
    a, b = math.log10(lo), math.log10(hi)

    def f(v: float) -> float:
        t = (math.log10(min(max(v, lo), hi)) - a) / (b - a)
        return area.bottom() - t * area.height()

    return f


class LatencyPlot(_PlotBase):
    """Rolling P50 (solid) and P95 (dashed) per stage, total in white on top."""

    title = "Latency per stage — P50 solid, P95 dashed"

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing, True)
        r = self._frame(p)
        h = self.history
        names = h.stage_names()
        # legend: one row of "stage p50/p95", right of the title, wrapping as needed
        legend_h = self._legend(p, r, names)
        area = QRectF(r.left() + 68, r.top() + 34 + legend_h, r.width() - 82, r.height() - 58 - legend_h)
        if area.height() < 20:
            p.end()
            return
        lo, hi = self.scale()
        ymap = _logmap(area, lo, hi)
        self._log_axes(p, area, lo, hi, ymap)
        xs = self._xs(area)
        if not names:
            p.setPen(QColor(theme.MUTED))
            p.drawText(area, Qt.AlignCenter, "no frames yet — start the stream")
        for i, n in reversed(list(enumerate(names))):
            c = theme.stage_color(n, i)
            width = 2.4 if n == "total" else 1.4
            self._line(p, xs, h.stages[n][0], area, ymap, QPen(c, width))
            self._line(p, xs, h.stages[n][1], area, ymap, QPen(c, width * 0.8, Qt.DashLine))
        self.paints += 1
        p.end()

    def scale(self) -> tuple[float, float]:
        """The log axis' range: whole decades around the points in view (not the whole history,
        so a slow start does not squash a run that is fast now)."""
        h, first = self.history, self._first_visible()
        return _log_range([v for n in h.stage_names() for dq in h.stages[n] for v in list(dq)[first:]])

    def _log_axes(self, p: QPainter, area: QRectF, lo: float, hi: float, ymap) -> None:
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.82))
        p.setFont(small)
        e = round(math.log10(lo))
        while 10.0 ** e <= hi * 1.0001:
            v = 10.0 ** e
            y = ymap(v)
            p.setPen(QPen(QColor(theme.BORDER), 1, Qt.SolidLine if v == lo else Qt.DotLine))
            p.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            p.setPen(QColor(theme.MUTED))
            p.drawText(QRectF(area.left() - 62, y - 8, 56, 16), Qt.AlignRight | Qt.AlignVCenter,
                       f"{v:g} ms")
            e += 1
        p.drawText(QRectF(area.left(), area.bottom() + 2, 80, 14), Qt.AlignLeft, f"-{self.span_s:.0f} s")
        p.drawText(QRectF(area.right() - 60, area.bottom() + 2, 60, 14), Qt.AlignRight, "now")
        p.setFont(self.font())

    def _legend(self, p: QPainter, r: QRectF, names: list[str]) -> float:
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))
        p.setFont(small)
        fm = p.fontMetrics()
        x, y = r.left() + 12, r.top() + 28
        line_h = fm.height() + 2
        rows = 1 if names else 0
        for i, n in enumerate(names):
            p50, p95 = self.history.latest(n)
            text = f"{n} {_ms(p50)} / {_ms(p95)}"
            w = fm.horizontalAdvance(text) + 26
            if x + w > r.right() - 8:
                x = r.left() + 12
                y += line_h
                rows += 1
            c = theme.stage_color(n, i)
            p.setPen(QPen(c, 3))
            p.drawLine(QPointF(x, y + line_h / 2), QPointF(x + 12, y + line_h / 2))
            p.setPen(QColor(theme.TEXT if n == "total" else theme.MUTED))
            p.drawText(QRectF(x + 16, y, w, line_h), Qt.AlignLeft | Qt.AlignVCenter, text)
            x += w + 6
        p.setFont(self.font())
        return rows * line_h


def _ms(v: float) -> str:
    return "–" if v is None or math.isnan(v) else (f"{v:.1f}" if v < 100 else f"{v:.0f}")


class RatePlot(_PlotBase):
    """FPS (line) and dropped frames per second (bars)."""

    title = "Frames per second · dropped frames"

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing, True)
        r = self._frame(p)
        h = self.history
        fps = h.fps[-1] if h.fps else 0.0
        p.setPen(QColor(theme.MUTED))
        p.drawText(QRectF(r.left() + 12, r.top() + 26, r.width() - 24, 18), Qt.AlignLeft | Qt.AlignVCenter,
                   f"{fps:.1f} FPS    dropped {h.dropped_total} of {h.frames_out + h.dropped_total} frames")
        area = QRectF(r.left() + 52, r.top() + 52, r.width() - 66, r.height() - 76)
        if area.height() < 20:
            p.end()
            return
        first = self._first_visible()
        peak = max([30.0, *list(h.fps)[first:], *list(h.dropped_rate)[first:]]) if h.fps else 30.0
        ymax = _nice_ceiling(peak * 1.05)
        self._axes(p, area, ymax)
        xs = self._xs(area)
        bar_w = max(1.5, area.width() / max(self.span_s, len(xs) - first or 1) * 0.8)
        p.setPen(Qt.NoPen)
        p.setBrush(QColor(theme.RED))
        for x, v in zip(xs, h.dropped_rate):
            if v > 0 and x >= area.left():
                hh = min(v, ymax) / ymax * area.height()
                p.drawRect(QRectF(x - bar_w / 2, area.bottom() - hh, bar_w, hh))
        self._line(p, xs, h.fps, area, _linear(area, ymax), QPen(QColor(theme.GREEN), 2.0))
        self.paints += 1
        p.end()


class AvOffsetPlot(_PlotBase):
    """The A/V offset: video output latency minus the voice's, P50 (solid) and P95 (dashed), on a
    linear axis around 0 (above: the video is late, below: early). Nothing to draw while no voice
    path runs (no voice changer, no lip-sync microphone): it says so."""

    title = "A/V offset"
    COLOR = "#b4e36b"  # none of the stage colours
    EMPTY = "no voice path: nothing to line up"

    def __init__(self, history: MetricsHistory, parent: QWidget | None = None):
        super().__init__(history, parent)
        self.notes: tuple[str, str] = ("", "")  # the two lines under the title as last painted
        self.setToolTip("Video output latency minus the voice's, for the same instant (P50 solid, P95 "
                        "dashed). Above 0 the video is late, below it is early. Measured while the voice "
                        "changer or the lip-sync microphone runs; 'A/V trim' shifts it.")

    def scale(self) -> float:
        """The axis runs from -m to +m ms: m holds every point in view, at least 50 ms."""
        first = self._first_visible()
        vals = [abs(v) * 1.05 for dq in self.history.av_offset for v in list(dq)[first:] if not math.isnan(v)]
        return _nice_ceiling(max([50.0, *vals]), ticks=2)

    def has_data(self) -> bool:
        first = self._first_visible()
        return any(not math.isnan(v) for dq in self.history.av_offset for v in list(dq)[first:])

    def plot_area(self) -> QRectF:
        r = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        return QRectF(r.left() + 70, r.top() + 68, r.width() - 84, r.height() - 92)

    def describe(self) -> tuple[str, str]:
        """The offset now, and the two latencies it is the difference of (or why there is none)."""
        h = self.history
        p50, p95 = h.latest(AV_OFFSET)
        if math.isnan(p50):
            return ("measuring…" if h.av_mode in AV_MODES else "voice off", "")
        stages = h.last.get("stages") or {}
        lat = [f"{what} {_ms(stages[k]['p50'])}" for what, k in AV_LATENCIES
               if (stages.get(k) or {}).get("count") and stages[k].get("p50") is not None]
        return f"P50 {p50:+.0f} ms · P95 {p95:+.0f} ms", (" / ".join(lat) + " ms") if lat else ""

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing, True)
        h = self.history
        mode = AV_MODES.get(h.av_mode)
        self.title = f"A/V offset · {mode}" if mode else "A/V offset"
        r = self._frame(p)
        self.notes = self.describe()
        for k, (line, color) in enumerate(zip(self.notes, (theme.TEXT, theme.MUTED))):
            p.setPen(QColor(color))
            p.drawText(QRectF(r.left() + 12, r.top() + 26 + 17 * k, r.width() - 24, 17),
                       Qt.AlignLeft | Qt.AlignVCenter, line)
        area = self.plot_area()
        if area.height() < 20:
            p.end()
            return
        m = self.scale()
        self._axes(p, area, m, -m, " ms")
        if not self.has_data():
            p.setPen(QColor(theme.MUTED))
            p.drawText(area.adjusted(4, 0, -4, 0), Qt.AlignCenter | Qt.TextWordWrap, self.EMPTY)
        xs = self._xs(area)
        ymap = _linear(area, m, -m)
        c = QColor(self.COLOR)
        self._line(p, xs, h.av_offset[0], area, ymap, QPen(c, 2.0))
        self._line(p, xs, h.av_offset[1], area, ymap, QPen(c, 1.4, Qt.DashLine))
        self.paints += 1
        p.end()


class SpanSwitch(QWidget):
    """"10 s | 60 s": how much of the history the plots show. ``span_changed(seconds)``."""

    span_changed = Signal(float)

    def __init__(self, spans=SPANS, current: float = SPANS[0], parent: QWidget | None = None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        self.buttons: dict[float, QPushButton] = {}
        for sp in spans:
            b = QPushButton(f"{sp:.0f} s")
            b.setObjectName("Small")
            b.setCheckable(True)
            b.setToolTip(f"Show the last {sp:.0f} seconds")
            b.clicked.connect(lambda _=False, v=sp: self.set_span(v))
            lay.addWidget(b)
            self.buttons[sp] = b
        self.span = current
        self._check()

    def set_span(self, seconds: float) -> None:
        changed = seconds != self.span
        self.span = seconds
        self._check()
        if changed:
            emit(self.span_changed, float(seconds))

    def _check(self) -> None:
        for sp, b in self.buttons.items():
            b.setChecked(sp == self.span)


class HealthBanner(QFrame):
    """Green / yellow / red with the reasons in words, and an optional action button."""

    action_clicked = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("HealthBanner")
        self.level = "green"
        self.reasons: list[str] = []
        lay = QHBoxLayout(self)
        lay.setContentsMargins(14, 8, 10, 8)
        lay.setSpacing(10)
        self.dot = QLabel()
        self.dot.setFixedSize(14, 14)
        lay.addWidget(self.dot, 0, Qt.AlignTop | Qt.AlignLeft)
        col = QVBoxLayout()
        col.setSpacing(2)
        self.title = QLabel()
        f = self.title.font()
        f.setBold(True)
        self.title.setFont(f)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        col.addWidget(self.title)
        col.addWidget(self.text)
        lay.addLayout(col, 1)
        self.action = QPushButton()
        self.action.setObjectName("Primary")
        self.action.hide()
        self.action.clicked.connect(self.action_clicked)
        lay.addWidget(self.action, 0, Qt.AlignVCenter)
        self.set_health({"level": "green", "reasons": ["ready"]})

    def set_action(self, text: str | None) -> None:
        if text:
            self.action.setText(text)
            self.action.show()
        else:
            self.action.hide()

    def set_health(self, health: dict) -> None:
        level = health.get("level", "green")
        reasons = list(health.get("reasons") or [])
        if level == self.level and reasons == self.reasons and self.title.text():
            return
        self.level, self.reasons = level, reasons
        color = theme.LEVEL_COLORS.get(level, theme.MUTED)
        words = {"green": "All good", "yellow": "Running, with a warning", "red": "Needs attention"}
        self.title.setText(words.get(level, level))
        self.text.setText("\n".join(_sentence(r) for r in reasons) or "—")
        self.dot.setStyleSheet(f"background: {color}; border-radius: 7px;")
        bg = QColor(color)
        bg.setAlpha(34)
        self.setStyleSheet(
            f"QFrame#HealthBanner {{ background: rgba({bg.red()},{bg.green()},{bg.blue()},{bg.alpha()});"
            f" border: 1px solid {color}; border-radius: 10px; }}")


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] if text else text
