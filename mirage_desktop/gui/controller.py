"""The window's side of the engine API: every engine call off the Qt thread, results as signals.

The engine never imports Qt; this object is the only place the two meet. Calls that change
the engine go through one serial executor (so they apply in the order the user made them);
the preview gets frames through :class:`~mirage_desktop.gui.preview.FrameFeed`; metrics are
snapshotted a few times a second on a pool thread.

Only start, stop and restart report ``running_changed``, and only once none of them is
still queued or running (:attr:`EngineController.run_pending`), so the window never offers
Start while a start is still opening the camera.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal


from ..config import Settings
from ..errors import MirageError, VirtualCameraError
from .jobs import Jobs
from .preview import FrameFeed
from .qtcompat import emit

log = logging.getLogger(__name__)


_OPTIONAL_STAGES = {"enable_enhancer": "enhancer:", "enable_voice": "voice:"}


class _Packet:
    """A frame for the preview (what :meth:`FrameFeed.on_packet` reads of an engine packet)."""

    __slots__ = ("frame", "original")

    def __init__(self, frame, original=None):
        self.frame, self.original = frame, original


def _words(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MirageError) else f"{type(exc).__name__}: {exc}"


class EngineController(QObject):
    status_changed = Signal(object)  # EngineStatus
    running_changed = Signal(bool)
    snapshot_ready = Signal(dict)
    option_applied = Signal(str, object)
    option_refused = Signal(str, object)  # a change the engine refused: the setting and the value it kept
    identity_changed = Signal(str)
    reference_changed = Signal(str)  # the photo whose person alone is swapped; "" = any face
    face_map_changed = Signal(list)  # the face map's labels (the identities given), [] = one face for all
    models_loaded = Signal(object)  # EngineStatus
    remote_changed = Signal(object)  # the remote stream's health ({"level", "reasons"}) or None: not remote
    endpoints_changed = Signal(str, str)  # the monitoring endpoints' address ("" = off), and why not (or "")
    error = Signal(str)
    notice = Signal(str)

    def __init__(self, engine, parent: QObject | None = None, metrics_interval_ms: int = 250):
        super().__init__(parent)
        self.engine = engine
        self.jobs = Jobs(self)
        self.feed = FrameFeed(self)
        # the input frame is copied for the preview only while the view is side by side
        self._sub = engine.subscribe_frames(self.feed.on_packet, want_original=False)
        self._want_original = False
        self._models_lock = threading.Lock()
        self._run_pending = 0  # start/stop/restart jobs queued or running (counted on the Qt thread)
        self.models_ready = threading.Event()
        self._snap_inflight = False
        self._closed = False
        self.last_snapshot: dict = {}
        self.last_start: tuple[Any, list] | None = None
        self._unapplied: dict = {}  # changes queued for the engine: name -> (number, value)
        self._change_no = 0
        self.reference_photo = ""  # the photo of the person alone swapped ("" = any face)
        self.remote = None  # the running RemoteRun while the engine is a remote server (gui/remote.py)
        self._remote_identity = None  # the consented identity whose photo the server gets
        self._remote_prev: dict = {}
        self._remote_said: str | None = None  # the refusal already said (once per cause)
        self.endpoints = None  # the opt-in /health and /metrics (serve/app.py start_endpoints) while on
        self.timer = QTimer(self)
        self.timer.setInterval(metrics_interval_ms)
        self.timer.timeout.connect(self.poll_metrics)
        self.timer.start()

    # ---- models ----------------------------------------------------------------------------
    def _load_models_now(self):
        with self._models_lock:
            st = self.engine.load_models()
            self.models_ready.set()
            return st

    def ensure_models(self) -> None:
        """On a worker thread: load the models unless that already happened (or is happening:
        a caller that waits for a load in progress does not load them a second time)."""
        if self.models_ready.is_set():
            return
        with self._models_lock:
            if not self.models_ready.is_set():
                self.engine.load_models()
                self.models_ready.set()

    def load_models(self):
        """(Re)load models; a running stream picks them up from the next frame, no restart needed."""

        def job():
            self._load_models_now()
            return self.engine.status()

        def done(st):
            emit(self.models_loaded, st)
            emit(self.status_changed, st)

        return self.jobs.submit(job, serial=True, on_done=done, on_error=self._fail)

    # ---- run ---------------------------------------------------------------------------------
    @property
    def run_pending(self) -> bool:
        """A start, stop or restart is queued or running (the window ignores Start/Stop meanwhile)."""
        return self._run_pending > 0

    def _run_job(self, fn, *args, then=None):
        """Submit a job that starts or stops the stream. When it ends (done or failed) and no
        other such job is pending, ``running_changed`` reports whether the stream runs."""
        if self.jobs.closed:
            return self.jobs.submit(fn, *args)  # refused: an already failed future
        self._run_pending += 1

        def report():
            emit(self.status_changed, self.engine.status())
            emit(self.remote_changed, self.remote.health() if self.remote is not None else None)
            if not self._run_pending:
                emit(self.running_changed, self.running)

        def done(res):
            self._run_pending = max(0, self._run_pending - 1)
            try:
                if then is not None:
                    then(res)
                elif isinstance(res, str) and res:
                    emit(self.notice, res)
            finally:
                report()

        def failed(exc):
            self._run_pending = max(0, self._run_pending - 1)  # first: the window reads it on error
            log.warning("engine call failed: %s", exc)
            try:
                emit(self.error, _words(exc))
            finally:
                report()

        return self.jobs.submit(fn, *args, serial=True, on_done=done, on_error=failed)

    def _start_now(self, source, outputs: list) -> str | None:
        """Start; if the virtual camera cannot open, keep the preview going and say why. Any
        other device error (the webcam is busy or gone) fails the start."""
        self.ensure_models()
        note = None
        try:
            self.engine.start(source=source, outputs=outputs)
        except VirtualCameraError as exc:
            rest = [o for o in outputs if not (isinstance(o, str) and o in ("virtualcam", "vcam", ""))]
            if len(rest) == len(outputs):
                raise
            self.engine.start(source=source, outputs=rest or ["null"])
            note = f"Virtual camera unavailable — preview only. {exc}"
        return note

    @property
    def running(self) -> bool:
        """A stream runs: the local engine's, or the remote server's."""
        return self.engine.running or self.remote is not None

    @property
    def remote_mode(self) -> bool:
        return self.engine.settings.engine_mode == "remote"

    def _start_any(self, source, outputs: list) -> str | None:
        return self._start_remote(source, outputs) if self.remote_mode else self._start_now(source, outputs)

    def _stop_any(self) -> None:
        self._stop_remote()
        self.engine.stop()

    def start(self, source, outputs: list):
        self.last_start = (source, list(outputs))
        return self._run_job(self._start_any, source, list(outputs))

    def stop(self):
        return self._run_job(self._stop_any)

    def restart(self):
        """Stop and start again with the last source (for settings that are read at start)."""
        if self.last_start is None or not self.running:
            return None
        src, outs = self.last_start

        def job():
            self._stop_any()
            return self._start_any(src, outs)

        return self._run_job(job)

    # ---- the remote server (`mirage run --remote` from the window) ---------------------------
    def _start_remote(self, source, outputs: list) -> str | None:
        """Camera -> `mirage serve` -> virtual camera and preview (gui/remote.py), with local
        pass-through while the server is away. The address and token are checked first (a bad one
        fails the start with its fix); the photo goes only with a consented identity."""
        from ..outputs.sinks import check_sink, make_sink
        from ..serve import require_serve_extra
        from ..serve.remote import RemoteRunner, open_audio
        from ..vision.capture import check_source, open_source
        from .remote import OpenedSink, RemoteRun, check_remote, identity_photo, make_link

        if self.remote is not None:
            raise MirageError("the remote engine is already running", "stop it first")
        s = self.engine.settings
        url, token = check_remote(s.remote_url, s.remote_token_file)
        require_serve_extra()
        src = check_source(source) if not isinstance(source, (str, int)) else open_source(
            source, width=s.capture_width, height=s.capture_height, fps=s.capture_fps)
        opened, note = [], None
        try:
            if hasattr(src, "open") and getattr(src, "cap", "n/a") is None:
                src.open()  # a missing camera now, with its fix
            size = getattr(src, "size", None) or (s.capture_width, s.capture_height)
            fps = getattr(src, "fps", None) or s.capture_fps or 30
            for o in outputs or ["virtualcam"]:
                sink = check_sink(o) if not isinstance(o, str) else make_sink(
                    o, backend=s.vcam_backend, width=s.output_width, height=s.output_height, fps=s.output_fps)
                try:
                    sink.open(*size, fps)
                except VirtualCameraError as exc:
                    if not (isinstance(o, str) and o in ("virtualcam", "vcam", "")):
                        raise
                    note = f"Virtual camera unavailable — preview only. {exc}"
                    continue
                opened.append(OpenedSink(sink))
            ident = self._remote_identity
            photo = identity_photo(ident) if ident is not None and getattr(ident, "consent", False) else None
            link = make_link(url, token, photo, fps, {n: getattr(s, n) for n in self.forwarded_options()})
            runner = RemoteRunner(src, opened, link)
            try:
                streams = open_audio(link, s)
            except Exception as exc:  # a sound device that cannot open: the video still goes
                log.warning("remote engine: no audio: %s", exc)
                streams = []
            run = RemoteRun(link, runner, streams, opened, on_frame=self._remote_frame)
        except BaseException:
            for sk in opened:
                try:
                    sk.close()
                except Exception:
                    pass
            try:
                src.close()
            except Exception:
                pass
            raise
        self._remote_prev, self._remote_said = {}, None
        self.remote = run.start()
        log.warning("remote engine: %s -> %s", url, ", ".join(sk.describe() for sk in opened) or "preview")
        return note

    def _stop_remote(self) -> None:
        run, self.remote = self.remote, None
        if run is not None:
            run.stop()

    def _remote_frame(self, kind: str, frame) -> None:
        self.feed.on_packet(_Packet(frame))  # side by side shows the output alone: the runner keeps no original

    @staticmethod
    def forwarded_options() -> tuple:
        """The live options a remote server takes on its control channel; the others apply on
        this computer only."""
        from .remote import FORWARDED

        return FORWARDED

    # ---- preview -----------------------------------------------------------------------------
    def set_view(self, mode: str) -> None:
        """Preview mode; the engine copies each input frame only while side by side shows it."""
        self.feed.set_mode(mode)
        want = mode == "side_by_side"
        if want == self._want_original or self._closed:
            return
        self._want_original = want
        # in order with the other engine calls, and never on the Qt thread (a start holds the
        # engine's lock while it opens the camera)
        self.jobs.submit(self.engine.set_frame_subscription, self._sub, want, serial=True,
                         on_error=lambda exc: log.warning("preview subscription: %s", exc))

    # ---- live options ------------------------------------------------------------------------
    def _queued(self, key, value) -> int:
        self._change_no += 1
        self._unapplied[key] = (self._change_no, value)
        return self._change_no

    def _applied(self, key, no: int) -> None:
        if self._unapplied.get(key, (None,))[0] == no:
            self._unapplied.pop(key, None)

    def set_option(self, name: str, value: Any):
        no = self._queued(name, value)

        def job():
            try:
                self.engine.set_option(name, value)
            finally:
                self._applied(name, no)
            st = self.engine.status()
            why = ""
            if name in _OPTIONAL_STAGES and getattr(self.engine.settings, name, False) is True:
                # a stage that could not turn on says why in the status, not by raising
                prefix = _OPTIONAL_STAGES[name]
                why = next((p for p in st.problems if p.startswith(prefix)), "")
            return self.engine.settings, st, why

        def done(res):
            settings, st, why = res
            run = self.remote
            if run is not None and name in self.forwarded_options():
                run.link.set_options({name: getattr(settings, name, value)})
            emit(self.option_applied, name, getattr(settings, name, value))
            emit(self.status_changed, st)
            if why:
                emit(self.error, why)

        def refused(exc):
            # the engine kept its value: the control shows it again, unless a later change of the
            # same setting is still on its way (that one decides what the control shows)
            if name not in self._unapplied and hasattr(self.engine.settings, name):
                emit(self.option_refused, name, getattr(self.engine.settings, name))
            self._fail(exc)

        return self.jobs.submit(job, serial=True, on_done=done, on_error=refused)

    def update_extra(self, key: str, value: Any):
        """Set ``settings.extra[key]`` — read, changed and written back on the engine's thread,
        in order with the other changes, so two quick changes of different keys both stay."""

        no = self._queued(("extra", key), value)

        def job():
            try:
                self._set_extra(key, value)
            finally:
                self._applied(("extra", key), no)

        return self.jobs.submit(job, serial=True, on_error=self._fail)

    def _set_extra(self, key: str, value: Any) -> None:
        extra = dict(self.engine.settings.extra or {})
        extra[key] = value
        self.engine.set_option("extra", extra)

    # ---- reference person ------------------------------------------------------------------
    def set_reference(self, photo: str | None):
        """Swap only the person in ``photo`` (None: any face again). The photo's embedding is
        made and handed to the engine off the Qt thread; ``reference_changed`` says what is used."""

        def job():
            if photo is None:
                self.engine.set_reference(None)
                self.reference_photo = ""
                return ""
            self.ensure_models()
            if self.engine.analyzer is None or self.engine.analyzer.recognizer is None:
                raise MirageError("a reference person needs the recognition model (w600k_r50), which is missing",
                                  "download buffalo_l in the Models tab")
            ident = self.engine.build_identity([photo], "reference")
            if ident.embedding is None:
                raise MirageError(f"no usable face embedding in {Path(str(photo)).name}",
                                  "use a clear, frontal photo of the person")
            self.engine.set_reference(ident.embedding)
            self.reference_photo = str(photo)
            return str(photo)

        def done(path):
            emit(self.reference_changed, path)
            emit(self.status_changed, self.engine.status())

        def failed(exc):
            self._fail(exc)
            emit(self.reference_changed, self.reference_photo)  # the one still in use

        return self.jobs.submit(job, serial=True, on_done=done, on_error=failed)

    # ---- face mapping ------------------------------------------------------------------------
    def map_face_at(self, u: float, v: float):
        """Give the person at (``u``, ``v``) of the live picture (fractions of the frame) the
        identity chosen in the picker (its consent was checked when it was chosen). Off the Qt
        thread: the engine embeds that face from the next frame."""
        if self.remote is not None:  # the server swaps with the one face it was sent
            emit(self.error, "Face mapping works with this computer's engine, not with the remote server — "
                             "choose 'This computer' in the Output tab to map faces")
            return None

        def job():
            self.engine.pick_face(float(u), float(v))
            return [label for *_, label in self.engine.face_sources]

        def done(labels):
            emit(self.face_map_changed, labels)
            emit(self.status_changed, self.engine.status())

        return self.jobs.submit(job, serial=True, on_done=done, on_error=self._fail)

    def clear_face_map(self):
        """No face mapping: one source face for everyone swapped again."""

        def done(_):
            emit(self.face_map_changed, [])
            emit(self.status_changed, self.engine.status())

        return self.jobs.submit(self.engine.clear_face_map, serial=True, on_done=done, on_error=self._fail)

    # ---- identities --------------------------------------------------------------------------
    def set_identity(self, identity):
        """Give the engine an identity; refused unless the person confirmed consent for it."""
        if identity is not None and not getattr(identity, "consent", False):
            emit(self.error, f"“{identity.name}” has no consent confirmation, so it is not used")
            return None

        def job():
            self.engine.set_identity(identity)
            self._remote_identity = identity  # its photo goes to a remote server (consent checked above)
            run = self.remote
            if run is not None:
                from .remote import identity_photo

                run.link.send_photo(identity_photo(identity) if identity is not None else None,
                                    lambda exc: emit(self.error, f"The remote server did not take the face: {exc}"))

        def done(_):
            emit(self.identity_changed, identity.name if identity is not None else "")
            emit(self.status_changed, self.engine.status())

        return self.jobs.submit(job, serial=True, on_done=done, on_error=self._fail)

    def analyse_photos(self, sources: list, name: str | None, on_done, on_error=None):
        """Check photos and build an identity off the Qt thread → on_done((reports, identity|None, why))."""
        return self.jobs.submit(self._analyse, list(sources), name, on_done=on_done,
                                on_error=on_error or self._fail)

    def _analyse(self, sources: list, name: str | None):
        from ..vision.identity import IdentityBuilder, PhotoReport, QualityCheck

        self.ensure_models()
        analyzer = self.engine.analyzer
        builder = IdentityBuilder(analyzer)
        reports = []
        for s in sources:
            label = str(s) if not hasattr(s, "shape") else "image"
            try:
                reports.append(builder.analyse_photo(s, label))
            except MirageError as exc:
                reports.append(PhotoReport(label, "", 0, None, [QualityCheck("readable", False, 0.0, str(exc))]))
        good = [r for r in reports if r.passed]
        if not good:
            return reports, None, "no usable face: " + "; ".join(
                f"{Path(r.source).name}: {r.summary()}" for r in reports)
        if analyzer.recognizer is None:
            return reports, None, ("the face is fine, but the recognition model (w600k_r50) is missing — "
                                   "download buffalo_l in the Models tab")
        nm = name or Path(str(good[0].source)).stem
        ident = builder.build_from_reports(reports, nm)
        return reports, ident, ""

    # ---- metrics -----------------------------------------------------------------------------
    def poll_metrics(self) -> None:
        if self._snap_inflight or self._closed:
            return
        if self.remote is not None:
            self._poll_remote(self.remote)
            return
        self._snap_inflight = True

        def done(snap):
            self._snap_inflight = False
            self.last_snapshot = snap
            emit(self.snapshot_ready, snap)

        def failed(exc):
            self._snap_inflight = False
            log.debug("snapshot failed: %s", exc)

        self.jobs.submit(self.engine.snapshot, on_done=done, on_error=failed, track=False)

    def _poll_remote(self, run) -> None:
        """The remote stream's figures and health (on the Qt thread: they are counters and the
        link's state, nothing that blocks). A refusal (a bad token: 401) is said once as an error;
        a runner that ended (the camera failed) stops the stream."""
        if not run.alive and not self.run_pending:
            err = run.error
            if err is not None:
                emit(self.error, f"The remote stream stopped: {_words(err)}")
            self.stop()
            return
        snap = run.snapshot(self._remote_prev)
        self._remote_prev = snap
        self.last_snapshot = snap
        link = run.link
        if link.state == "refused" and link.error and link.error != self._remote_said:
            self._remote_said = link.error
            fix = ("print a new token on the server (`mirage serve token --ttl 8h`) and choose its file"
                   if link.error.startswith("401") else "check the photo's consent and the server's log")
            emit(self.error, f"The remote server refused the session ({link.error}): {fix}")
        emit(self.snapshot_ready, snap)
        emit(self.remote_changed, snap["health"])

    # ---- monitoring endpoints (`mirage run --metrics-port` from the window) ---------------------
    def set_endpoints(self, port: int | None, secret_file: str = ""):
        """Serve this computer's engine's /health and /metrics on 127.0.0.1:``port`` (the
        tokens of ``secret_file`` or MIRAGE_SERVE_SECRET), or stop them (None). Off the Qt thread;
        ``endpoints_changed(url, why)`` says what came of it."""

        def job():
            self._stop_endpoints()
            if port is None:
                return ""
            from ..serve.app import start_endpoints

            try:
                self.endpoints = start_endpoints(self.engine, int(port), secret_file or None)
            except OSError as exc:
                raise MirageError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc})",
                                  "choose another port") from None
            return self.endpoints.url

        def done(url):
            emit(self.endpoints_changed, url, "")

        def failed(exc):
            log.warning("monitoring endpoints: %s", exc)
            emit(self.endpoints_changed, "", _words(exc))

        if self._closed:
            return None
        return self.jobs.submit(job, serial=True, on_done=done, on_error=failed)

    def _stop_endpoints(self) -> None:
        ep, self.endpoints = self.endpoints, None
        if ep is not None:
            ep.stop()

    # ---- errors and shutdown -----------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        log.warning("engine call failed: %s", exc)
        emit(self.error, _words(exc))
        emit(self.status_changed, self.engine.status())

    def shutdown(self) -> None:
        """Stop the stream and the helper threads; safe to call twice. Pool jobs (analysis,
        snapshots) are cancelled or left to end on their own; only the engine calls already
        queued are waited for, so the engine is stopped after them."""
        if self._closed:
            return
        self._closed = True
        self.timer.stop()
        try:
            self.engine.unsubscribe_frames(self._sub)
        except Exception:
            pass
        self.jobs.shutdown(wait=True, wait_pool=False)
        try:
            self._stop_remote()
        except Exception as exc:
            log.warning("stopping the remote engine failed: %s", exc)
        try:
            self._stop_endpoints()
        except Exception as exc:
            log.warning("stopping the monitoring endpoints failed: %s", exc)
        try:
            self.engine.stop()
        except Exception as exc:
            log.warning("stopping the engine failed: %s", exc)
        # changes made just before closing whose engine call was cancelled: into the settings
        # all the same (the stream is stopped), so the window's last save keeps them
        for key, (_no, value) in sorted(self._unapplied.items(), key=lambda kv: kv[1][0]):
            try:
                if isinstance(key, tuple):
                    self._set_extra(key[1], value)
                else:
                    self.engine.set_option(key, value)
            except Exception as exc:
                log.warning("setting %s could not be kept: %s", key, exc)
        self._unapplied.clear()
        self.feed.close()

    @property
    def settings(self) -> Settings:
        return self.engine.settings
