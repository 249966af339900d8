"""The Face record passed between detection, tracking, selection, swap and enhancement."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Face:
    bbox: np.ndarray  # (4,) x1, y1, x2, y2 in frame pixels
    kps: np.ndarray  # (5, 2) left eye, right eye, nose, left mouth, right mouth
    score: float
    embedding: np.ndarray | None = None  # L2-normalised ArcFace embedding (512,)
    track_id: int = -1
    stable: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2])
