"""The main window: picker on the left, preview and plots in the middle, controls on the right."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QStatusBar,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .. import config
from ..config import Settings
from . import theme
from .controller import EngineController
from .models_panel import ModelsPanel
from .picker import SourcePicker
from .plots import AvOffsetPlot, HealthBanner, LatencyPlot, MetricsHistory, RatePlot, SPANS, SpanSwitch
from .preview import PreviewWidget
from .remote import FORWARDED, check_url, read_token, save_pasted_token
from .toggles import FileChooser, LiveControls

log = logging.getLogger(__name__)

RESOLUTIONS = [("Same as camera", (0, 0)), ("640 × 480", (640, 480)), ("1280 × 720", (1280, 720)),
               ("1920 × 1080", (1920, 1080))]
FPS_CHOICES = [("Same as camera", 0), ("15 fps", 15), ("24 fps", 24), ("30 fps", 30), ("60 fps", 60)]
BACKENDS = [("Automatic", ""), ("v4l2loopback (Linux)", "v4l2loopback"), ("OBS Virtual Camera", "obs"),
            ("Unity Capture (Windows)", "unitycapture")]
DESTINATIONS = [("Virtual camera", "virtualcam"), ("Preview only", "null")]
GUI_DEFAULTS = {"output": "virtualcam", "view": "output"}
#: the latency plot's title while the engine is a remote server (the stages of its snapshots,
#: gui/remote.py RemoteRun.snapshot)
REMOTE_LATENCY_TITLE = ("Remote server — round trip (control channel), server processing, gap between frames "
                        "back; P50 solid, P95 dashed")


class NoticeBar(QFrame):
    """Dismissable notices (a corrupt settings file set aside, a fallback that happened...)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("NoticeBar")
        self.setStyleSheet(f"QFrame#NoticeBar {{ background: #2b2414; border: 1px solid {theme.YELLOW};"
                           f" border-radius: 10px; }}")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(12, 6, 6, 6)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.label, 1)
        close = QPushButton("Dismiss")
        close.setObjectName("Link")
        close.clicked.connect(self.dismiss)
        lay.addWidget(close, 0, Qt.AlignTop)
        self.notices: list[str] = []
        self.hide()

    def add(self, text: str) -> None:
        if text in self.notices:
            return
        self.notices.append(text)
        self.label.setText("\n".join(f"• {n}" for n in self.notices[-4:]))
        self.show()

    def dismiss(self) -> None:
        self.notices.clear()
        self.hide()


