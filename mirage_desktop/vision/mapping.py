"""Face mapping: a different identity for each person in the picture.

A :class:`FaceMap` holds entries: whom to look for (a reference embedding, from a photo or a face
picked in the preview), whom they become (the swapper's latent of a source identity) and a label
(the identity's name, shown on the preview). :meth:`FaceMap.assign` gives every face of a frame
the latent of the entry its ArcFace embedding matches, or None (that person stays themselves):

* unique: each entry goes to at most one face per frame, greedily, the most similar pairs first,
  and only at a cosine similarity of ``threshold`` (``match_threshold``) or more;
* steady: a tracked face (``track_id >= 0``) keeps the entry it had unless another entry is more
  similar by more than :data:`HYSTERESIS` (its own entry counts that much more, and keeps it down
  to ``threshold - HYSTERESIS``), so noise in the embedding, or two people crossing, flips no one;
* a tracked face without an embedding (not embedded yet) keeps its track's last entry, if no
  other face holds it this frame; otherwise it gets none.

The per-track memory lives here; tracks that are no longer among the faces are forgotten. A map
serves one stream: :meth:`FaceMap.fresh` gives another stream (or a still) the same entries
without the memory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .face import Face

HYSTERESIS = 0.05  # how much more similar another entry must be to take a tracked face's own
LATENT = "latent"  # ``face.extra`` key: the latent the map gave this face on this frame
LABEL = "label"  # ``face.extra`` key: the label of its entry


@dataclass(frozen=True, eq=False)
class MapEntry:
    reference: np.ndarray  # (512,) L2-normalised: the person to look for
    latent: np.ndarray  # (1, 512): the identity they become
    label: str  # e.g. the identity's name


def normalised(embedding) -> np.ndarray:
    e = np.asarray(embedding, np.float32).reshape(-1)
    return e / max(float(np.linalg.norm(e)), 1e-12)


class FaceMap:
    def __init__(self, entries, margin: float = HYSTERESIS):
        self.entries: tuple[MapEntry, ...] = tuple(entries)
        self.margin = float(margin)
        self._refs = (np.stack([normalised(e.reference) for e in self.entries]) if self.entries
                      else np.zeros((0, 512), np.float32))
        self._memory: dict[int, int] = {}  # track id -> index of the entry it had last frame
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.entries]

    def fresh(self) -> "FaceMap":
        """The same entries, no memory of any track (for another stream, or a still)."""
        return FaceMap(self.entries, self.margin)

    def assign_entries(self, faces: list[Face], threshold: float) -> list[MapEntry | None]:
        """The entry of each face (None: unmapped), as the module says."""
        with self._lock:
            return self._assign(faces, float(threshold))

    def assign(self, faces: list[Face], threshold: float) -> list[np.ndarray | None]:
        """One latent (1, 512) per face, or None for a face no entry is given to."""
        return [e.latent if e is not None else None for e in self.assign_entries(faces, threshold)]

    def _assign(self, faces: list[Face], threshold: float) -> list[MapEntry | None]:
        out: list[int | None] = [None] * len(faces)
        taken: set[int] = set()
        mem = self._memory
        held = [i for i, f in enumerate(faces) if f.embedding is None and f.track_id >= 0 and f.track_id in mem]
        for i in held:  # not embedded yet: the track's last entry, first come
            k = mem[faces[i].track_id]
            if k not in taken:
                out[i] = k
                taken.add(k)
        pairs = []
        for i, f in enumerate(faces):
            if f.embedding is None or not len(self.entries):
                continue
            sims = self._refs @ normalised(f.embedding)
            own = mem.get(f.track_id) if f.track_id >= 0 else None
            for k, s in enumerate(sims):
                s = float(s)
                if k == own:  # its own entry counts the margin more, and is kept down to the margin below
                    if s >= threshold - self.margin:
                        pairs.append((s + self.margin, i, k))
                elif s >= threshold:
                    pairs.append((s, i, k))
        pairs.sort(key=lambda p: -p[0])
        for _, i, k in pairs:
            if out[i] is None and k not in taken:
                out[i] = k
                taken.add(k)
        # remember this frame's entries; a track that is gone (or got none) is forgotten
        self._memory = {f.track_id: out[i] for i, f in enumerate(faces) if f.track_id >= 0 and out[i] is not None}
        return [self.entries[k] if k is not None else None for k in out]


def face_latents(faces: list[Face]) -> np.ndarray:
    """The latents a face map gave ``faces`` on this frame, one row per face: (n, 512)."""
    return np.concatenate([np.asarray(f.extra[LATENT], np.float32).reshape(1, -1) for f in faces])


def choose_mapped(faces: list[Face], face_map: FaceMap, threshold: float) -> list[Face]:
    """The faces ``face_map`` gives an identity to, each carrying its latent and label in
    ``face.extra``, largest first. With a map every mapped face is swapped, whatever
    ``max_faces`` says: the map's entries (one face each) are the limit."""
    chosen = []
    for f, e in zip(faces, face_map.assign_entries(faces, threshold)):
        if e is None:
            f.extra.pop(LATENT, None)
            f.extra.pop(LABEL, None)
            continue
        f.extra[LATENT], f.extra[LABEL] = e.latent, e.label
        chosen.append(f)
    return sorted(chosen, key=lambda f: f.area, reverse=True)
