"""The frame-stage contract: what the video worker runs on every frame, in order.

A stage has a ``name`` (its timing metric and its ``errors.<name>`` counter), says whether it
``wants`` to run under the current options, and ``process``es a :class:`FrameContext` in place.
``reset()`` forgets what it carried between frames (faces, cached results); ``close()`` releases
threads and sessions. A stage with ``needs_faces`` is skipped on frames with no chosen face.
:func:`run_stages` is the one guard around them all: it times each stage, counts and reports
its errors, clears the report when the stage works again, and resets a stage when it stops
being wanted, so switching it back on starts fresh. The live pipeline and ``mirage swap`` on a
still run the same stages; only the first one (how faces are found) differs.

The live list reads::

    track (detector schedule + optical-flow tracking + face selection) → parse → swap → enhance → mark
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from ..errors import MirageError
from .blend import draw_ai_mark
from .face import Face
from .mapping import choose_mapped
from .parser import parse_mask_fn
from .slot import RunWatch
from .tracking import select_faces

log = logging.getLogger(__name__)


@dataclass
class FrameContext:
    frame: np.ndarray  # BGR, modified in place by the stages
    index: int = 0
    t_capture: float = 0.0
    opts: Any = None  # the Settings this frame is made under (read once per frame)
    faces: list[Face] = field(default_factory=list)  # the faces chosen for this frame
    swapped: int = 0


@runtime_checkable
class FrameStage(Protocol):
    name: str

    def wants(self, opts: Any) -> bool: ...

    def process(self, ctx: FrameContext) -> None: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


_METHODS = ("wants", "process", "reset", "close")


def check_stage(obj: Any) -> Any:
    """``obj`` if it fulfils the frame-stage contract, else MirageError naming what is missing."""
    missing = [a for a in ("name", *_METHODS) if not hasattr(obj, a)]
    not_callable = [a for a in _METHODS if hasattr(obj, a) and not callable(getattr(obj, a))]
    if missing or not_callable or not isinstance(getattr(obj, "name", None), str):
        what = [f"missing {', '.join(missing)}"] if missing else []
        what += [f"{', '.join(not_callable)} not callable"] if not_callable else []
        if "name" not in missing and not isinstance(getattr(obj, "name", None), str):
            what.append("name is not a string")
        raise MirageError(f"{type(obj).__name__} is not a frame stage ({'; '.join(what)})",
                          "a frame stage needs name, wants(opts), process(ctx), reset() and close()")
    return obj


def run_stages(stages: list, ctx: FrameContext, metrics, on_error: Callable[[str, Exception | None], None],
               wanted: dict[str, bool] | None = None) -> None:
    """Run ``stages`` on ``ctx`` under one guard. ``on_error(name, exc)`` is told of a failure, and
    ``on_error(name, None)`` when the stage works again or does not run on this frame. ``wanted``
    (kept by the caller across frames) remembers which stages ran last frame, to reset those
    switched off."""
    o = ctx.opts
    for st in stages:
        want = bool(st.wants(o))
        if wanted is not None:
            if not want and wanted.get(st.name):
                st.reset()  # switched off: what it carried describes another moment
            wanted[st.name] = want
        if not want or (getattr(st, "needs_faces", False) and not ctx.faces):
            on_error(st.name, None)  # not running, so not failing: an old error is no longer shown
            continue
        t = time.perf_counter()
        try:
            st.process(ctx)
        except Exception as exc:  # one stage never kills the frame: the rest still run
            on_error(st.name, exc)
        else:
            on_error(st.name, None)
        finally:
            if not getattr(st, "times_itself", False):
                metrics.record(st.name, (time.perf_counter() - t) * 1000)


# ---- the stages --------------------------------------------------------------------------------------

class StillFaces:
    """Faces of a still image: detect once, embed for reference matching or the face map, choose
    (with a face map: every mapped face, each with its own latent, as the live stream does)."""

    name = "track"

    def __init__(self, analyzer, reference: np.ndarray | None = None, face_map=None):
        self.analyzer = analyzer
        self.reference = reference
        self.face_map = face_map

    def wants(self, opts) -> bool:
        return self.analyzer is not None and opts.enable_scrfd and (opts.enable_swap or opts.enable_enhancer)

    def process(self, ctx: FrameContext) -> None:
        faces = self.analyzer.detect(ctx.frame)
        if (self.reference is not None or self.face_map is not None) and self.analyzer.recognizer is not None:
            for f in faces:
                self.analyzer.embed(ctx.frame, f)
        self.found = len(faces)
        o = ctx.opts
        if self.face_map is not None:
            ctx.faces = choose_mapped(faces, self.face_map, o.match_threshold)
        else:
            ctx.faces = select_faces(faces, o.max_faces, self.reference, o.match_threshold)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class SwapStage:
    """inswapper on every chosen face. ``swapper`` and ``latent`` are read through getters, so a
    model or identity handed to the running pipeline takes effect on the next frame. ``latent()``
    is one (1, 512) latent for every face, or (a face map) a callable giving the chosen faces
    theirs, one row per face."""

    name = "swap"
    needs_faces = True

    def __init__(self, swapper: Callable[[], Any], latent: Callable[[], np.ndarray | Callable | None],
                 color_fn: Callable | None, metrics):
        self._swapper, self._latent = swapper, latent
        self.color_fn = color_fn
        self.metrics = metrics

    def wants(self, opts) -> bool:
        return bool(opts.enable_swap) and self._swapper() is not None and self._latent() is not None

    def process(self, ctx: FrameContext) -> None:
        try:
            self._swap(ctx)
        finally:
            for f in ctx.faces:  # a parse mask is this frame's only (a face object may live on)
                f.extra.pop("parse_mask", None)

    def _swap(self, ctx: FrameContext) -> None:
        swapper, latent, o = self._swapper(), self._latent(), ctx.opts
        if swapper is None or latent is None:  # taken away since wants(): pass the frame through
            return
        rows = latent(ctx.faces) if callable(latent) else None  # a face map: (n, 512), a row per face
        latent = latent if rows is None else rows
        color = self.color_fn if o.enable_color_transfer else None
        if color is not None and hasattr(color, "smoothing"):
            color.smoothing = float(getattr(o, "color_smoothing", 0.0))  # a live setting
        mask_fn = parse_mask_fn if getattr(o, "enable_parser", False) else None  # the parse stage's masks
        boost = max(1, int(getattr(o, "pixel_boost", 128)) // 128)  # pixel boost: n*n tiles of 128 px per face
        if len(ctx.faces) > 1 and getattr(swapper, "batchable", False):  # one model call for all faces
            boxes = swapper.swap_many(ctx.frame, ctx.faces, latent, mouth_mask=o.enable_mouth_mask,
                                      color_fn=color, metrics=self.metrics, mask_fn=mask_fn, boost=boost)
            ctx.swapped += sum(b is not None for b in boxes)
            return
        # faces.swapped is counted where the frame leaves (a dropped frame shows none)
        for i, f in enumerate(ctx.faces):
            latent = latent if rows is None else rows[i:i + 1]
            if swapper.swap(ctx.frame, f, latent, mouth_mask=o.enable_mouth_mask, color_fn=color,
                            metrics=self.metrics, mask_fn=mask_fn, boost=boost):
                ctx.swapped += 1

    def reset(self) -> None:
        reset = getattr(self.color_fn, "reset", None)
        if reset is not None:
            reset()  # smoothed colour statistics describe faces from before

    def close(self) -> None:
        pass


class ParseFrames:
    """The face parser (:class:`~mirage_desktop.vision.parser.ParseStage`) as a frame stage, read
    through a getter so a parser loaded while the stream runs takes effect on the next frame."""

    name = "parse"
    needs_faces = True

    def __init__(self, stage: Callable[[], Any]):
        self._stage = stage

    def wants(self, opts) -> bool:
        st = self._stage()
        return st is not None and bool(st.wants(opts))

    def process(self, ctx: FrameContext) -> None:
        for f in ctx.faces:
            f.extra.pop("parse_mask", None)  # a face carried from the last frame: only this frame's mask
        st = self._stage()
        if st is not None:
            st.process(ctx)

    def reset(self) -> None:
        st = self._stage()
        if st is not None:
            st.reset()

    def close(self) -> None:
        st = self._stage()
        if st is not None:
            st.close()


class EnhanceFrames:
    """The face enhancer (:class:`~mirage_desktop.vision.enhancer.EnhanceStage`) as a frame stage.
    It times itself (``enhance`` and ``enhance.model``) and, since it never raises for a failing
    model (the face is left as it is), its newest error is raised here so the guard reports it."""

    name = "enhance"
    needs_faces = True
    times_itself = True

    def __init__(self, stage: Callable[[], Any]):
        self._stage = stage
        self._watch = RunWatch()  # counts from this stream's start (the metrics are the engine's)

    def wants(self, opts) -> bool:
        return bool(opts.enable_enhancer) and self._stage() is not None

    def process(self, ctx: FrameContext) -> None:
        st = self._stage()
        if st is None:
            return
        m = st.metrics
        self._watch.begin(m.counter("errors.enhance_model"), m.counter("enhance.runs"))
        st.process(ctx.frame, ctx.faces)
        # the model may run on its own thread: judge by what happened since the last frame
        failing = self._watch.update(m.counter("errors.enhance_model"), m.counter("enhance.runs"), st.last_error)
        if failing:
            raise MirageError(f"the face enhancer fails ({failing})", "faces are sent unenhanced")

    def reset(self) -> None:
        st = self._stage()
        if st is not None:
            st.reset()
        self._watch.reset()

    def close(self) -> None:
        st = self._stage()
        if st is not None:
            st.close()


class AiMark:
    """The visible "AI" mark (on by default)."""

    name = "mark"

    def wants(self, opts) -> bool:
        return bool(opts.enable_ai_mark)

    def process(self, ctx: FrameContext) -> None:
        draw_ai_mark(ctx.frame)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass
