"""Face analysis: a detector plus (optionally) ArcFace embeddings, with honest fallbacks.

Model paths come from the registry (verified downloads) or from explicit overrides
(``--model det_10g=/path.onnx``), which are used as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import MirageError, ModelError
from ..models.runtime import create_session
from ..status import Problem, from_error
from .detector import SCRFD, HaarFaceDetector
from .face import Face
from .recognizer import ArcFace

log = logging.getLogger(__name__)


def resolve_model(name: str, overrides: Mapping[str, str | Path] | None = None) -> Path:
    """An explicit override, else the registry's verified file; ModelError naming the fix otherwise."""
    if overrides and name in overrides:
        p = Path(overrides[name])
        if not p.is_file():
            raise ModelError(f"model file {p} given for {name} does not exist", "check the --model path")
        return p
    from ..models.registry import require

    return require(name)


@dataclass
class AnalyzerStatus:
    detector: str = "none"
    recognizer: str = "none"
    provider: str = "none"
    problems: list[Problem] = field(default_factory=list)


class FaceAnalyzer:
    def __init__(self, detector, recognizer: ArcFace | None, status: AnalyzerStatus):
        self.detector = detector
        self.recognizer = recognizer
        self.status = status

    @classmethod
    def load(cls, det_size: int = 640, providers: str = "auto",
             overrides: Mapping[str, str | Path] | None = None, allow_fallback: bool = True) -> "FaceAnalyzer":
        st = AnalyzerStatus()
        detector = None
        try:
            # the input size is fixed by det_size: a static-shape session (another is made if it changes)
            h = create_session(resolve_model("det_10g", overrides), providers,
                               static_inputs={"*": [1, 3, det_size, det_size]})
            detector = SCRFD(h, det_size=det_size)
            st.detector, st.provider = "scrfd", h.provider
            if detector.fixed_size and detector.fixed_size != det_size:
                st.problems.append(Problem("detector", "info", f"this {h.path.name} export only runs at "
                                           f"{detector.fixed_size} px, so det_size {det_size} is not used"))
                log.warning(st.problems[-1].text())
        except MirageError as exc:
            # the built-in detector works, less well: a warning, not a failure
            pr = from_error("detector", "warning", exc)
            st.problems.append(Problem("detector", "warning", f"{pr.message}; using OpenCV's built-in detector, which "
                                       "is less accurate", pr.fix))
            if not allow_fallback:
                raise
            log.warning("SCRFD detector unavailable (%s); using OpenCV's built-in detector", exc)
            detector = HaarFaceDetector()
            st.detector = "opencv-haar"
        recognizer = None
        try:
            h = create_session(resolve_model("w600k_r50", overrides), providers)
            recognizer = ArcFace(h)
            st.recognizer = "arcface"
            if st.provider == "none":
                st.provider = h.provider
        except MirageError as exc:
            st.problems.append(from_error("recognizer", "warning", exc))  # the pass-through reason is the error
            log.warning("ArcFace recognizer unavailable: %s", exc)
        return cls(detector, recognizer, st)

    def detect(self, img: np.ndarray, max_num: int = 0) -> list[Face]:
        return self.detector.detect(img, max_num)

    def embed(self, img: np.ndarray, face: Face) -> np.ndarray:
        if self.recognizer is None:
            raise ModelError("face embeddings need the ArcFace model (w600k_r50)",
                             "run `mirage models download buffalo_l`")
        face.embedding = self.recognizer.embed(img, face.kps)
        return face.embedding
