"""ArcFace embeddings (insightface buffalo_l w600k_r50): 112x112 aligned RGB → 512-d, L2-normalised."""

from __future__ import annotations

import cv2
import numpy as np

from ..models.runtime import SessionHandle
from .align import align_matrix, warp_crop


class ArcFace:
    name = "arcface"

    def __init__(self, handle: SessionHandle, mean: float = 127.5, std: float = 127.5):
        from ..models import contract

        self.handle = handle
        contract.check(handle, contract.ARCFACE)
        inp = handle.inputs[0]
        self.input_name = inp.name
        self.size = 112
        self.output_name = handle.outputs[0].name
        self.mean, self.std = mean, std

    def embed_aligned(self, crops: list[np.ndarray]) -> np.ndarray:
        blob = cv2.dnn.blobFromImages(crops, 1.0 / self.std, (self.size, self.size),
                                      (self.mean, self.mean, self.mean), swapRB=True)
        out = self.handle.run({self.input_name: blob}, [self.output_name])[0].astype(np.float32)
        out = out.reshape(len(crops), -1)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def embed(self, img: np.ndarray, kps: np.ndarray) -> np.ndarray:
        m = align_matrix(kps, self.size)
        return self.embed_aligned([warp_crop(img, m, self.size)])[0]
