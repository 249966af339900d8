"""The engine API: what the GUI, the CLI and scripts talk to. It never imports Qt.

    engine = Engine(settings)
    engine.load_models()                      # never raises for a missing model: see status()
    engine.set_source_photos(["me.jpg"])      # or set_identity(IdentityStore().load("me"))
    engine.start(source="0", outputs=["virtualcam"])
    engine.set_option("max_faces", 2)         # live
    engine.set_face_map([(ref_embedding, identity)])  # a different identity per person (or clear_face_map())
    token = engine.subscribe_frames(cb)       # cb(FramePacket) on the output thread
    engine.snapshot()                         # metrics + status, JSON-ready
    engine.stop()
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .config import Settings, coerce, validate
from .errors import MirageError
from .metrics import Metrics
from .status import Problem, Problems, from_error

log = logging.getLogger(__name__)

# how bad a failing stage is: the optional ones leave the video as asked, less polished
STAGE_LEVELS = {"enhance": "warning", "embed": "warning"}


@dataclass
class OutputReport:
    """What one output did in the last run: frames sent, frames in the finished file (recordings),
    and why it failed, if it did."""

    output: str
    frames: int
    kept: int | None = None
    error: str | None = None
    critical: bool = False


@dataclass
class StillResult:
    found: int  # faces detected
    chosen: list  # faces selected (max_faces, reference match)
    swapped: int


@dataclass
class EngineStatus:
    running: bool = False
    provider: str = "none"
    detector: str = "none"
    recognizer: str = "none"
    swapper: str = "none"
    enhancer: str = "none"
    identity: str = ""
    source: str = ""
    outputs: list[str] = field(default_factory=list)
    passthrough: list[str] = field(default_factory=list)  # why frames go out unswapped, in words
    problems: list[str] = field(default_factory=list)  # the problems' lines (``Problem.text()``)
    issues: list[dict] = field(default_factory=list)  # typed: source, level, message, fix (status.Problem)

    def to_dict(self) -> dict:
        return asdict(self)


def virtual_microphone(settings: Settings) -> str | None:
    """The output device behind a virtual microphone, or None: the configured voice output when it
    is one (a VB-Audio cable, BlackHole, the Mirage Microphone), else the Mirage Microphone or the
    first virtual cable found."""
    try:
        from .voice.audio_io import is_virtual_cable, list_devices
    except ImportError:
        return None
    if settings.voice_output:
        return settings.voice_output if is_virtual_cable(settings.voice_output) else None
    try:
        outs = [d for d in list_devices() if d["max_output_channels"] > 0]
    except Exception:  # no audio stack at all: no virtual microphone
        return None
    for d in outs:
        if d.get("pulse_name") == "mirage_mic_sink":
            return "Mirage Microphone"
    for d in outs:
        if d["is_virtual_cable"]:
            return d["name"]
    return None


class Engine:
    def __init__(self, settings: Settings | None = None, *, model_overrides: Mapping[str, str | Path] | None = None,
                 metrics: Metrics | None = None):
        self.settings = validate(settings or Settings())
        self.overrides = dict(model_overrides or {})
        self.metrics = metrics or Metrics()
        self.analyzer: Any = None  # vision.analysis.FaceAnalyzer once load_models() ran
        self.swapper: Any = None
        self.enhance_stage: Any = None
        self.parse_stage: Any = None  # vision.parser.ParseStage while the occlusion-aware mask is on
        self.identity = None
        self.reference: np.ndarray | None = None  # only swap faces that look like this (set_reference)
        # a different identity per person (set_face_map): (reference embedding, identity, label) each,
        # and the FaceMap of their latents (None without a map or a swapper)
        self.face_sources: list[tuple[np.ndarray, Any, str]] = []
        self.face_map: Any = None
        self.latent: np.ndarray | None = None
        self.pipeline: Any = None  # vision.pipeline.VideoPipeline while running
        self.voice: Any = None  # voice.pipeline.VoicePipeline while the voice runs
        self.voice_mode: str | None = None  # "convert" | "lipsync" while a voice path runs
        self._audio_master: Callable[[], float | None] | None = None  # an audio path outside (set_audio_master)
        self._gpu_monitor: Any = None
        self._lock = threading.RLock()
        self._status = EngineStatus()
        self.problems = Problems()  # one entry per source, set and cleared by that source
        self._passthrough: list[Problem] = []
        self._frame_subs: dict[int, Callable] = {}
        self._originals: dict[int, bool] = {}
        self._next_token = 0
        self.last_outputs: list[OutputReport] = []  # filled by stop()

    # ---- models ----------------------------------------------------------------------------
    def load_models(self) -> EngineStatus:
        """Load what is there; anything missing or broken becomes a pass-through reason.

        Safe while running (after a download, say): the models load outside the lock, then take
        over in one step, from the next frame."""
        from .models.loader import load_face_models

        ms = load_face_models(self.settings, self.overrides)
        with self._lock:
            st = self._status
            for src in ("detector", "recognizer", "swapper"):
                self.problems.clear(src)
            for pr in ms.problems:
                self.problems.set(pr)
            self.analyzer, self.swapper = ms.analyzer, ms.swapper
            st.detector, st.recognizer = ms.analyzer.status.detector, ms.analyzer.status.recognizer
            st.swapper, st.provider = ms.swapper_name, ms.provider
            self.metrics.set_gauge("provider", st.provider)
            self._load_enhancer()
            self._load_parser()
            if self.identity is not None:
                self._update_latent()
            self._update_face_map()  # another swapper: another emap
            if self.pipeline is not None:  # hand the new models to the running stream
                self.pipeline.use_models(self.analyzer, self.swapper, self.latent)
            self._refresh_passthrough()
        return self.status()

    def use_shared_models(self, other: "Engine") -> None:
        """Run on the face models ``other`` loaded (``mirage serve``: one copy for every session);
        this engine keeps its own identity, options, stream and metrics. The models must be safe
        to call from several threads at once (onnxruntime sessions are)."""
        with other._lock:
            analyzer, swapper, st, found = other.analyzer, other.swapper, other._status, other.problems.all()
            shared_enhancer = getattr(other.enhance_stage, "enhancer", None)
            shared_parser = getattr(other.parse_stage, "parser", None)
        with self._lock:
            self.analyzer, self.swapper = analyzer, swapper
            for k in ("provider", "detector", "recognizer", "swapper", "enhancer"):
                setattr(self._status, k, getattr(st, k))
            for pr in found:
                if pr.source in ("detector", "recognizer", "swapper", "enhancer"):
                    self.problems.set(pr)
            if shared_parser is not None and self.settings.enable_parser:
                from .vision.parser import ParseStage

                # the model is shared; the labels of each face and the thread are this engine's
                self.parse_stage = ParseStage(shared_parser, self.metrics, background=self.settings.parser_async)
            for pr in found:
                if pr.source == "parser":
                    self.problems.set(pr)
            if shared_enhancer is not None and self.settings.enable_enhancer:
                from .vision.enhancer import EnhanceStage

                s = self.settings  # the model is shared; its per-face cache and thread are this engine's
                self.enhance_stage = EnhanceStage(shared_enhancer, interval=s.enhancer_interval,
                                                  blend=s.enhancer_blend, metrics=self.metrics,
                                                  background=s.enhancer_async)
            if self.identity is not None:
                self._update_latent()
            self._update_face_map()
            self._refresh_passthrough()

    def _load_enhancer(self) -> None:
        from .models.loader import load_enhance_stage

        with self._lock:
            old = self.enhance_stage
            self.enhance_stage, self._status.enhancer, problems = load_enhance_stage(
                self.settings, self.overrides, self.metrics)
            self.problems.clear("enhancer")
            for pr in problems:
                self.problems.set(pr)
            if self.pipeline is not None:
                self.pipeline.use_enhancer(self.enhance_stage)  # the next frame uses the new one
            if old is not None:
                old.retire()  # a frame still inside it finishes; it starts no thread again

    def _load_parser(self) -> None:
        from .models.loader import load_parser

        with self._lock:
            old = self.parse_stage
            self.parse_stage, problems = load_parser(self.settings, self.overrides, self.metrics)
            self.problems.clear("parser")
            for pr in problems:
                self.problems.set(pr)
            if self.pipeline is not None:
                self.pipeline.use_parser(self.parse_stage)
            if old is not None:
                old.retire()  # a frame still inside it finishes; it starts no thread again

    def _refresh_passthrough(self) -> None:
        st, s = self._status, self.settings
        reasons: list[Problem] = []
        if not s.enable_swap:  # the user's own choice: shown, not alarming
            reasons.append(Problem("passthrough:swap", "info", "face swap is switched off"))
        elif not s.enable_scrfd:
            reasons.append(Problem("passthrough:detect", "info", "face detection is switched off "
                                   "(MIRAGE_ENABLE_SCRFD=0), so no face is found to swap"))
        else:
            if self.swapper is None:
                sw = self.problems.get("swapper")
                reasons.append(Problem("passthrough:swapper", "error", sw.message if sw else "no swapper model",
                                       sw.fix if sw else ""))
            if self.analyzer is not None and self.analyzer.recognizer is None:
                reasons.append(Problem("passthrough:embedding", "error", "no source embedding: the ArcFace model "
                                       "(w600k_r50) is missing", "run `mirage models download buffalo_l`"))
            elif self.identity is None and not self.face_sources:
                reasons.append(Problem("passthrough:identity", "error", "no source face chosen",
                                       "add a photo of the face to use"))
        self._passthrough = reasons
        st.passthrough = [r.message + (f" — {r.fix}" if r.fix else "") for r in reasons]

    # ---- identity ----------------------------------------------------------------------------
    def build_identity(self, photos: list, name: str | None = None):
        from .vision.identity import IdentityBuilder

        if self.analyzer is None:
            self.load_models()
        return IdentityBuilder(self.analyzer).build(photos, name)

    def set_source_photos(self, photos: list, name: str | None = None):
        ident = self.build_identity(photos, name)
        self.set_identity(ident)
        return ident

    def set_identity(self, identity) -> None:
        """Switch who the user becomes; takes effect on the next frame."""
        from .vision.identity import usable_embedding

        if identity is not None and identity.embedding is not None:
            why = usable_embedding(identity.embedding)
            if why is not None:  # a NaN latent paints a black face: refuse it, keep the current one
                raise MirageError(f"the face of {identity.name!r} cannot be used: its embedding {why}",
                                  "add the identity again from its photos")
        with self._lock:
            self.identity = identity
            self._status.identity = identity.name if identity is not None else ""
            self._update_latent()
            if self.enhance_stage is not None:
                self.enhance_stage.reset()  # cached enhanced faces show the previous identity
            self._refresh_passthrough()

    def _update_latent(self) -> None:
        from .vision.identity import usable_embedding

        lat = None
        if self.identity is not None and self.identity.embedding is not None and self.swapper is not None:
            if usable_embedding(self.identity.embedding) is None:  # checked by set_identity
                lat = self.swapper.latent(self.identity.embedding)
        self.latent = lat
        if self.pipeline is not None:
            self.pipeline.set_latent(lat)

    def set_reference(self, embedding: np.ndarray | None) -> None:
        """Only swap faces that look like this person (None: any face, largest first)."""
        with self._lock:
            self.reference = embedding
            if self.pipeline is not None:
                self.pipeline.set_reference(embedding)

    # ---- face mapping ------------------------------------------------------------------------
    def set_face_map(self, entries) -> None:
        """A different identity per person: ``entries`` are ``(reference embedding, identity)`` or
        ``(reference embedding, identity, label)`` (label: the identity's name by default). Each
        tracked person whose face matches a reference becomes that identity; the others are not
        swapped; faces are embedded at every detection. Empty (or None): one identity for all
        again. Takes effect on the next frame. A reference or identity that cannot be used is
        refused (MirageError) and the map in use stays."""
        from .vision.identity import usable_embedding
        from .vision.mapping import normalised

        sources = []
        for entry in entries or []:
            ref, ident, *rest = entry
            label = str(rest[0]) if rest and rest[0] else str(getattr(ident, "name", "") or "identity")
            why = usable_embedding(ref)
            if why is not None:
                raise MirageError(f"the face to look for as {label!r} cannot be used: its embedding {why}",
                                  "pick the person again, or use a clearer reference photo")
            emb = getattr(ident, "embedding", None)
            why = usable_embedding(emb) if emb is not None else "is missing (no recognition model?)"
            if why is not None:
                raise MirageError(f"the face of {label!r} cannot be used: its embedding {why}",
                                  "add the identity again from its photos")
            sources.append((normalised(ref), ident, label))
        with self._lock:
            self.face_sources = sources
            self._update_face_map()
            if self.enhance_stage is not None:
                self.enhance_stage.reset()  # cached enhanced faces show the identities before
            self._refresh_passthrough()

    def clear_face_map(self) -> None:
        self.set_face_map([])

    def add_face_mapping(self, reference: np.ndarray, identity, label: str | None = None) -> None:
        """Map one more person (``reference``) to ``identity``; a person already in the map (their
        reference as alike as ``match_threshold``) is mapped anew instead."""
        from .vision.mapping import normalised

        ref = normalised(reference)
        with self._lock:
            thr = self.settings.match_threshold
            kept = [e for e in self.face_sources if float(e[0] @ ref) < thr]
            self.set_face_map(kept + [(ref, identity, label)])

    def _update_face_map(self) -> None:
        from .vision.mapping import FaceMap, MapEntry

        fm = None
        if self.face_sources and self.swapper is not None:
            fm = FaceMap([MapEntry(ref, self.swapper.latent(ident.embedding), label)
                          for ref, ident, label in self.face_sources])
        self.face_map = fm
        if self.pipeline is not None:
            self.pipeline.set_face_map(fm.fresh() if fm is not None else None)

    def faces_in_view(self) -> list:
        """The newest frame's tracked faces (:class:`~mirage_desktop.vision.pipeline.FaceView`:
        box in fractions of the frame, track id, face-map label); empty when not running."""
        p = self.pipeline
        return list(p.seen_faces) if p is not None else []

    def pick_face(self, u: float, v: float, identity=None, timeout: float = 10.0):
        """Map the person under the point (``u``, ``v``: fractions of the frame's width and height)
        of the live picture to ``identity`` (default: the identity in use). Their embedding is made
        from the next frame. Returns the FaceView picked; MirageError when there is no stream, no
        face there, or no identity."""
        ident = identity if identity is not None else self.identity
        if ident is None or getattr(ident, "embedding", None) is None:
            raise MirageError("no source face chosen to give this person", "choose a face in the source picker first")
        p = self.pipeline
        if p is None:
            raise MirageError("the picture is not running", "press Start, then click on a face in the preview")
        under = [f for f in p.seen_faces if f.contains(u, v)]
        if not under:
            raise MirageError("there is no face under the click", "click on a face in the preview")
        view = min(under, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))  # the nearest (smallest)
        from concurrent.futures import CancelledError
        from concurrent.futures import TimeoutError as FutureTimeout

        try:
            emb = p.embed_track(view.track_id).result(timeout)
        except CancelledError:
            raise MirageError("the picture stopped before the face could be picked",
                              "start it again, then click on the face") from None
        except FutureTimeout:  # no frame tracked faces meanwhile (face swap switched off, a stalled camera)
            raise MirageError("no new frame came to pick the face from", "check that face swap is on and "
                              "the picture moves, then click on the face again") from None
        if emb is None:
            raise MirageError("that person has left the picture", "click on a face that is in view")
        self.add_face_mapping(emb, ident)
        return view

    # ---- stills ----------------------------------------------------------------------------
    def process_still(self, img: np.ndarray) -> "StillResult":
        """Run the frame stages once on a still (``mirage swap``), in place: the same swap, enhance
        and mark stages as the live pipeline, faces found by one detection instead of tracking.
        A stage that fails raises its error (a still has no next frame to recover on)."""
        from .vision.parser import ParseStage
        from .vision.stages import (AiMark, EnhanceFrames, FrameContext, ParseFrames, StillFaces, SwapStage,
                                    run_stages)

        with self._lock:
            s = self.settings
            from .vision.mapping import face_latents

            fm = self.face_map.fresh() if self.face_map is not None else None  # no tracks to remember
            faces = StillFaces(self.analyzer, self.reference, fm)
            latent = (lambda: face_latents) if fm is not None else (lambda: self.latent)
            live = self.parse_stage  # a still is parsed inline: it has no next frame to wait for
            parse = ParseStage(live.parser, self.metrics, background=False) if live is not None else None
            stages = [faces, ParseFrames(lambda: parse),
                      SwapStage(lambda: self.swapper, latent, self._color_fn(), self.metrics),
                      EnhanceFrames(lambda: self.enhance_stage), AiMark()]
        failed: list[tuple[str, Exception]] = []

        def note(name: str, exc: Exception | None) -> None:
            if exc is not None:
                failed.append((name, exc))

        ctx = FrameContext(img, opts=s)
        run_stages(stages, ctx, self.metrics, note)
        if failed:
            name, exc = failed[0]
            raise exc if isinstance(exc, MirageError) else MirageError(f"{name} failed: {exc}")
        self.metrics.incr("faces.swapped", ctx.swapped)
        return StillResult(getattr(faces, "found", 0), ctx.faces, ctx.swapped)

    # ---- run -------------------------------------------------------------------------------
    def start(self, source: str | int | Any = 0, outputs: list[str | Any] | None = None, *,
              realtime: bool = True, detector_async: bool = True, lossless: bool = False,
              max_frames: int | None = None) -> None:
        """Start streaming. ``lossless``: process and write every frame (file to file), never drop.
        ``max_frames``: send exactly that many frames, then finish (``wait()`` returns True)."""
        from .outputs.sinks import check_sink, make_sink
        from .vision.capture import check_source, open_source
        from .vision.pipeline import VideoPipeline

        with self._lock:
            if self.pipeline is not None:
                raise MirageError("the engine is already running", "stop it first")
            if self.analyzer is None:
                self.load_models()
            s = self.settings
            src = check_source(source) if not isinstance(source, (str, int)) else open_source(
                source, width=s.capture_width, height=s.capture_height, fps=s.capture_fps, realtime=realtime)
            try:
                if hasattr(src, "open") and getattr(src, "cap", "n/a") is None:
                    src.open()  # surface a missing camera now, with its fix
                sinks = [check_sink(o) if not isinstance(o, str) else make_sink(
                    o, backend=s.vcam_backend, width=s.output_width, height=s.output_height, fps=s.output_fps)
                    for o in (outputs or ["virtualcam"])]
                p = VideoPipeline(s, self.metrics, src, sinks, self.analyzer, self.swapper, self.latent,
                                  self.enhance_stage, self._make_smoother(), self._color_fn(),
                                  self.reference,
                                  detector_async=detector_async and not lossless, lossless=lossless,
                                  max_frames=max_frames, parse_stage=self.parse_stage,
                                  face_map=self.face_map.fresh() if self.face_map is not None else None)
                p._subscribers = dict(self._frame_subs)
                p.keep_original = any(self._originals.values())
                p.start()
            except BaseException:
                try:  # nothing may stay open after a failed start (the camera would be busy)
                    src.close()
                except Exception:
                    pass
                raise
            self.pipeline = p
            if self._status.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
                from .control.gpu import GpuMemoryMonitor

                self._gpu_monitor = GpuMemoryMonitor(self.metrics)
                self._gpu_monitor.start()
            self._status.running = True
            self._status.source = src.name
            self._status.outputs = [x.describe() for x in sinks]
            self._sync_voice()
            if self.voice is None and self._audio_master is not None:
                p.audio_latency = self._audio_master

    def _make_smoother(self):
        try:
            from .vision.smoothing import KeypointSmoother
        except ImportError:
            return None
        return KeypointSmoother()

    def _color_fn(self):
        try:
            from .vision.color import ColorTransfer
        except ImportError:
            return None
        return ColorTransfer(self.settings.color_smoothing)

    def wanted_voice_mode(self) -> str | None:
        """Which voice path the settings ask for while the video runs: "convert" (the voice
        changer), "lipsync" (no conversion: the microphone delayed to match the video, out on the
        virtual microphone — only when one exists) or None."""
        from .outputs.sinks import VirtualCameraSink

        s = self.settings
        if s.enable_voice:
            return "convert"
        p = self.pipeline
        if p is not None and (p.lossless or not any(isinstance(x, VirtualCameraSink) for x in p.sinks)):
            return None  # lips to sync only on a virtual camera (not a file render, not a preview)
        if s.lipsync_mic and virtual_microphone(s) is not None:
            return "lipsync"
        return None

    def _sync_voice(self) -> None:
        """Start, stop or switch the voice path to what the settings ask for (with the lock held)."""
        want = self.wanted_voice_mode() if self.pipeline is not None else None
        if want == self.voice_mode and (want is None or (self.voice is not None and self.voice.error is None)):
            return
        self._stop_voice()
        self.problems.clear("voice")
        if want is not None:
            self._start_voice(want)
        if want == "convert" and self.voice_mode is None and self.settings.lipsync_mic and \
                self.pipeline is not None and virtual_microphone(self.settings) is not None:
            # the voice changer could not start: the call still hears the real voice, in sync
            failed = self.problems.get("voice")
            self._start_voice("lipsync")
            if failed is not None:
                self.problems.set(failed)  # the changer's failure stays shown, in red

    def _start_voice(self, mode: str) -> None:
        s = self.settings
        out = s.voice_output or virtual_microphone(s) or ""  # the virtual microphone when there is one
        vs = s.replace(voice_output=out)
        what = "lip-sync microphone" if mode == "lipsync" else "voice"
        try:
            from .voice.pipeline import VoicePipeline

            # lip-sync: the real voice, unconverted, in step with the video (VoicePipeline's mode)
            self.voice = VoicePipeline(vs, self.metrics, mode="lipsync" if mode == "lipsync" else "voice")
            if not self.voice.start():  # device errors do not raise here: they are reported
                self.problems.set(Problem("voice", "error" if mode == "convert" else "warning",
                                          f"{what}: {self.voice.error}"))
                log.warning("%s could not start: %s", what, self.voice.error)
                self.voice = None  # nothing half-started stays behind; the problem says why
        except (MirageError, ImportError) as exc:
            self.voice = None
            self.problems.set(from_error("voice", "error" if mode == "convert" else "warning", exc))
            log.warning("%s could not start: %s", what, exc)
        self.voice_mode = mode if self.voice is not None else None
        self.metrics.set_gauge("av.mode", self.voice_mode or "none")
        p = self.pipeline
        if p is not None and self.voice is not None:  # audio is the master clock from now on
            voice = self.voice
            p.audio_latency = voice.latency_s  # None while it is not running
            p.on_video_latency = voice.set_target_latency_s if mode == "lipsync" else None

    def _stop_voice(self) -> None:
        p = self.pipeline
        if p is not None:  # the video leaves as it comes again (or held to an outside master)
            p.audio_latency = self._audio_master
            p.on_video_latency = None
        if self.voice is not None:
            try:
                self.voice.stop()
            finally:
                self.voice = None
        self.voice_mode = None
        self.metrics.set_gauge("av.mode", "none")

    def set_audio_master(self, latency: Callable[[], float | None] | None) -> None:
        """An audio path this engine does not run (``mirage serve``: a session's voice stream) as
        the A/V master: the output holds each frame until its capture time + ``latency()`` s (by
        AVSync's rules; ``latency()`` None: no hold). None: no outside master. The engine's own
        voice path, while one runs, comes first."""
        with self._lock:
            self._audio_master = latency
            p = self.pipeline
            if p is not None and self.voice is None:
                p.audio_latency = latency

    def stop(self) -> None:
        with self._lock:
            self._stop_voice()
            if self.pipeline is not None:
                p = self.pipeline
                p.stop()
                self.pipeline = None
                self.last_outputs = [OutputReport(s.describe(), int(getattr(s, "frames", 0)),
                                                  getattr(s, "kept", None), p.sink_errors.get(id(s)),
                                                  bool(getattr(s, "critical", False))) for s in p.sinks]
            if self._gpu_monitor is not None:
                self._gpu_monitor.stop()
                self._gpu_monitor = None
            self._status.running = False

    def wait(self, timeout: float | None = None) -> bool:
        p = self.pipeline
        return p.wait(timeout) if p is not None else True

    @property
    def running(self) -> bool:
        return self.pipeline is not None

    # ---- live options ------------------------------------------------------------------------
    def set_option(self, name: str, value: Any) -> None:
        """Change a setting while running. Raises MirageError for unknown or invalid values.

        Which settings apply live is declared once, in ``config.RULES`` (``live``); the stream reads
        them per frame, and the few that need more than that are routed by :attr:`_LIVE_EFFECTS`.
        The others are stored and take effect at the next start."""
        from .config import rule

        value = coerce(name, value)
        with self._lock:
            before = self.settings
            self.settings = validate(self.settings.replace(**{name: value}))
            if rule(name).live:
                effect = self._LIVE_EFFECTS.get(name)
                try:
                    if effect is not None:  # first: a part that refuses the value leaves nothing changed
                        effect(self, name, value)
                except Exception:
                    self.settings = before
                    raise
                if self.pipeline is not None:
                    self.pipeline.set_option(name, value)
            self._refresh_passthrough()

    # ---- what a live change does beyond the stream reading it ----------------------------------
    def _det_size(self, name: str, value) -> None:
        if self.pipeline is None and self.analyzer is not None:  # the running pipeline sets it itself
            self.analyzer.detector.set_det_size(value)

    def _enhancer_switch(self, name: str, value) -> None:
        if self.enhance_stage is not None:
            self.enhance_stage.reset()  # never re-paste a face made under the old setting
        if name == "enable_enhancer" and value and self.enhance_stage is None:
            self._load_enhancer()

    def _enhancer_setting(self, name: str, value) -> None:
        st = self.enhance_stage
        if st is None:
            return
        if name == "codeformer_fidelity":
            st.set_fidelity(value)
        elif name == "enhancer_interval":
            st.set_interval(value)
        else:
            st.set_blend(value)

    def _parser_switch(self, name: str, value) -> None:
        if value and self.parse_stage is None:
            self._load_parser()
        elif self.parse_stage is not None:
            self.parse_stage.reset()  # masks parsed before describe another moment

    def _voice_switch(self, name: str, value) -> None:
        self._sync_voice()  # voice conversion / lip-sync microphone on or off

    def _voice_option(self, name: str, value) -> None:
        if self.voice is not None and self.voice_mode == "convert":  # lip-sync: stored for the changer
            option = {"voice_bypass": "bypass"}.get(name, name.replace("voice_", "", 1))
            self.voice.set_option(option, value)

    _LIVE_EFFECTS: dict[str, Callable] = {
        "det_size": _det_size,
        "enable_swap": _enhancer_switch, "enable_enhancer": _enhancer_switch,
        "codeformer_fidelity": _enhancer_setting, "enhancer_interval": _enhancer_setting,
        "enhancer_blend": _enhancer_setting,
        "enable_parser": _parser_switch,
        "enable_voice": _voice_switch, "lipsync_mic": _voice_switch,
        "voice_pitch": _voice_option, "voice_formant": _voice_option, "voice_preset": _voice_option,
        "voice_f0_method": _voice_option, "voice_speaker": _voice_option, "voice_converter": _voice_option,
        "voice_bypass": _voice_option,
    }

    # ---- observation -------------------------------------------------------------------------
    def subscribe_frames(self, fn: Callable, want_original: bool = False) -> int:
        """Call ``fn(FramePacket)`` on the output thread for every frame. ``pkt.original`` (a copy
        of the input frame) is made only while some subscriber wants it."""
        with self._lock:
            self._next_token += 1
            self._frame_subs[self._next_token] = fn
            self._originals[self._next_token] = bool(want_original)
            self._sync_subscriptions()
            return self._next_token

    def set_frame_subscription(self, token: int, want_original: bool) -> None:
        with self._lock:
            if token in self._frame_subs:
                self._originals[token] = bool(want_original)
                self._sync_subscriptions()

    def unsubscribe_frames(self, token: int) -> None:
        with self._lock:
            self._frame_subs.pop(token, None)
            self._originals.pop(token, None)
            self._sync_subscriptions()

    def _sync_subscriptions(self) -> None:
        p = self.pipeline
        if p is not None:
            p._subscribers = dict(self._frame_subs)  # replaced, not mutated: the output thread iterates it
            p.keep_original = any(self._originals.values())

    def status(self) -> EngineStatus:
        """A snapshot of the status (never changes the engine's state)."""
        with self._lock:
            st = EngineStatus(**self._status.to_dict())
            passthrough = list(self._passthrough)
        found = self.problems.all()
        p = self.pipeline
        if p is not None:  # the running stream's own: each stage's last failure, cleared when it works
            if p.capture_error:
                found.insert(0, Problem("capture", "error", p.capture_error))
            for k, v in list(p.errors.items()):
                found.append(Problem(k, STAGE_LEVELS.get(k, "error"), v, p.error_fixes.get(k, "")))
            reason = p.adapt_reason
            if reason:  # the degrade ladder is holding a step: shown, with how to keep one's settings
                found.append(Problem("adapt", "warning", reason, "turn adaptation off to keep your settings "
                                     "(--no-adapt, or 'Adapt to load' in the window)"))
            if p.av.behind:
                found.append(Problem("av", "warning", f"the video is {p.av.behind_s * 1000:.0f} ms behind the "
                                     "voice; late frames are dropped", "lower the load or the video settings"))
        st.problems = [pr.text() for pr in found]
        st.issues = [pr.to_dict() for pr in found + passthrough]
        return st

    def snapshot(self) -> dict:
        from .control.health import verdict

        snap = self.metrics.snapshot()
        snap["status"] = self.status().to_dict()
        if self.voice is not None:
            try:
                snap["voice"] = self.voice.status()
            except Exception as exc:
                snap["voice"] = {"error": str(exc)}
        snap["health"] = verdict(snap)
        return snap
