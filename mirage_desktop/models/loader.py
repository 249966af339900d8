"""Load the face models into a :class:`ModelSet`, with what went wrong as typed problems.

The engine decides what to do with the set (swap it into a running stream, say); this module only
loads: the detector (SCRFD, else OpenCV's built-in one), the recognizer (ArcFace), the swapper
(the precision asked for, else the other one) and the optional enhancer. Nothing here raises for
a missing or refused model: it becomes a problem, and the stream passes that part through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import MirageError
from ..status import Problem, from_error


@dataclass
class ModelSet:
    analyzer: Any  # vision.analysis.FaceAnalyzer (detector + optional recognizer)
    swapper: Any | None  # vision.swapper.InSwapper
    swapper_name: str = "none"
    provider: str = "none"
    problems: list[Problem] = field(default_factory=list)


def swapper_order(precision: str) -> list[str]:
    """The inswapper files to try, the asked-for precision first."""
    return ["inswapper_128_fp16", "inswapper_128"] if precision == "fp16" else ["inswapper_128", "inswapper_128_fp16"]


def loads_side_by_side(providers) -> bool:
    """Load the swapper beside the analyzer: when a GPU provider is in use."""
    from .runtime import GPU_PROVIDERS, resolve_providers

    return any(p in GPU_PROVIDERS for p in resolve_providers(providers))


def load_face_models(settings, overrides: Mapping[str, str | Path] | None = None) -> ModelSet:
    from ..vision.analysis import FaceAnalyzer, resolve_model
    from ..vision.swapper import InSwapper
    from .runtime import create_session

    names = swapper_order(settings.swapper_precision)
    errors: list[MirageError] = []
    found: dict[str, Any] = {}

    def load_swapper() -> None:
        for name in names:
            try:
                h = create_session(resolve_model(name, overrides), settings.providers,
                                   fp16=settings.swapper_precision == "fp16")
                found["swapper"], found["name"], found["provider"] = InSwapper(h), name, h.provider
                return
            except MirageError as exc:
                errors.append(exc)

    # on a GPU the swapper loads beside the detector and the recognizer (device set-up dominates);
    # on the CPU one after the other (measured: side by side took longer on 2 cores)
    worker = None
    if loads_side_by_side(settings.providers):
        import threading

        worker = threading.Thread(target=load_swapper, name="mirage-load-swapper", daemon=True)
        worker.start()
    analyzer = FaceAnalyzer.load(settings.det_size, settings.providers, overrides)
    if worker is not None:
        worker.join()
    else:
        load_swapper()
    ms = ModelSet(analyzer, None, provider=analyzer.status.provider, problems=list(analyzer.status.problems))
    if "swapper" in found:
        ms.swapper, ms.swapper_name = found["swapper"], found["name"]
        if ms.provider == "none":
            ms.provider = found["provider"]
        if found["name"] != names[0]:  # the other precision works: say why the asked-for one did not
            pr = from_error("swapper", "info", errors[0])
            ms.problems.append(Problem("swapper", "info", f"using {found['name']}; {pr.message}", pr.fix))
    if ms.swapper is None:
        ms.problems.append(from_error("swapper", "error", errors[0]))
    # on the CPU the detector (and the embeddings made on its thread) and the swapper take turns
    # on the cores, the detector first, instead of halving each other (vision/cores.py)
    from ..vision.cores import share_cores

    handles = [getattr(ms.swapper, "handle", None), getattr(analyzer.detector, "handle", None),
               getattr(analyzer.recognizer, "handle", None)]
    share_cores(handles[:1], handles[1:])
    warm_up([h for h in handles if h is not None and h.on_gpu])
    return ms


def warm_up(handles: list) -> None:
    """First calls on the GPU sessions, side by side, before the stream starts (measured on the
    CPU they gain nothing there, so CPU sessions are not warmed)."""
    import logging
    import threading

    def one(h) -> None:
        try:
            h.warm_up()
        except Exception as exc:  # the real first frame will say what is wrong
            logging.getLogger(__name__).info("warming up %s failed: %s", h.path.name, exc)

    threads = [threading.Thread(target=one, args=(h,), name="mirage-warm-up", daemon=True) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def load_enhance_stage(settings, overrides: Mapping[str, str | Path] | None, metrics) -> tuple[Any, str, list]:
    """(EnhanceStage or None, what to show as the enhancer, problems). Off when not enabled."""
    if not settings.enable_enhancer:
        return None, "off", []
    try:
        from ..vision.enhancer import REGISTRY_NAMES, EnhanceStage, load_enhancer

        kind = settings.enhancer
        enh = load_enhancer(kind, settings, path=(overrides or {}).get(REGISTRY_NAMES[kind]))
        stage = EnhanceStage(enh, interval=settings.enhancer_interval, blend=settings.enhancer_blend,
                             metrics=metrics, background=settings.enhancer_async)
        return stage, kind, []
    except (MirageError, ImportError) as exc:  # an optional stage: the video itself is fine
        return None, "none", [from_error("enhancer", "warning", exc)]


def load_parser(settings, overrides: Mapping[str, str | Path] | None, metrics,
                background: bool | None = None) -> tuple[Any, list]:
    """(ParseStage or None, problems): the occlusion-aware mask, when it is switched on. A missing
    or refused parser model is a warning: faces are swapped with the plain oval mask."""
    if not settings.enable_parser:
        return None, []
    try:
        from ..vision.analysis import resolve_model
        from ..vision.parser import FaceParser, ParseStage
        from .runtime import create_session

        handle = create_session(resolve_model(settings.parser_model, overrides), settings.providers)
        stage = ParseStage(FaceParser(handle), metrics,
                           background=settings.parser_async if background is None else background)
        return stage, []
    except (MirageError, ImportError) as exc:  # an optional stage: the video itself is fine
        pr = from_error("parser", "warning", exc)
        return None, [Problem("parser", "warning", f"occlusion-aware mask off: {pr.message}", pr.fix)]
