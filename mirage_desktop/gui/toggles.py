"""Live toggles: every control maps to one engine option and applies without a restart.

``option_changed(name, value)`` is emitted with the engine's option name; the window sends
it to :meth:`EngineController.set_option` and saves it in the settings. Voice controls sit
in their own group (:class:`VoiceControls`) so the voice module can grow it on its own.
"""

from __future__ import annotations

from typing import Any

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)


from ..config import PARSER_REGIONS, RULES, Settings
from . import theme
from .qtcompat import emit

#: every setting the Live tab has a control for; each control's range or choices come from
#: ``config.RULES`` (tests/gui/test_gui_toggles.py checks each against its rule)
CONTROLLED = (
    "enable_swap", "enable_mouth_mask", "enable_ai_mark", "enable_color_transfer", "enable_smoothing", "max_faces",
    "match_threshold", "enable_enhancer", "codeformer_fidelity", "enable_scrfd", "detect_interval", "det_size",
    "enable_voice", "voice_pitch", "voice_formant", "voice_preset", "voice_converter", "voice_f0_method",
    "voice_speaker", "voice_model", "voice_encoder", "voice_rmvpe", "lipsync_mic", "av_trim_ms", "adapt_video",
    "enable_parser", "parser_regions", "parser_interval", "mask_smoothing", "pixel_boost", "color_smoothing",
    "track_hold_frames",
)


def _bounds(name: str) -> tuple[float, float]:
    r = RULES[name]
    assert r.lo is not None and r.hi is not None, f"{name} has no range in config.RULES"
    return r.lo, r.hi


class _Slider(QWidget):
    """A horizontal slider over a float range with its value shown beside it."""

    value_changed = Signal(float)

    def __init__(self, lo: float, hi: float, step: float, fmt: str = "{:.2f}", parent=None):
        super().__init__(parent)
        self.lo, self.hi, self.step, self.fmt = lo, hi, step, fmt
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, int(round((hi - lo) / step)))
        self.label = QLabel()
        self.label.setMinimumWidth(self.label.fontMetrics().horizontalAdvance(fmt.format(-hi if lo < 0 else hi)) + 6)
        self.label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.label)
        self.slider.valueChanged.connect(self._changed)
        self._changed(self.slider.value(), notify=False)

    @classmethod
    def for_rule(cls, name: str, step: float, fmt: str = "{:.2f}") -> "_Slider":
        return cls(*_bounds(name), step, fmt)

    def value(self) -> float:
        return round(self.lo + self.slider.value() * self.step, 6)

    def range(self) -> tuple[float, float]:
        return self.lo, round(self.lo + self.slider.maximum() * self.step, 6)

    def set_value(self, v: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(int(round((v - self.lo) / self.step)))
        self.slider.blockSignals(False)
        self._changed(self.slider.value(), notify=False)

    def _changed(self, _pos: int, notify: bool = True) -> None:
        self.label.setText(self.fmt.format(self.value()))
        if notify:
            emit(self.value_changed, self.value())


def _spin(name: str, special: str = "", suffix: str = "", step: int = 1) -> QSpinBox:
    sb = QSpinBox()
    lo, hi = _bounds(name)
    sb.setRange(int(lo), int(hi))
    sb.setSingleStep(step)
    if special:
        sb.setSpecialValueText(special)
    if suffix:
        sb.setSuffix(suffix)
    return sb


def _choices(name: str, label=str) -> QComboBox:
    cb = QComboBox()
    for c in RULES[name].choices:
        cb.addItem(label(c), c)
    return cb


class RegionChooser(QWidget):
    """One check box per face region of the occlusion-aware mask (``parser_regions``); at least
    one stays chosen. ``value_changed(text)`` sends the comma list the setting takes."""

    value_changed = Signal(str)
    SHOWN = ("skin", "brows", "eyes", "glasses", "nose", "mouth", "lips")

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.boxes: dict[str, QCheckBox] = {}
        for name in self.SHOWN:
            cb = QCheckBox(name)
            cb.setToolTip(f"Swap the {name}" + (" (off: your own glasses stay)" if name == "glasses" else ""))
            cb.toggled.connect(lambda on, n=name: self._toggled(n, on))
            self.boxes[name] = cb
            lay.addWidget(cb)
        self._extra: tuple[str, ...] = ()  # chosen regions without a box here (ears, neck, hair from the file)

    def value(self) -> str:
        chosen = [n for n in PARSER_REGIONS if (n in self.boxes and self.boxes[n].isChecked()) or n in self._extra]
        return ",".join(chosen)

    def set_value(self, text: str) -> None:
        names = [n.strip() for n in str(text).split(",") if n.strip()]
        self._extra = tuple(n for n in names if n not in self.boxes)
        for n, cb in self.boxes.items():
            cb.blockSignals(True)
            cb.setChecked(n in names)
            cb.blockSignals(False)

    def _toggled(self, name: str, on: bool) -> None:
        if not on and not self.value():  # the mask needs a region: the last one stays
            cb = self.boxes[name]
            cb.blockSignals(True)
            cb.setChecked(True)
            cb.blockSignals(False)
            return
        emit(self.value_changed, self.value())


def widget_range(w: QWidget):
    """What a control accepts: ``(lo, hi)`` for a number, a tuple of values for a list, None for
    a switch or a file."""
    if isinstance(w, _Slider):
        return w.range()
    if isinstance(w, QSpinBox):
        return w.minimum(), w.maximum()
    if isinstance(w, QComboBox):
        return tuple(w.itemData(i) for i in range(w.count()))
    return None


class FileChooser(QWidget):
    """A model file: its name (full path in the tooltip), Choose… and Clear. ``path_changed(str)``."""

    path_changed = Signal(str)

    def __init__(self, caption: str, filters: str = "ONNX models (*.onnx)", parent=None):
        super().__init__(parent)
        self.caption, self.filters, self._path = caption, filters, ""
        self.choose_file = lambda: QFileDialog.getOpenFileName(self, self.caption, str(Path.home()),
                                                               self.filters)[0]  # tests replace it
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        self.label = QLabel()
        self.label.setObjectName("Muted")
        self.label.setMinimumWidth(108)
        lay.addWidget(self.label, 1)
        self.choose = QPushButton("Choose…")
        self.choose.setObjectName("Small")
        self.choose.clicked.connect(self._choose)
        lay.addWidget(self.choose)
        self.clear = QPushButton("✕")
        self.clear.setObjectName("Small")
        self.clear.setToolTip("Use none")
        self.clear.clicked.connect(lambda: self._set(""))
        lay.addWidget(self.clear)
        self.set_path("")

    def path(self) -> str:
        return self._path

    def set_path(self, path: str) -> None:
        self._path = path or ""
        name = Path(self._path).name if self._path else "none"
        fm = self.label.fontMetrics()
        self.label.setText(fm.elidedText(name, Qt.ElideMiddle, 104))
        self.label.setToolTip(self._path or "no file chosen")
        self.clear.setEnabled(bool(self._path))

    def _choose(self) -> None:
        path = self.choose_file()
        if path:
            self._set(path)

    def _set(self, path: str) -> None:
        if path != self._path:
            self.set_path(path)
            emit(self.path_changed, self._path)


class LiveControls(QWidget):
    """``option_changed(name, value)`` for every setting; ``reference_chosen(path)`` /
    ``reference_cleared()`` for the reference person (not a setting: an embedding)."""

    option_changed = Signal(str, object)
    reference_chosen = Signal(str)
    reference_cleared = Signal()

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__(parent)
        self.controls: dict[str, QWidget] = {}
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(10)
        self.remote_note = QLabel()  # with a remote server: which controls go to it
        self.remote_note.setWordWrap(True)
        self.remote_note.setStyleSheet(f"color: {theme.YELLOW};")
        self.remote_note.hide()
        lay.addWidget(self.remote_note)
        self.forwarded: tuple | None = None  # set_remote

        face = QGroupBox("Face")
        fl = _form(face)
        self.swap = self._check("enable_swap", "Face swap", "Replace faces with the chosen identity")
        self.mouth = self._check("enable_mouth_mask", "Mouth mask",
                                 "Keep your own mouth (speech and teeth look natural)")
        self.mark = self._check("enable_ai_mark", "“AI” mark",
                                "Show a visible AI badge in the corner of the output")
        self.color = self._check("enable_color_transfer", "Colour match",
                                 "Match the swapped face's colour and light to your skin")
        self.smoothing = self._check("enable_smoothing", "Smoothing",
                                     "Smooth face positions over time so the swap does not shimmer")
        for w in (self.swap, self.mouth, self.mark, self.color, self.smoothing):
            fl.addRow(w)
        self.max_faces = self._number(fl, "Max faces", "max_faces", "How many faces to swap, largest first (0: all)",
                                      special="all")
        lay.addWidget(face)

        ref = QGroupBox("Only one person")
        rl = _form(ref)
        hint = QLabel("Swap only the face that matches a photo of that person (others stay as they are).")
        hint.setObjectName("Muted")
        hint.setWordWrap(True)
        rl.addRow(hint)
        self.reference = FileChooser("Photo of the person to swap",
                                     "Images (*.jpg *.jpeg *.png *.bmp *.webp)")
        self.reference.choose.setToolTip("Pick a photo of the person in the camera whose face is swapped")
        self.reference.clear.setToolTip("Swap any face again (largest first)")
        self.reference.label.setText("anyone")
        self.reference.path_changed.connect(self._reference_changed)
        rl.addRow("Person", self.reference)
        self.match_threshold = _Slider.for_rule("match_threshold", 0.01)
        self.match_threshold.setToolTip("How alike a face must be to the photo to be swapped "
                                        "(cosine similarity; higher is stricter)")
        self.match_threshold.value_changed.connect(
            lambda v: emit(self.option_changed, "match_threshold", float(v)))
        self.controls["match_threshold"] = self.match_threshold
        rl.addRow("Match above", self.match_threshold)
        self.reference_status = QLabel("")
        self.reference_status.setObjectName("Muted")
        self.reference_status.setWordWrap(True)
        self.reference_status.hide()
        rl.addRow(self.reference_status)
        lay.addWidget(ref)

        enh = QGroupBox("Enhancer")
        el = _form(enh)
        self.enhancer = self._check("enable_enhancer", "Face enhancer",
                                    "Restore detail on the swapped face (CodeFormer; heavier)")
        el.addRow(self.enhancer)
        self.fidelity = _Slider.for_rule("codeformer_fidelity", 0.05)
        self.fidelity.setToolTip("CodeFormer fidelity: 0 = most restoration, 1 = closest to the input")
        self.fidelity.value_changed.connect(lambda v: emit(self.option_changed, "codeformer_fidelity", float(v)))
        self.controls["codeformer_fidelity"] = self.fidelity
        el.addRow("Fidelity", self.fidelity)
        self.enhancer.toggled.connect(self.fidelity.setEnabled)
        lay.addWidget(enh)

        look = QGroupBox("Mask and sharpness")
        ml = _form(look)
        self.parser = self._check(
            "enable_parser", "Occlusion-aware mask",
            "A face parser decides which parts of your face are replaced: a hand, a cup or a microphone in "
            "front of the face stays as the camera sees it (needs the bisenet_resnet_18 model)")
        ml.addRow(self.parser)
        self.regions = RegionChooser()
        self.regions.value_changed.connect(lambda v: emit(self.option_changed, "parser_regions", v))
        self.controls["parser_regions"] = self.regions
        ml.addRow("Swap", self.regions)
        self.parser_interval = self._number(ml, "Parse every", "parser_interval",
                                            "Run the face parser every N frames; the mask follows the face "
                                            "in between", suffix=" frames")
        self.mask_smoothing = self._slider(ml, "Mask smoothing", "mask_smoothing",
                                           "Blend each new mask with the last ones so its edges do not flicker "
                                           "(higher: steadier, slower to follow a hand)")
        self.boost = _choices("pixel_boost", lambda v: f"{v} px" + ("" if v == 128 else
                                                                     f" ({v // 128}x{v // 128} tiles)"))
        self.boost.setToolTip("Pixel boost: run the swapper on tiles of a larger face crop for a sharper face; "
                              "256/384/512 px cost 4/9/16 times the swap. Under load it is stepped down first.")
        self.boost.currentIndexChanged.connect(
            lambda i: emit(self.option_changed, "pixel_boost", int(self.boost.itemData(i))))
        self.controls["pixel_boost"] = self.boost
        ml.addRow("Face size", self.boost)
        self.color_smoothing = self._slider(ml, "Colour smoothing", "color_smoothing",
                                            "Smooth the colour match over frames so the face's tone does not "
                                            "flicker (with Colour match on)")
        self.track_hold = self._number(ml, "Hold faces", "track_hold_frames",
                                       "Keep swapping a face the detector missed for this many frames, so the "
                                       "swap does not flash when detection wobbles", suffix=" frames")
        lay.addWidget(look)

        det = QGroupBox("Detection")
        dl = _form(det)
        self.scrfd = self._check("enable_scrfd", "Face detection",
                                 "Find faces in the camera image (off: every frame goes out as it is)")
        dl.addRow(self.scrfd)
        self.detect_interval = self._number(dl, "Detect every", "detect_interval",
                                            "Run the face detector every N frames; a tracker carries faces between",
                                            suffix=" frames")
        self.det_size = _choices("det_size", lambda v: f"{v} px")
        self.det_size.setToolTip("Detector input size: smaller is faster, larger finds smaller faces")
        self.det_size.currentIndexChanged.connect(
            lambda i: emit(self.option_changed, "det_size", int(self.det_size.itemData(i))))
        self.controls["det_size"] = self.det_size
        dl.addRow("Detection size", self.det_size)
        lay.addWidget(det)

        self.voice = VoiceControls(settings)
        self.voice.option_changed.connect(self.option_changed)
        self.controls.update(self.voice.controls)
        lay.addWidget(self.voice)

        sync = QGroupBox("Lip sync")
        sl = _form(sync)
        self.lipsync = self._check(
            "lipsync_mic", "Lip-sync microphone",
            "With the voice changer off: your own voice, unchanged, goes to the virtual microphone, "
            "delayed to match the swapped video, so your lips and voice arrive together in the call. "
            "Needs a virtual microphone (the 'Mirage Microphone'); off: the call app uses your "
            "microphone directly, ahead of the video.")
        sl.addRow(self.lipsync)
        self.av_trim = self._number(sl, "A/V trim", "av_trim_ms",
                                    "Shift the video against the voice, for a call app's own offset: positive "
                                    "sends the video later, negative earlier. Applies while the voice changer "
                                    "or the lip-sync microphone runs.", float, suffix=" ms", step=10)
        self.av_trim.setKeyboardTracking(False)  # a typed value applies on Enter, not per digit
        lay.addWidget(sync)

        load = QGroupBox("Under load")
        al = _form(load)
        self.adapt = self._check(
            "adapt_video", "Adapt to load",
            "When the computer cannot keep up, give up quality first (enhancer, detection size), then "
            "frame rate, then resolution — and restore them when it can. Off: your settings stay pinned.")
        self.adapt.toggled.connect(lambda _on: self.show_adapt(self._adapt_shown))
        al.addRow(self.adapt)
        self.adapt_state = QLabel()
        self.adapt_state.setWordWrap(True)
        al.addRow(self.adapt_state)
        lay.addWidget(load)
        lay.addStretch(1)
        self._adapt_shown: tuple = (False, 0, "")
        self.load(settings)

    def _number(self, form: QFormLayout, label: str, name: str, tip: str, kind=int, **spin) -> QSpinBox:
        """A spin box over setting ``name``'s range (:func:`_spin`), as a row of ``form``; its values
        are sent as ``kind``."""
        sb = _spin(name, **spin)
        sb.setToolTip(tip)
        sb.valueChanged.connect(lambda v: emit(self.option_changed, name, kind(v)))
        self.controls[name] = sb
        form.addRow(label, sb)
        return sb

    def _slider(self, form: QFormLayout, label: str, name: str, tip: str) -> "_Slider":
        sl = _Slider.for_rule(name, 0.05)
        sl.setToolTip(tip)
        sl.value_changed.connect(lambda v: emit(self.option_changed, name, float(v)))
        self.controls[name] = sl
        form.addRow(label, sl)
        return sl

    def _check(self, name: str, text: str, tip: str) -> QCheckBox:
        cb = QCheckBox(text)
        cb.setToolTip(tip)
        cb.toggled.connect(lambda on, n=name: emit(self.option_changed, n, bool(on)))
        self.controls[name] = cb
        return cb

    def _reference_changed(self, path: str) -> None:
        if path:
            self.show_reference(None, f"Checking {Path(path).name}…")
            emit(self.reference_chosen, path)
        else:
            self.show_reference(None)
            emit(self.reference_cleared)

    def show_reference(self, name: str | None, note: str = "") -> None:
        """What the engine uses: ``name`` (a photo's name) or None (any face); ``note`` below."""
        if name is None and not note:
            self.reference.set_path("")
            self.reference.label.setText("anyone")
        self.reference_status.setText(note)
        self.reference_status.setVisible(bool(note))

    def load(self, s: Settings) -> None:
        """Show ``s`` without emitting anything."""
        widgets = [self.swap, self.mouth, self.mark, self.color, self.smoothing, self.scrfd, self.enhancer,
                   self.max_faces, self.detect_interval, self.det_size, self.lipsync, self.av_trim, self.adapt,
                   self.parser, self.parser_interval, self.boost, self.track_hold]
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
        self.lipsync.setChecked(s.lipsync_mic)
        self.av_trim.setValue(int(round(s.av_trim_ms)))
        self.adapt.setChecked(s.adapt_video)
        idx = self.det_size.findData(s.det_size)
        self.det_size.setCurrentIndex(idx if idx >= 0 else self.det_size.findData(640))
        self.parser.setChecked(s.enable_parser)
        self.parser_interval.setValue(s.parser_interval)
        self.boost.setCurrentIndex(max(0, self.boost.findData(s.pixel_boost)))
        self.track_hold.setValue(s.track_hold_frames)
        for w in widgets:
            w.blockSignals(False)
        self.regions.set_value(s.parser_regions)
        self.mask_smoothing.set_value(s.mask_smoothing)
        self.color_smoothing.set_value(s.color_smoothing)
        self.fidelity.set_value(s.codeformer_fidelity)
        self.fidelity.setEnabled(s.enable_enhancer and self.forwarded is None)
        self.match_threshold.set_value(s.match_threshold)
        self.voice.load(s)
        self.show_adapt(self._adapt_shown)

    def set_remote(self, forwarded: tuple | None) -> None:
        """With a remote server (``forwarded``: the settings it takes on its control channel) only
        those controls stay enabled — the server applies them — and the rest, which apply on this
        computer only, are disabled, the note at the top saying which is which. None: all local."""
        self.forwarded = tuple(forwarded) if forwarded is not None else None
        for name, w in self.controls.items():
            w.setEnabled(forwarded is None or name in forwarded)
        self.reference.setEnabled(forwarded is None)  # a local embedding: the server matches no person
        self.voice.setEnabled(forwarded is None)
        if forwarded is None:
            self.fidelity.setEnabled(self.enhancer.isChecked())
            self.remote_note.hide()
            return
        labels = {"enable_swap": "Face swap", "max_faces": "Max faces", "enable_color_transfer": "Colour match",
                  "enable_mouth_mask": "Mouth mask", "enable_smoothing": "Smoothing"}
        sent = ", ".join(labels.get(n, n) for n in forwarded)
        self.remote_note.setText(f"Engine: remote server. {sent} go to the server; the other controls apply on "
                                 "this computer only and are off meanwhile (the server keeps its “AI” mark, "
                                 "enhancer and detection settings).")
        self.remote_note.show()

    def show_setting(self, name: str, value: Any) -> None:
        """Show ``value`` in the control of setting ``name`` without emitting anything (the value
        the engine kept when it refused a change)."""
        w = self.controls.get(name)
        if w is None:
            return
        if isinstance(w, _Slider):
            w.set_value(float(value))
        elif isinstance(w, RegionChooser):
            w.set_value(str(value))
        elif isinstance(w, FileChooser):
            w.set_path(str(value or ""))
        else:
            w.blockSignals(True)
            if isinstance(w, QCheckBox):
                w.setChecked(bool(value))
            elif isinstance(w, QSpinBox):
                w.setValue(int(round(value)))
            elif isinstance(w, QComboBox):
                w.setCurrentIndex(max(0, w.findData(value)))
            w.blockSignals(False)
        if name == "enable_enhancer":
            self.fidelity.setEnabled(bool(value) and self.forwarded is None)

        elif name == "voice_converter":
            self.voice._show_rvc(value == "rvc")

    def show_adapt(self, state: tuple) -> None:
        """The degrade ladder now: ``(running, level, reason)`` — the step it holds (yellow) or
        that the settings are in full; with "Adapt to load" off, that they are pinned."""
        self._adapt_shown = state
        running, level, reason = state
        if not self.adapt.isChecked():
            text, color = "Pinned: your settings stay as they are, whatever the load.", theme.MUTED
        elif running and reason:  # the level from the metrics; a status may come before them
            text = f"Step {level}: {reason}." if level else f"{reason[:1].upper()}{reason[1:]}."
            color = theme.YELLOW
        elif running:
            text, color = "Your settings in full (nothing reduced).", theme.MUTED
        else:
            text, color = "Steps down quality, then frame rate, then resolution when needed.", theme.MUTED
        self.adapt_state.setText(text)
        self.adapt_state.setStyleSheet(f"color: {color};")

    def values(self) -> dict[str, Any]:
        out = {
            "enable_swap": self.swap.isChecked(), "enable_mouth_mask": self.mouth.isChecked(),
            "enable_ai_mark": self.mark.isChecked(), "enable_enhancer": self.enhancer.isChecked(),
            "enable_color_transfer": self.color.isChecked(), "enable_smoothing": self.smoothing.isChecked(),
            "enable_scrfd": self.scrfd.isChecked(),
            "max_faces": self.max_faces.value(), "codeformer_fidelity": self.fidelity.value(),
            "detect_interval": self.detect_interval.value(), "det_size": int(self.det_size.currentData()),
            "match_threshold": self.match_threshold.value(),
            "lipsync_mic": self.lipsync.isChecked(), "av_trim_ms": float(self.av_trim.value()),
            "adapt_video": self.adapt.isChecked(),
            "enable_parser": self.parser.isChecked(), "parser_regions": self.regions.value(),
            "parser_interval": self.parser_interval.value(), "mask_smoothing": self.mask_smoothing.value(),
            "pixel_boost": int(self.boost.currentData()), "color_smoothing": self.color_smoothing.value(),
            "track_hold_frames": self.track_hold.value(),
        }
        out.update(self.voice.values())
        return out


def _form(box: QWidget) -> QFormLayout:
    f = QFormLayout(box)
    f.setLabelAlignment(Qt.AlignLeft)
    f.setHorizontalSpacing(14)
    f.setVerticalSpacing(9)
    f.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
    return f


F0_LABELS = {"": "Converter default", "rmvpe": "RMVPE (best; needs its model)", "harvest": "Harvest (slow, clean)",
             "dio": "DIO (fast)"}
CONVERTER_LABELS = {"world": "Pitch and formant (built in)", "rvc": "RVC voice model",
                    "passthrough": "Off (pass through)"}


class VoiceControls(QGroupBox):
    """Voice: on/off, preset, pitch and formant, and the converter — the built-in pitch/formant
    one or an RVC model (synthesizer, content encoder, optional RMVPE; F0 method and speaker).
    The voice module may add rows with :meth:`add_row`."""

    option_changed = Signal(str, object)

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__("Voice", parent)
        self.setObjectName("VoiceControls")
        self.controls: dict[str, QWidget] = {}
        self.form = _form(self)
        self.enable = QCheckBox("Voice changer")
        self.enable.setToolTip("Change your voice and send it to the 'Mirage Microphone'")
        self.enable.toggled.connect(lambda on: emit(self.option_changed, "enable_voice", bool(on)))
        self.controls["enable_voice"] = self.enable
        self.form.addRow(self.enable)
        self.converter = _choices("voice_converter", lambda c: CONVERTER_LABELS.get(c, c))
        self.converter.setToolTip("How the voice is changed")
        self.converter.currentIndexChanged.connect(self._converter_changed)
        self.controls["voice_converter"] = self.converter
        self.form.addRow("Converter", self.converter)
        self.preset = _choices("voice_preset", lambda c: c.capitalize() if c else "None")
        self.preset.setToolTip("A built-in voice (sets pitch and formant)")
        self.preset.currentIndexChanged.connect(
            lambda i: emit(self.option_changed, "voice_preset", self.preset.itemData(i)))
        self.controls["voice_preset"] = self.preset
        self.form.addRow("Preset", self.preset)
        self.pitch = _Slider.for_rule("voice_pitch", 0.5, "{:+.1f} st")
        self.pitch.setToolTip("Semitones up or down")
        self.pitch.value_changed.connect(lambda v: emit(self.option_changed, "voice_pitch", float(v)))
        self.controls["voice_pitch"] = self.pitch
        self.form.addRow("Pitch", self.pitch)
        self.formant = _Slider.for_rule("voice_formant", 0.05, "×{:.2f}")
        self.formant.setToolTip("Vocal tract size: below 1 deeper, above 1 brighter")
        self.formant.value_changed.connect(lambda v: emit(self.option_changed, "voice_formant", float(v)))
        self.controls["voice_formant"] = self.formant
        self.form.addRow("Formant", self.formant)
        self.f0_method = _choices("voice_f0_method", lambda c: F0_LABELS.get(c, c))
        self.f0_method.setToolTip("How the pitch of your voice is tracked")
        self.f0_method.currentIndexChanged.connect(
            lambda i: emit(self.option_changed, "voice_f0_method", self.f0_method.itemData(i)))
        self.controls["voice_f0_method"] = self.f0_method
        self.form.addRow("Pitch tracker", self.f0_method)
        # RVC: shown when the converter is "rvc"
        self.rvc_rows: list[QWidget] = []
        self.model = self._file("voice_model", "RVC voice model (synthesizer .onnx)", "Voice model")
        self.encoder = self._file("voice_encoder", "RVC content encoder (.onnx, e.g. vec-768)", "Encoder")
        self.rmvpe = self._file("voice_rmvpe", "RMVPE pitch model (.onnx, optional)", "RMVPE")
        self.speaker = _spin("voice_speaker")
        self.speaker.setToolTip("Speaker id inside a multi-speaker RVC model (0 for most models)")
        self.speaker.valueChanged.connect(lambda v: emit(self.option_changed, "voice_speaker", int(v)))
        self.controls["voice_speaker"] = self.speaker
        self._row("Speaker", self.speaker)
        self.rvc_hint = QLabel("Model files are loaded when the voice changer starts.")
        self.rvc_hint.setObjectName("Muted")
        self.rvc_hint.setWordWrap(True)
        self.form.addRow(self.rvc_hint)
        self.rvc_rows.append(self.rvc_hint)
        self.load(settings)

    def _row(self, label: str, widget: QWidget) -> None:
        self.form.addRow(label, widget)
        self.rvc_rows.append(widget)

    def _file(self, name: str, caption: str, label: str) -> FileChooser:
        fc = FileChooser(caption)
        fc.setToolTip(caption)
        fc.path_changed.connect(lambda p, n=name: emit(self.option_changed, n, p))
        self.controls[name] = fc
        self._row(label, fc)
        return fc

    def _converter_changed(self, i: int) -> None:
        value = self.converter.itemData(i)
        self._show_rvc(value == "rvc")
        emit(self.option_changed, "voice_converter", value)

    def _show_rvc(self, on: bool) -> None:
        for w in self.rvc_rows:
            self.form.setRowVisible(w, on)

    def add_row(self, label: str, widget: QWidget) -> None:
        self.form.addRow(label, widget)

    def load(self, s: Settings) -> None:
        combos = (self.converter, self.preset, self.f0_method)
        for w in (self.enable, self.speaker, *combos):
            w.blockSignals(True)
        self.enable.setChecked(s.enable_voice)
        for combo, value in zip(combos, (s.voice_converter, s.voice_preset, s.voice_f0_method)):
            i = combo.findData(value)
            combo.setCurrentIndex(max(0, i))
        self.speaker.setValue(s.voice_speaker)
        for w in (self.enable, self.speaker, *combos):
            w.blockSignals(False)
        self.pitch.set_value(s.voice_pitch)
        self.formant.set_value(s.voice_formant)
        self.model.set_path(s.voice_model)
        self.encoder.set_path(s.voice_encoder)
        self.rmvpe.set_path(s.voice_rmvpe)
        self._show_rvc(s.voice_converter == "rvc")

    def values(self) -> dict[str, Any]:
        return {"enable_voice": self.enable.isChecked(), "voice_pitch": self.pitch.value(),
                "voice_formant": self.formant.value(), "voice_converter": self.converter.currentData(),
                "voice_preset": self.preset.currentData(), "voice_f0_method": self.f0_method.currentData(),
                "voice_speaker": self.speaker.value(), "voice_model": self.model.path(),
                "voice_encoder": self.encoder.path(), "voice_rmvpe": self.rmvpe.path()}
