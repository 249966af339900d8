"""Live toggles: every control maps to one engine option and applies without a restart.

``option_changed(name, value)`` is emitted with the engine's option name; the window sends
it to :meth:`EngineController.set_option` and saves it in the settings. Voice controls sit
in their own group (:class:`VoiceControls`) so the voice module can grow it on its own.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)


from ..config import Settings
from .qtcompat import emit

DET_SIZES = (160, 224, 256, 320, 384, 416, 480, 512, 576, 640, 736, 800, 960, 1024)


class _Slider(QWidget):
    """A horizontal slider over a float range with its value shown beside it."""

    value_changed = Signal(float)

    def __init__(self, lo: float, hi: float, step: float, fmt: str = "{:.2f}", parent=None):
        super().__init__(parent)
        self.lo, self.step, self.fmt = lo, step, fmt
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, int(round((hi - lo) / step)))
        self.label = QLabel()
        self.label.setMinimumWidth(44)
        self.label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.label)
        self.slider.valueChanged.connect(self._changed)
        self._changed(self.slider.value(), notify=False)

    def value(self) -> float:
        return round(self.lo + self.slider.value() * self.step, 6)

    def set_value(self, v: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(int(round((v - self.lo) / self.step)))
        self.slider.blockSignals(False)
        self._changed(self.slider.value(), notify=False)

    def _changed(self, _pos: int, notify: bool = True) -> None:
        self.label.setText(self.fmt.format(self.value()))
        if notify:
            emit(self.value_changed, self.value())


class LiveControls(QWidget):
    option_changed = Signal(str, object)

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__(parent)
        self.controls: dict[str, QWidget] = {}
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(10)

        face = QGroupBox("Face")
        fl = QFormLayout(face)
        fl.setLabelAlignment(Qt.AlignLeft)
        fl.setHorizontalSpacing(14)
        fl.setVerticalSpacing(9)
        self.swap = self._check("enable_swap", "Face swap", "Replace faces with the chosen identity")
        self.mouth = self._check("enable_mouth_mask", "Mouth mask",
                                 "Keep your own mouth (speech and teeth look natural)")
        self.mark = self._check("enable_ai_mark", "“AI” mark",
                                "Show a visible AI badge in the corner of the output")
        self.color = self._check("enable_color_transfer", "Colour match",
                                 "Match the swapped face's colour and light to your skin")
        self.smoothing = self._check("enable_smoothing", "Smoothing",
                                     "Smooth face positions over time so the swap does not shimmer")
        fl.addRow(self.swap)
        fl.addRow(self.mouth)
        fl.addRow(self.mark)
        fl.addRow(self.color)
        fl.addRow(self.smoothing)
        self.max_faces = QSpinBox()
        self.max_faces.setRange(0, 32)
        self.max_faces.setSpecialValueText("all")
        self.max_faces.setToolTip("How many faces to swap, largest first (0: all)")
        self.max_faces.valueChanged.connect(lambda v: emit(self.option_changed, "max_faces", int(v)))
        self.controls["max_faces"] = self.max_faces
        fl.addRow("Max faces", self.max_faces)
        lay.addWidget(face)

        enh = QGroupBox("Enhancer")
        el = QFormLayout(enh)
        el.setHorizontalSpacing(14)
        el.setVerticalSpacing(9)
        self.enhancer = self._check("enable_enhancer", "Face enhancer",
                                    "Restore detail on the swapped face (CodeFormer; heavier)")
        el.addRow(self.enhancer)
        self.fidelity = _Slider(0.0, 1.0, 0.05)
        self.fidelity.setToolTip("CodeFormer fidelity: 0 = most restoration, 1 = closest to the input")
        self.fidelity.value_changed.connect(lambda v: emit(self.option_changed, "codeformer_fidelity", float(v)))
        self.controls["codeformer_fidelity"] = self.fidelity
        el.addRow("Fidelity", self.fidelity)
        self.enhancer.toggled.connect(self.fidelity.setEnabled)
        lay.addWidget(enh)

        det = QGroupBox("Detection")
        dl = QFormLayout(det)
        dl.setHorizontalSpacing(14)
        dl.setVerticalSpacing(9)
        self.scrfd = self._check("enable_scrfd", "Face detection",
                                 "Find faces in the camera image (off: every frame goes out as it is)")
        dl.addRow(self.scrfd)
        self.detect_interval = QSpinBox()
        self.detect_interval.setRange(1, 60)
        self.detect_interval.setSuffix(" frames")
        self.detect_interval.setToolTip("Run the face detector every N frames; a tracker carries faces between")
        self.detect_interval.valueChanged.connect(lambda v: emit(self.option_changed, "detect_interval", int(v)))
        self.controls["detect_interval"] = self.detect_interval
        dl.addRow("Detect every", self.detect_interval)
        self.det_size = QComboBox()
        for s in DET_SIZES:
            self.det_size.addItem(f"{s} px", s)
        self.det_size.setToolTip("Detector input size: smaller is faster, larger finds smaller faces")
        self.det_size.currentIndexChanged.connect(
            lambda i: emit(self.option_changed, "det_size", int(self.det_size.itemData(i))))
        self.controls["det_size"] = self.det_size
        dl.addRow("Detection size", self.det_size)
        lay.addWidget(det)

        self.voice = VoiceControls(settings)
        self.voice.option_changed.connect(self.option_changed)
        lay.addWidget(self.voice)
        lay.addStretch(1)
        self.load(settings)

    def _check(self, name: str, text: str, tip: str) -> QCheckBox:
        cb = QCheckBox(text)
        cb.setToolTip(tip)
        cb.toggled.connect(lambda on, n=name: emit(self.option_changed, n, bool(on)))
        self.controls[name] = cb
        return cb

    def load(self, s: Settings) -> None:
        """Show ``s`` without emitting anything."""
        widgets = [self.swap, self.mouth, self.mark, self.color, self.smoothing, self.scrfd, self.enhancer,
                   self.max_faces, self.detect_interval, self.det_size, self.fidelity.slider]
        for w in widgets:
            w.blockSignals(True)
        self.swap.setChecked(s.enable_swap)
        self.mouth.setChecked(s.enable_mouth_mask)
        self.mark.setChecked(s.enable_ai_mark)
        self.color.setChecked(s.enable_color_transfer)
        self.smoothing.setChecked(s.enable_smoothing)
        self.scrfd.setChecked(s.enable_scrfd)
        self.enhancer.setChecked(s.enable_enhancer)
        self.max_faces.setValue(s.max_faces)
        self.detect_interval.setValue(s.detect_interval)
        idx = self.det_size.findData(s.det_size)
        self.det_size.setCurrentIndex(idx if idx >= 0 else self.det_size.findData(640))
        for w in widgets:
            w.blockSignals(False)
        self.fidelity.set_value(s.codeformer_fidelity)
        self.fidelity.setEnabled(s.enable_enhancer)
        self.voice.load(s)

    def values(self) -> dict[str, Any]:
        out = {
            "enable_swap": self.swap.isChecked(), "enable_mouth_mask": self.mouth.isChecked(),
            "enable_ai_mark": self.mark.isChecked(), "enable_enhancer": self.enhancer.isChecked(),
            "enable_color_transfer": self.color.isChecked(), "enable_smoothing": self.smoothing.isChecked(),
            "enable_scrfd": self.scrfd.isChecked(),
            "max_faces": self.max_faces.value(), "codeformer_fidelity": self.fidelity.value(),
            "detect_interval": self.detect_interval.value(), "det_size": int(self.det_size.currentData()),
        }
        out.update(self.voice.values())
        return out


class VoiceControls(QGroupBox):
    """The place for voice: on/off, pitch and formant (engine options ``enable_voice``,
    ``voice_pitch``, ``voice_formant``). The voice module may add rows with :meth:`add_row`."""

    option_changed = Signal(str, object)

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__("Voice", parent)
        self.setObjectName("VoiceControls")
        self.form = QFormLayout(self)
        self.form.setHorizontalSpacing(14)
        self.form.setVerticalSpacing(9)
        self.enable = QCheckBox("Voice changer")
        self.enable.setToolTip("Change your voice and send it to the 'Mirage Microphone'")
        self.enable.toggled.connect(lambda on: emit(self.option_changed, "enable_voice", bool(on)))
        self.form.addRow(self.enable)
        self.pitch = _Slider(-12.0, 12.0, 0.5, "{:+.1f} st")
        self.pitch.value_changed.connect(lambda v: emit(self.option_changed, "voice_pitch", float(v)))
        self.form.addRow("Pitch", self.pitch)
        self.formant = _Slider(0.5, 2.0, 0.05, "×{:.2f}")
        self.formant.value_changed.connect(lambda v: emit(self.option_changed, "voice_formant", float(v)))
        self.form.addRow("Formant", self.formant)
        self.load(settings)

    def add_row(self, label: str, widget: QWidget) -> None:
        self.form.addRow(label, widget)

    def load(self, s: Settings) -> None:
        self.enable.blockSignals(True)
        self.enable.setChecked(s.enable_voice)
        self.enable.blockSignals(False)
        self.pitch.set_value(s.voice_pitch)
        self.formant.set_value(s.voice_formant)

    def values(self) -> dict[str, Any]:
        return {"enable_voice": self.enable.isChecked(), "voice_pitch": self.pitch.value(),
                "voice_formant": self.formant.value()}