class MainWindow(QMainWindow):
    def __init__(self, engine=None, settings: Settings | None = None, notices: list[str] | None = None, *,
                 source: Any = None, source_label: str = "", outputs: list | None = None,
                 autostart: bool = False, list_cameras: bool = True):
        super().__init__()
        if engine is None:
            from ..engine import Engine

            engine = Engine(settings or Settings())
        self.engine = engine  # its settings are the only copy: the window reads them, changes go to it
        self.gui_prefs = {**GUI_DEFAULTS, **dict((self.settings.extra or {}).get("gui", {}))}
        self.controller = EngineController(engine, self)
        self.history = MetricsHistory()
        self.fixed_outputs = outputs  # tests/screenshots pin the sinks; else from the output selector
        self._source = source
        self._source_label = source_label or ("Demo image" if source is not None else "")
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(400)
        self._save_timer.timeout.connect(self.save_settings)
        self._camera_index = 0  # the camera selector's last real choice (kept when a file dialog is cancelled)
        self.last_error = ""
        self.last_notice = ""  # the last hint shown in the status bar
        self.setWindowTitle("Mirage")
        self.resize(1480, 920)
        self.setMinimumSize(QSize(1100, 700))
        self._build()
        c = self.controller
        c.status_changed.connect(self._on_status)
        c.running_changed.connect(self._on_running)
        c.snapshot_ready.connect(self._on_snapshot)
        c.error.connect(self._on_error)
        c.notice.connect(self.notice_bar.add)
        c.models_loaded.connect(self._on_models_loaded)
        c.reference_changed.connect(self._on_reference)
        c.face_map_changed.connect(self._on_face_map)
        c.option_refused.connect(self.toggles.show_setting)
        c.remote_changed.connect(self._on_remote)
        c.jobs.busy_changed.connect(lambda n: self.busy.setVisible(n > 0))
        for n in notices or []:
            self.notice_bar.add(n)
        # first things, all off the Qt thread
        self.preview.set_message("Loading models…")
        c.load_models()
        self.models.refresh()
        self.picker.refresh()
        self._autostart = autostart
        if list_cameras:
            self._list_cameras()
        else:
            self._fill_cameras([])

    # ---- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        root = QWidget()
        outer = QVBoxLayout(root)
        outer.setContentsMargins(12, 10, 12, 6)
        outer.setSpacing(8)
        outer.addWidget(self._top_bar())
        self.notice_bar = NoticeBar()
        outer.addWidget(self.notice_bar)

        split = QSplitter(Qt.Horizontal)
        split.setChildrenCollapsible(False)
        split.setHandleWidth(10)
        # left: source face picker
        left = QFrame()
        left.setObjectName("Card")
        ll = QVBoxLayout(left)
        ll.setContentsMargins(12, 12, 12, 12)
        self.picker = SourcePicker(self.controller)
        self.picker.active_changed.connect(self._on_identity_chosen)
        ll.addWidget(self.picker)
        left.setMinimumWidth(250)
        split.addWidget(left)
        # middle: banner, preview, plots
        mid = QWidget()
        ml = QVBoxLayout(mid)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.setSpacing(8)
        self.banner = HealthBanner()
        self.banner.action_clicked.connect(self.show_models)
        ml.addWidget(self.banner)
        self.preview = PreviewWidget(self.controller.feed)
        self.preview.setToolTip("With 'Pick faces' on, click a face to give that person the source face chosen "
                                "on the left")
        self.preview.face_clicked.connect(self._face_clicked)
        ml.addWidget(self.preview, 5)
        plots = QHBoxLayout()
        plots.setSpacing(8)
        self.latency_plot = LatencyPlot(self.history)
        self.av_plot = AvOffsetPlot(self.history)
        self.rate_plot = RatePlot(self.history)
        self.plots = (self.latency_plot, self.av_plot, self.rate_plot)
        self.span_switch = SpanSwitch(current=self.latency_plot.span_s)
        self.span_switch.span_changed.connect(self.set_plot_span)
        self.latency_plot.set_corner(self.span_switch)
        if self.gui_prefs.get("plot_span") in SPANS:  # the span chosen last time
            for plot in self.plots:
                plot.set_span(self.gui_prefs["plot_span"])
            self.span_switch.set_span(self.gui_prefs["plot_span"])
        plots.addWidget(self.latency_plot, 5)
        plots.addWidget(self.av_plot, 3)
        plots.addWidget(self.rate_plot, 3)
        pw = QWidget()
        pw.setLayout(plots)
        pw.setMinimumHeight(190)
        pw.setMaximumHeight(240)
        ml.addWidget(pw, 2)
        split.addWidget(mid)
        # right: tabs
        self.tabs = QTabWidget()
        self.tabs.setMinimumWidth(370)
        self.toggles = LiveControls(self.settings)
        self.toggles.option_changed.connect(self.set_option)
        self.toggles.reference_chosen.connect(self.controller.set_reference)
        self.toggles.reference_cleared.connect(lambda: self.controller.set_reference(None))
        self.tabs.addTab(self._scroll(self.toggles), "Live")
        self.tabs.addTab(self._scroll(self._output_panel()), "Output")
        self.models = ModelsPanel(self.controller.jobs)
        self.models.models_changed.connect(lambda: self.controller.load_models())
        self.tabs.addTab(self.models, "Models")
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 0)
        split.setSizes([262, 808, 410])
        outer.addWidget(split, 1)
        self.setCentralWidget(root)
        self._status_bar()
        quit_action = QAction("Quit", self)
        quit_action.setShortcut(QKeySequence.Quit)
        quit_action.triggered.connect(self.close)
        self.addAction(quit_action)

    def _scroll(self, w: QWidget) -> QScrollArea:
        sa = QScrollArea()
        sa.setWidgetResizable(True)
        box = QWidget()
        bl = QVBoxLayout(box)
        bl.setContentsMargins(10, 6, 10, 10)
        bl.addWidget(w)
        sa.setWidget(box)
        return sa

    def _top_bar(self) -> QWidget:
        bar = QFrame()
        bar.setObjectName("Card")
        lay = QHBoxLayout(bar)
        lay.setContentsMargins(14, 8, 10, 8)
        lay.setSpacing(10)
        logo = QLabel("◐  Mirage")
        logo.setObjectName("Title")
        logo.setStyleSheet(f"color: {theme.TEXT}; font-size: 15pt; font-weight: 800;")
        lay.addWidget(logo)
        lay.addSpacing(18)
        lay.addWidget(_muted("Camera"))
        self.camera = QComboBox()
        self.camera.setMinimumWidth(210)
        self.camera.activated.connect(self._camera_chosen)
        lay.addWidget(self.camera)
        lay.addSpacing(6)
        lay.addWidget(_muted("Output"))
        self.destination = QComboBox()
        for text, key in DESTINATIONS:
            self.destination.addItem(text, key)
        pinned = self.fixed_outputs[0] if self.fixed_outputs and isinstance(self.fixed_outputs[0], str) else None
        self.destination.setCurrentIndex(max(0, self.destination.findData(pinned or self.gui_prefs["output"])))
        self.destination.currentIndexChanged.connect(self._destination_changed)
        lay.addWidget(self.destination)
        lay.addStretch(1)
        lay.addWidget(_muted("View"))
        self.view_group = QButtonGroup(self)
        self.view_output = QPushButton("Output")
        self.view_sbs = QPushButton("Side by side")
        for b, mode in ((self.view_output, "output"), (self.view_sbs, "side_by_side")):
            b.setCheckable(True)
            b.setProperty("mode", mode)
            self.view_group.addButton(b)
            lay.addWidget(b)
        self.view_group.setExclusive(True)
        (self.view_sbs if self.gui_prefs.get("view") == "side_by_side" else self.view_output).setChecked(True)
        self.controller.set_view(self.gui_prefs.get("view", "output")
                                 if self.gui_prefs.get("view") in ("output", "side_by_side") else "output")
        self.view_group.buttonClicked.connect(lambda b: self.set_view(b.property("mode")))
        lay.addSpacing(6)
        self.pick_faces_btn = QPushButton("Pick faces")
        self.pick_faces_btn.setCheckable(True)
        self.pick_faces_btn.setToolTip("While on, a click on a face in the preview gives that person the source "
                                       "face chosen in the picker (people not picked are not swapped)")
        lay.addWidget(self.pick_faces_btn)
        self.clear_map_btn = QPushButton("Clear face mapping")
        self.clear_map_btn.setToolTip("With Pick faces on, click a face in the preview to give that person the "
                                      "chosen source face; this gives everyone swapped the one source face again")
        self.clear_map_btn.setEnabled(False)
        self.clear_map_btn.clicked.connect(self.controller.clear_face_map)
        lay.addWidget(self.clear_map_btn)
        lay.addSpacing(12)
        self.start_btn = QPushButton("Start")
        self.start_btn.setObjectName("Primary")
        self.start_btn.setMinimumWidth(110)
        self.start_btn.clicked.connect(self.toggle_running)
        lay.addWidget(self.start_btn)
        return bar

    def _engine_panel(self) -> QGroupBox:
        """"Engine: this computer / remote server" with the server's address and token."""
        s = self.settings
        box = QGroupBox("Engine")
        fl = QFormLayout(box)
        fl.setHorizontalSpacing(14)
        fl.setVerticalSpacing(9)
        self.engine_local = QRadioButton("This computer")
        self.engine_remote = QRadioButton("Remote server")
        self.engine_local.setToolTip("The models run here, on this computer's CPU or GPU")
        self.engine_remote.setToolTip("The camera goes to a `mirage serve` server; its swapped video comes back "
                                      "to the virtual camera and the preview")
        self.engine_group = QButtonGroup(self)
        row = QHBoxLayout()
        for b in (self.engine_local, self.engine_remote):
            self.engine_group.addButton(b)
            row.addWidget(b)
        row.addStretch(1)
        (self.engine_remote if s.engine_mode == "remote" else self.engine_local).setChecked(True)
        self.engine_group.buttonClicked.connect(lambda b: self._engine_mode_chosen(
            "remote" if b is self.engine_remote else "local"))
        fl.addRow(row)
        self.remote_url = QLineEdit(s.remote_url)
        self.remote_url.setPlaceholderText("https://host:8443")
        self.remote_url.setToolTip("The address of the `mirage serve` server")
        self.remote_url.editingFinished.connect(self._remote_url_edited)
        fl.addRow("Server", self.remote_url)
        self.token_file = FileChooser("The token file (from `mirage serve token`)", "All files (*)")
        self.token_file.set_path(s.remote_token_file)
        self.token_file.setToolTip("A file holding the token that `mirage serve token` printed")
        self.token_file.path_changed.connect(self._token_file_chosen)
        fl.addRow("Token file", self.token_file)
        paste = QHBoxLayout()
        self.token_paste = QLineEdit()
        self.token_paste.setEchoMode(QLineEdit.Password)
        self.token_paste.setPlaceholderText("or paste a token here")
        self.token_paste.setToolTip("Saved to a file only you can read, in Mirage's config folder; never in the "
                                    "settings file")
        self.token_paste.returnPressed.connect(self._save_pasted_token)
        paste.addWidget(self.token_paste, 1)
        self.token_save = QPushButton("Save")
        self.token_save.setObjectName("Small")
        self.token_save.clicked.connect(self._save_pasted_token)
        paste.addWidget(self.token_save)
        fl.addRow("", paste)
        self.remote_check = QLabel()  # one line: what is wrong with the address or the token, and the fix
        self.remote_check.setWordWrap(True)
        self.remote_check.setStyleSheet(f"color: {theme.RED};")
        self.remote_check.hide()
        fl.addRow(self.remote_check)
        self.remote_state = QLabel()
        self.remote_state.setWordWrap(True)
        self.remote_state.hide()
        fl.addRow(self.remote_state)
        hint = QLabel("With a remote server the Live tab's Face swap, Max faces, Colour match, Mouth mask "
                      "and Smoothing go to the server; the others apply on this computer only and are off "
                      "meanwhile. While the server is away your camera goes out unswapped (local pass-through).")
        hint.setWordWrap(True)
        hint.setObjectName("Muted")
        fl.addRow(hint)
        self._engine_mode = s.engine_mode
        self._show_engine_mode(s.engine_mode)
        return box

    def _output_panel(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._engine_panel())
        box = QGroupBox("Virtual camera")
        fl = QFormLayout(box)
        fl.setHorizontalSpacing(14)
        fl.setVerticalSpacing(9)
        s = self.settings
        self.backend = QComboBox()
        for text, key in BACKENDS:
            self.backend.addItem(text, key)
        i = self.backend.findData(s.vcam_backend)
        if i < 0:
            self.backend.addItem(s.vcam_backend, s.vcam_backend)
            i = self.backend.count() - 1
        self.backend.setCurrentIndex(i)
        self.backend.currentIndexChanged.connect(
            lambda _: self._output_option({"vcam_backend": self.backend.currentData()}))
        fl.addRow("Backend", self.backend)
        self.resolution = QComboBox()
        for text, (rw, rh) in RESOLUTIONS:
            self.resolution.addItem(text, f"{rw}x{rh}")
        cur = f"{s.output_width}x{s.output_height}"
        i = self.resolution.findData(cur)
        if i < 0:
            self.resolution.addItem(f"{s.output_width} × {s.output_height}", cur)
            i = self.resolution.count() - 1
        self.resolution.setCurrentIndex(i)
        self.resolution.currentIndexChanged.connect(self._resolution_changed)
        fl.addRow("Resolution", self.resolution)
        self.fps = QComboBox()
        for text, f in FPS_CHOICES:
            self.fps.addItem(text, f)
        i = self.fps.findData(s.output_fps)
        if i < 0:
            self.fps.addItem(f"{s.output_fps} fps", s.output_fps)
            i = self.fps.count() - 1
        self.fps.setCurrentIndex(i)
        self.fps.currentIndexChanged.connect(lambda _: self._output_option({"output_fps": int(self.fps.currentData())}))
        fl.addRow("Frame rate", self.fps)
        lay.addWidget(box)
        hint = QLabel("Changing these restarts the stream for a moment. Video-call apps see the output as "
                      "“Mirage Camera” (Linux: v4l2loopback; Windows/macOS: the OBS Virtual Camera).")
        hint.setWordWrap(True)
        hint.setObjectName("Muted")
        lay.addWidget(hint)
        self.device_label = QLabel("Not running")
        self.device_label.setWordWrap(True)
        dev = QGroupBox("In use")
        dl = QVBoxLayout(dev)
        dl.addWidget(self.device_label)
        lay.addWidget(dev)
        lay.addWidget(self._monitor_panel())
        lay.addStretch(1)
        return w

    def _monitor_panel(self) -> QGroupBox:
        """The opt-in /health and /metrics of this computer's engine (`mirage run --metrics-port`):
        loopback only, the same tokens as `mirage serve`."""
        box = QGroupBox("Monitoring")
        fl = QFormLayout(box)
        fl.setHorizontalSpacing(14)
        fl.setVerticalSpacing(9)
        p = self.gui_prefs
        self.monitor = QCheckBox("Serve /health and /metrics on 127.0.0.1")
        self.monitor.setToolTip("For Prometheus or a health check on this computer; every request needs a token "
                                "(`mirage serve token`) signed with the secret below")
        fl.addRow(self.monitor)
        self.monitor_port = QSpinBox()
        self.monitor_port.setRange(1024, 65535)
        self.monitor_port.setValue(int(p.get("monitor_port") or 9464))
        self.monitor_port.setKeyboardTracking(False)
        fl.addRow("Port", self.monitor_port)
        self.monitor_secret = FileChooser("The secret file the tokens are checked with", "All files (*)")
        self.monitor_secret.set_path(str(p.get("monitor_secret") or ""))
        self.monitor_secret.setToolTip("The secret `mirage serve token` signs with (none: MIRAGE_SERVE_SECRET)")
        fl.addRow("Secret file", self.monitor_secret)
        self.monitor_state = QLabel("Off")
        self.monitor_state.setWordWrap(True)
        self.monitor_state.setObjectName("Muted")
        fl.addRow(self.monitor_state)
        self.monitor.setChecked(bool(p.get("monitor")))
        self.monitor.toggled.connect(lambda _on: self._monitor_changed())
        self.monitor_port.valueChanged.connect(lambda _v: self._monitor_changed())
        self.monitor_secret.path_changed.connect(lambda _p: self._monitor_changed())
        self.controller.endpoints_changed.connect(self._on_endpoints)
        if self.monitor.isChecked():
            self.controller.set_endpoints(self.monitor_port.value(), self.monitor_secret.path())
        return box

    def _monitor_changed(self) -> None:
        on = self.monitor.isChecked()
        self.gui_prefs.update(monitor=on, monitor_port=self.monitor_port.value(),
                              monitor_secret=self.monitor_secret.path())
        self._remember_gui()
        if on or self.controller.endpoints is not None:
            self.monitor_state.setText("Starting…" if on else "Stopping…")
            self.controller.set_endpoints(self.monitor_port.value() if on else None, self.monitor_secret.path())

    def _on_endpoints(self, url: str, why: str) -> None:
        if why:
            self.monitor_state.setText(why)
            self.monitor_state.setStyleSheet(f"color: {theme.RED};")
            self._on_error(f"Monitoring: {why}")
        else:
            self.monitor_state.setText(f"{url}/health and /metrics (token required)" if url else "Off")
            self.monitor_state.setStyleSheet("")

    def _status_bar(self) -> None:
        sb = QStatusBar()
        self.setStatusBar(sb)
        self.sb_provider = QLabel("Provider: –")
        self.sb_fps = QLabel("– FPS")
        self.sb_output = QLabel("Output: –")
        self.sb_models = QLabel("")
        self.sb_engine = QLabel("")  # the remote link's state while the engine is a remote server
        self.sb_engine.hide()
        self.sb_adapt = QLabel("")  # the degrade ladder's level while it holds a step (yellow)
        self.sb_adapt.setStyleSheet(f"color: {theme.YELLOW};")
        self.sb_adapt.hide()
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(90)
        self.busy.setTextVisible(False)
        self.busy.hide()
        for w in (self.sb_engine, self.sb_adapt, self.sb_provider, self.sb_fps, self.sb_output, self.sb_models):
            sb.addPermanentWidget(w)
        sb.addWidget(self.busy)

    # ---- cameras and sources -------------------------------------------------------------------
    def _list_cameras(self) -> None:
        from ..vision.capture import list_cameras

        self.controller.jobs.submit(list_cameras, on_done=self._fill_cameras,
                                    on_error=lambda e: self._fill_cameras([]))
        self._fill_cameras(None)

    def _fill_cameras(self, cams) -> None:
        self.camera.blockSignals(True)
        self.camera.clear()
        if self._source is not None:
            self.camera.addItem(self._source_label or "Demo image", ("object", None))
        for cam in cams or []:
            label = cam.get("name") or f"Camera {cam.get('index')}"
            self.camera.addItem(label, ("camera", cam.get("index") if cam.get("index") is not None
                                        else cam.get("device")))
        if cams is None:
            self.camera.addItem("Looking for cameras…", ("none", None))
        elif not cams and self._source is None:
            self.camera.addItem("No camera found", ("none", None))
        self.camera.addItem("Image or video file…", ("file", None))
        want = str(self.settings.camera)  # an index ("0") or a device path ("/dev/video2")
        i = next((k for k, cam in enumerate(cams or []) if want in (str(cam.get("index")), str(cam.get("device")))),
                 None)
        i = 0 if i is None else i + (1 if self._source is not None else 0)
        if self._source is not None:
            i = 0
        self.camera.setCurrentIndex(i)
        self._camera_index = i
        self.camera.blockSignals(False)
        if cams is not None and self._autostart:
            self._autostart = False
            if self.current_source() is not None:
                self.start()

    def _camera_chosen(self, index: int) -> None:
        kind, value = self.camera.itemData(index)
        if kind == "file":
            path, _ = QFileDialog.getOpenFileName(self, "Use an image or video as the camera", str(Path.home()),
                                                  "Images and videos (*.jpg *.jpeg *.png *.bmp *.webp *.mp4 "
                                                  "*.mov *.mkv *.avi *.webm)")
            if not path:  # cancelled: back to what was chosen before
                self.camera.setCurrentIndex(min(self._camera_index, self.camera.count() - 1))
                return
            self.camera.insertItem(0, Path(path).name, ("path", path))
            self.camera.setCurrentIndex(0)
        elif kind == "camera" and value is not None:
            self.set_option("camera", str(value))
        self._camera_index = self.camera.currentIndex()
        if self.controller.running:
            self.controller.stop()
            self.start()

    def current_source(self):
        data = self.camera.currentData()
        if not data:
            return None
        kind, value = data
        if kind == "object":
            return self._source
        if kind in ("camera", "path"):
            return value
        return None

    def current_outputs(self) -> list:
        if self.fixed_outputs is not None:
            return list(self.fixed_outputs)
        return [self.destination.currentData() or "virtualcam"]

    # ---- run -----------------------------------------------------------------------------------
    def toggle_running(self) -> None:
        if self.controller.run_pending:  # a start or stop is still under way: wait for it
            return
        if self.controller.running:
            self.stop()
        else:
            self.start()

    def start(self) -> None:
        src = self.current_source()
        if src is None:
            self._on_error("No camera to start: connect one, or choose “Image or video file…”.")
            return
        if self.engine_remote.isChecked() and not self._check_remote(start=True):
            return
        self.history.clear()  # the plots show this run's figures (local and remote ones differ)
        self.latency_plot.title = REMOTE_LATENCY_TITLE if self.engine_remote.isChecked() else LatencyPlot.title
        self.start_btn.setEnabled(False)
        self.preview.set_message("Starting…")
        self.controller.start(src, self.current_outputs())

    def stop(self) -> None:
        self.start_btn.setEnabled(False)
        self.controller.stop()

    def _on_running(self, running: bool) -> None:
        self.start_btn.setEnabled(True)
        self.start_btn.setText("Stop" if running else "Start")
        self.start_btn.setObjectName("Danger" if running else "Primary")
        self.start_btn.style().unpolish(self.start_btn)
        self.start_btn.style().polish(self.start_btn)
        if not running:
            self.preview.clear()
            self.preview.set_message("Stopped", "Press Start to begin")
            self._on_remote(None)

    def _destination_changed(self, _i: int) -> None:
        self.gui_prefs["output"] = self.destination.currentData()
        self._remember_gui()
        if self.controller.running:
            self.controller.stop()
            self.start()

    def _resolution_changed(self, _i: int) -> None:
        w, h = (int(x) for x in str(self.resolution.currentData() or "0x0").split("x"))
        self._output_option({"output_width": int(w), "output_height": int(h)})

    def _output_option(self, values: dict) -> None:
        for k, v in values.items():
            self.set_option(k, v)
        self.controller.restart()

    def set_plot_span(self, seconds: float) -> None:
        """The plots show the last ``seconds`` (10 s: a run that just started fills the plot)."""
        for plot in self.plots:
            plot.set_span(seconds)
        self.span_switch.set_span(seconds)
        self.gui_prefs["plot_span"] = float(seconds)
        self._remember_gui()

    def set_view(self, mode: str) -> None:
        self.controller.set_view(mode)
        (self.view_sbs if mode == "side_by_side" else self.view_output).setChecked(True)
        self.gui_prefs["view"] = mode
        self._remember_gui()

    # ---- options and settings -----------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The engine's settings (the window keeps no copy of its own)."""
        return self.engine.settings

    def set_option(self, name: str, value: Any) -> None:
        """A control changed: checked here (a bad value is one line at once), then given to the
        engine off the Qt thread, in order with the other engine calls, and saved soon after."""
        try:
            value = config.coerce(name, value)
        except Exception as exc:
            self._on_error(str(exc))
            return
        self.controller.set_option(name, value)
        self._save_timer.start()

    def _remember_gui(self) -> None:
        self.controller.update_extra("gui", dict(self.gui_prefs))
        self._save_timer.start()

    def save_settings(self, wait: bool = False):
        """Write the engine's settings atomically (off the Qt thread unless ``wait``). Saves go
        through the serial executor after the changes made before them, so they land in order and
        each writes what the engine has by then."""
        self._save_timer.stop()
        if wait:
            return config.save(self.engine.settings)
        return self.controller.jobs.submit(lambda: config.save(self.engine.settings), serial=True,
                                           on_error=lambda e: self._on_error(f"Settings could not be saved: {e}"))

    def _on_identity_chosen(self, name: str) -> None:
        if name != self.settings.source_identity:
            self.set_option("source_identity", name)

    def _on_reference(self, path: str) -> None:
        self.toggles.reference.set_path(path)
        if path:
            self.toggles.show_reference(Path(path).name, f"Only the person in {Path(path).name} is swapped.")
        else:
            self.toggles.show_reference(None)

    def _face_clicked(self, u: float, v: float) -> None:
        """A click on the preview maps a person only in "Pick faces" mode: a click to focus the window
        never changes who is swapped."""
        if not self.pick_faces_btn.isChecked():
            self.last_notice = "To give a person their own source face, turn on 'Pick faces', then click on their face"
            self.statusBar().showMessage(self.last_notice, 6000)
            return
        self.controller.map_face_at(u, v)

    def _on_face_map(self, labels: list) -> None:
        self.clear_map_btn.setEnabled(bool(labels))
        self.clear_map_btn.setToolTip("Mapped: " + ", ".join(labels) if labels else
                                      "With Pick faces on, click a face in the preview to give that person the "
                                      "chosen source face")
        self.statusBar().showMessage(f"Face mapping: {', '.join(labels)} (the others are not swapped)" if labels
                                     else "Face mapping cleared", 6000)

    # ---- engine → window ------------------------------------------------------------------------
    def _on_models_loaded(self, st) -> None:
        if not self.controller.running and not self.controller.run_pending:
            self.preview.set_message("Press Start to begin",
                                     "Pick a source face on the left, then start the camera.")
        name = self.settings.source_identity
        if name and not self.engine.identity:
            self.picker.active = name
            self.picker.activate(name, ask=False)

    def _on_status(self, st) -> None:
        self.sb_models.setText(f"Detector: {st.detector} · Swapper: {st.swapper}")
        if self.controller.remote is not None:  # the remote stream's outputs come with its snapshots
            return
        self.sb_provider.setText(f"Provider: {_provider(st.provider)}")
        self.sb_output.setText("Output: " + (", ".join(st.outputs) if st.running and st.outputs else "–"))
        self.device_label.setText("\n".join(st.outputs) if st.running and st.outputs else "Not running")
        missing = any("missing" in p or "corrupt" in p for p in st.passthrough)
        self.banner.set_action("Download models" if missing else None)
        self._show_adapt(st.to_dict(), (self.controller.last_snapshot.get("gauges") or {}).get("adapt.level"))

    def _on_snapshot(self, snap: dict) -> None:
        st = snap.get("status") or {}
        if st.get("running"):
            self.history.add(snap)
        for plot in self.plots:
            plot.update()
        self._show_adapt(st, (snap.get("gauges") or {}).get("adapt.level"))
        health = dict(snap.get("health") or {})
        self.banner.set_health(health)
        missing = any("missing" in p or "corrupt" in p for p in st.get("passthrough", []))
        self.banner.set_action("Download models" if missing else None)
        fps = (snap.get("gauges") or {}).get("fps")
        self.sb_fps.setText(f"{fps:.1f} FPS" if st.get("running") and isinstance(fps, (int, float)) else "– FPS")
        self.sb_provider.setText(f"Provider: {_provider(st.get('provider', '–'))}")
        self.sb_output.setText("Output: " + (", ".join(st.get("outputs", [])) if st.get("running") else "–"))
        if st.get("provider") == "remote":
            self.device_label.setText("\n".join(st.get("outputs", [])) or "Preview only")

    def _show_adapt(self, status: dict, level) -> None:
        """The degrade ladder's step (the status' "adapt" issue) and level, beside "Adapt to load"
        and in the status bar."""
        running = bool(status.get("running"))
        reason = next((i.get("message", "") for i in status.get("issues") or [] if i.get("source") == "adapt"), "")
        level = int(level) if isinstance(level, (int, float)) and running else 0
        self.toggles.show_adapt((running, level, reason))
        self.sb_adapt.setText("Adapted to load" + (f": level {level}" if level else ""))
        self.sb_adapt.setToolTip(reason)
        self.sb_adapt.setVisible(bool(running and reason))

    def _on_error(self, text: str) -> None:
        self.last_error = text
        self.statusBar().showMessage(text, 15000)
        self.notice_bar.add(text)
        if not self.controller.running and not self.controller.run_pending:
            self.start_btn.setEnabled(True)

    # ---- the engine: this computer or a remote server --------------------------------------------
    def _show_engine_mode(self, mode: str) -> None:
        remote = mode == "remote"
        for w in (self.remote_url, self.token_file, self.token_paste, self.token_save):
            w.setEnabled(remote)
        self.toggles.set_remote(FORWARDED if remote else None)
        if not remote:
            self.remote_check.hide()
            self.remote_state.hide()

    def _engine_mode_chosen(self, mode: str) -> None:
        if mode == self._engine_mode:
            return
        self._engine_mode = mode
        self.set_option("engine_mode", mode)
        self._show_engine_mode(mode)
        if mode == "remote":
            self._check_remote()
        if self.controller.running:  # the stream moves to the chosen engine
            self.controller.stop()
            self.start()

    def _remote_url_edited(self) -> None:
        url = self.remote_url.text().strip()
        if url != self.settings.remote_url:
            self.set_option("remote_url", url)
        self._check_remote(url=url)

    def _token_file_chosen(self, path: str) -> None:
        self.set_option("remote_token_file", path)
        self._check_remote(token_file=path)

    def _save_pasted_token(self) -> None:
        text = self.token_paste.text()
        self.token_paste.clear()  # never kept in the widget either
        try:
            path = save_pasted_token(text)
        except Exception as exc:
            self._say_remote(str(exc))
            return
        self.token_file.set_path(str(path))
        self._token_file_chosen(str(path))

    def _check_remote(self, url: str | None = None, token_file: str | None = None, start: bool = False) -> bool:
        """The address and token file as one line naming the fix (shown under them, and as the
        window's error when a start is refused for it); True when both are usable."""
        url = self.remote_url.text().strip() if url is None else url
        token_file = self.token_file.path() if token_file is None else token_file
        try:
            check_url(url)
            read_token(token_file)
        except Exception as exc:
            self._say_remote(str(exc), start)
            return False
        self._say_remote("")
        return True

    def _say_remote(self, text: str, as_error: bool = False) -> None:
        self.remote_check.setText(text)
        self.remote_check.setVisible(bool(text))
        if text and as_error:
            self._on_error(f"Remote server: {text}")

    def _on_remote(self, health) -> None:
        """The remote link's state (connected / connecting / server away — local pass-through /
        reconnecting in N s) beside the controls and in the status bar, in its colour."""
        if not health:
            self.sb_engine.hide()
            self.remote_state.hide()
            return
        color = theme.LEVEL_COLORS.get(health.get("level"), theme.MUTED)
        text = "; ".join(health.get("reasons") or [])
        for lab in (self.sb_engine, self.remote_state):
            lab.setText(text)
            lab.setStyleSheet(f"color: {color};")
            lab.show()

    def show_models(self) -> None:
        self.tabs.setCurrentWidget(self.models)

    # ---- closing ------------------------------------------------------------------------------
    def closeEvent(self, event) -> None:  # noqa: N802
        self.hide()  # gone at once, even while a running engine call (a model load) is waited for
        self.models.cancel()
        self.controller.shutdown()
        try:  # after the queued saves (shutdown waited for them or cancelled them): this one is last
            self.save_settings(wait=True)
        except Exception as exc:  # closing must not fail
            log.warning("settings could not be saved: %s", exc)
        super().closeEvent(event)


def _muted(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setObjectName("Muted")
    return lab


def _provider(p: str) -> str:
    return {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT",
            "DmlExecutionProvider": "DirectML", "CoreMLExecutionProvider": "CoreML"}.get(p, p or "–")
