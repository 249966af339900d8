"""Source identities: who the user turns into.

An identity is built from one or more photos: each photo is checked (a face is found, it is
big, sharp, frontal enough and confidently detected), the ArcFace embeddings of the photos
that pass are averaged and normalised. Embeddings are cached on disk by image hash.
Identities are saved in the user's data dir with the consent the user gave for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..config import cache_dir, data_dir
from ..errors import InputImageError, MirageError
from ..fsutil import atomic_write_bytes, atomic_write_text
from .align import align_matrix, warp_crop
from .analysis import FaceAnalyzer
from .face import Face
from .image_io import load_image

log = logging.getLogger(__name__)

EMBEDDING_DIM = 512  # ArcFace w600k_r50; the swapper's emap is 512x512


def usable_embedding(emb) -> str | None:
    """Why ``emb`` cannot drive a swap (wrong shape, NaN/inf, all zero), or None if it can.
    A bad embedding would give the swapper a NaN latent and paint a black face. Judged as the
    float32 vector the swapper gets (a float64 1e300 becomes inf there)."""
    a = np.asarray(emb) if emb is not None else None
    if a is None or a.dtype.kind not in "fiu":
        return "it is not a numeric vector"
    if a.shape != (EMBEDDING_DIM,):
        return f"it has shape {a.shape}, not ({EMBEDDING_DIM},)"
    with np.errstate(over="ignore"):
        a = a.astype(np.float32)
    if not np.isfinite(a).all():
        return "it holds NaN or infinite values"
    if float(np.linalg.norm(a)) < 1e-6:
        return "it is all zeros"
    return None


MAX_EMBEDDING_FILE = 64 * 1024  # a 512-float .npy is about 2-4 kB; anything far bigger is not one


def load_embedding(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(embedding, None) from a .npy file, or (None, why it cannot be used); never raises for a bad
    file (an oversized or lying header, a pickle, garbage) and never reads more than a few kB."""
    try:
        size = path.stat().st_size
        if size > MAX_EMBEDDING_FILE:
            return None, f"the file is {size} bytes, far too big for an embedding"
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, MemoryError) as exc:
        return None, f"it cannot be read ({' '.join(str(exc).split())[:80]})"
    why = usable_embedding(a)
    return (a.astype(np.float32), None) if why is None else (None, why)


MIN_FACE_PX = 80
BLUR_MIN = 25.0  # variance of the Laplacian on a 224 px aligned crop
MAX_YAW = 0.35  # nose offset from the eye midline, in eye distances (~35 degrees)
MAX_ROLL_DEG = 30.0
MIN_SCORE = 0.5


@dataclass
class QualityCheck:
    name: str
    passed: bool
    score: float
    reason: str
    critical: bool = True


@dataclass
class PhotoReport:
    source: str
    image_hash: str
    faces_found: int
    face: Face | None
    checks: list[QualityCheck]
    embedding: np.ndarray | None = None

    @property
    def passed(self) -> bool:
        return self.face is not None and all(c.passed for c in self.checks if c.critical)

    def summary(self) -> str:
        bad = [c.reason for c in self.checks if not c.passed]
        return "ok" if not bad else "; ".join(bad)


def image_hash(img: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(img.shape).encode())
    h.update(np.ascontiguousarray(img).data)
    return h.hexdigest()[:32]


def sharpness(img: np.ndarray, face: Face) -> float:
    crop = warp_crop(img, align_matrix(face.kps, 224), 224)
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def head_pose(face: Face) -> tuple[float, float]:
    """(yaw ratio, roll degrees) from the five keypoints."""
    le, re_, nose = face.kps[0], face.kps[1], face.kps[2]
    eye_mid = (le + re_) / 2
    eye_vec = re_ - le
    eye_dist = float(np.linalg.norm(eye_vec)) or 1.0
    roll = float(np.degrees(np.arctan2(eye_vec[1], eye_vec[0])))
    # nose offset along the eye line, in eye distances
    yaw = float(np.dot(nose - eye_mid, eye_vec / eye_dist) / eye_dist)
    return yaw, roll


def check_photo(img: np.ndarray, faces: list[Face]) -> tuple[Face | None, list[QualityCheck]]:
    checks: list[QualityCheck] = []
    if not faces:
        checks.append(QualityCheck("face found", False, 0.0,
                                   "no face found — use a photo with one clear, frontal, well-lit face"))
        return None, checks
    faces = sorted(faces, key=lambda f: f.area, reverse=True)
    face = faces[0]
    checks.append(QualityCheck("face found", True, 1.0, "face found"))
    if len(faces) > 1:
        cx, cy = face.center
        checks.append(QualityCheck(
            "single face", True, float(faces[1].area / face.area),
            f"{len(faces)} faces found; using the largest (centre {int(cx)},{int(cy)})", critical=False))
    size = min(face.width, face.height)
    checks.append(QualityCheck("face size", size >= MIN_FACE_PX, float(size),
                               f"face is {int(size)} px" if size >= MIN_FACE_PX else
                               f"face is too small ({int(size)} px, need {MIN_FACE_PX}) — use a closer or "
                               f"higher-resolution photo"))
    sharp = sharpness(img, face)
    checks.append(QualityCheck("sharpness", sharp >= BLUR_MIN, sharp,
                               f"sharp enough (Laplacian variance {sharp:.0f})" if sharp >= BLUR_MIN else
                               f"photo is blurry (Laplacian variance {sharp:.0f}, need {BLUR_MIN:.0f}) — "
                               f"use a sharper photo"))
    yaw, roll = head_pose(face)
    pose_ok = abs(yaw) <= MAX_YAW and abs(roll) <= MAX_ROLL_DEG
    checks.append(QualityCheck("head pose", pose_ok, float(abs(yaw)),
                               f"frontal enough (yaw {yaw:+.2f}, roll {roll:+.0f}°)" if pose_ok else
                               f"head is turned or tilted too far (yaw {yaw:+.2f}, roll {roll:+.0f}°) — "
                               f"use a photo looking at the camera"))
    checks.append(QualityCheck("detector confidence", face.score >= MIN_SCORE, face.score,
                               f"confidence {face.score:.2f}" if face.score >= MIN_SCORE else
                               f"the detector is unsure this is a face (confidence {face.score:.2f}) — "
                               f"use a clearer photo"))
    return face, checks


@dataclass
class SourceIdentity:
    name: str
    embedding: np.ndarray | None
    reports: list[PhotoReport] = field(default_factory=list)
    thumbnail: np.ndarray | None = None
    consent: bool = False
    problem: str | None = None  # why the saved embedding cannot be used (it is rebuilt when chosen)

    @property
    def usable(self) -> bool:
        return self.embedding is not None


class IdentityBuilder:
    def __init__(self, analyzer: FaceAnalyzer, cache: Path | None = None):
        self.analyzer = analyzer
        self.cache = cache or (cache_dir() / "embeddings")

    def _cache_key(self, h: str) -> Path:
        rec = self.analyzer.recognizer
        tag = f"{rec.handle.path.name}-{rec.handle.path.stat().st_size}" if rec else "none"
        return self.cache / f"{h}-{hashlib.sha1(tag.encode()).hexdigest()[:8]}.npy"

    def analyse_photo(self, source, label: str | None = None) -> PhotoReport:
        img = source if isinstance(source, np.ndarray) else load_image(source)
        label = label or (str(source) if not isinstance(source, np.ndarray) else "image")
        h = image_hash(img)
        faces = self.analyzer.detect(img)
        face, checks = check_photo(img, faces)
        rep = PhotoReport(label, h, len(faces), face, checks)
        if rep.passed and self.analyzer.recognizer is not None:
            rep.embedding = self._cached_embedding(img, face, h)
            face.embedding = rep.embedding
        rep._image = img  # for the thumbnail; not persisted
        return rep

    def _cached_embedding(self, img: np.ndarray, face: Face, h: str) -> np.ndarray:
        """The photo's embedding from the cache, or computed (and cached). A cache entry that is
        unreadable, the wrong shape or not finite is rebuilt; a cache that cannot be written is
        only a warning (it saves time, nothing more)."""
        from ..errors import ModelError, WriteError

        cp = self._cache_key(h)
        if cp.exists():
            cached, why = load_embedding(cp)
            if why is None:
                return cached
            log.warning("cached embedding %s is unusable (%s); computing it again", cp.name, why)
        emb = np.asarray(self.analyzer.embed(img, face), np.float32)
        why = usable_embedding(emb)
        if why is not None:
            raise ModelError(f"the face recognizer gave an unusable embedding ({why})",
                             "re-download it with `mirage models download --force buffalo_l`")
        import io

        buf = io.BytesIO()
        np.save(buf, emb)
        try:
            atomic_write_bytes(cp, buf.getvalue(), "embedding cache")
        except WriteError as exc:
            log.warning("%s (the embedding is used, just not cached)", exc)
        return emb

    def build(self, sources: list, name: str | None = None) -> SourceIdentity:
        if not sources:
            raise InputImageError("no source photo given", "pass --source PHOTO")
        return self.build_from_reports([self.analyse_photo(s) for s in sources], name)

    def build_from_reports(self, reports: list[PhotoReport], name: str | None = None) -> SourceIdentity:
        """An identity from photos already analysed (so a picker can show each report first).

        Raises InputImageError (with ``.reports`` attached) when no photo passed."""
        good = [r for r in reports if r.passed]
        if not good:
            why = "; ".join(f"{Path(r.source).name}: {r.summary()}" for r in reports)
            err = InputImageError(f"no usable face in the source photo(s): {why}")
            err.reports = reports
            raise err
        emb = None
        embs = [r.embedding for r in good if r.embedding is not None and usable_embedding(r.embedding) is None]
        if embs:
            emb = np.mean(embs, axis=0)
            norm = float(np.linalg.norm(emb))
            # opposite embeddings can cancel out: an all-zero mean is no identity
            emb = (emb / norm).astype(np.float32) if norm > 1e-6 else None
        first = good[0]
        thumb = warp_crop(first._image, align_matrix(first.face.kps, 256, "ffhq"), 256)
        nm = name or Path(str(good[0].source)).stem
        return SourceIdentity(nm, emb, reports, thumb)


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "identity"
    return s[:64]


class IdentityStore:
    """Saved identities: ``<data>/identities/<slug>/{meta.json, embedding.npy, thumb.png}``."""

    def __init__(self, root: Path | None = None):
        self.root = root or (data_dir() / "identities")

    def _find(self, name: str) -> Path | None:
        """The folder holding the identity called ``name`` (folder names are only slugs)."""
        if not self.root.exists():
            return None
        for d in sorted(self.root.iterdir()):
            try:
                if json.loads((d / "meta.json").read_text())["name"] == name:
                    return d
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None

    def _dir_for(self, name: str) -> Path:
        """The existing folder for ``name``, or a new one whose slug no other identity uses."""
        d = self._find(name)
        if d is not None:
            return d
        base = _slug(name)
        d, i = self.root / base, 2
        while d.exists():  # "Иван" and "Пётр" share a slug: never overwrite another person
            d, i = self.root / f"{base}-{i}", i + 1
        return d

    def save(self, ident: SourceIdentity) -> Path:
        if ident.embedding is None:
            raise MirageError(f"identity {ident.name!r} has no embedding",
                              "download the recognition model with `mirage models download buffalo_l`")
        d = self._dir_for(ident.name)
        import io

        buf = io.BytesIO()
        np.save(buf, ident.embedding)
        atomic_write_bytes(d / "embedding.npy", buf.getvalue(), "saved identity")
        if ident.thumbnail is not None:
            ok, enc = cv2.imencode(".png", ident.thumbnail)
            if ok:
                atomic_write_bytes(d / "thumb.png", enc.tobytes(), "saved identity")
        meta = {
            "name": ident.name,
            "saved": time.time(),
            "consent": bool(ident.consent),
            "photos": [{"source": r.source, "hash": r.image_hash, "passed": r.passed,
                        "checks": [asdict(c) for c in r.checks]} for r in ident.reports],
        }
        atomic_write_text(d / "meta.json", json.dumps(meta, indent=2), "saved identity")
        return d

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        out = []
        for d in sorted(self.root.iterdir()):
            try:
                out.append(json.loads((d / "meta.json").read_text())["name"])
            except (OSError, ValueError, KeyError):
                continue
        return out

    def load(self, name: str, builder: "IdentityBuilder | None" = None, *,
             require_embedding: bool = True) -> SourceIdentity:
        """The saved identity. An embedding that is missing, the wrong shape or not finite is
        rebuilt from the identity's photos when they are still there (and ``builder`` is given)
        and saved again; otherwise a MirageError says to add the identity again. With
        ``require_embedding=False`` (the gallery) it is returned as it is, ``problem`` saying why."""
        d = self._find(name) or self.root / _slug(name)
        try:
            meta = json.loads((d / "meta.json").read_text())
            meta["name"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MirageError(f"saved identity {name!r} cannot be read ({' '.join(str(exc).split())[:120]})",
                              "add it again from its photos") from None
        emb, why = load_embedding(d / "embedding.npy")
        thumb = cv2.imread(str(d / "thumb.png")) if (d / "thumb.png").exists() else None
        ident = SourceIdentity(meta["name"], None, [], thumb, bool(meta.get("consent")))
        ident.meta = meta
        if why is None:
            ident.embedding = emb
            return ident
        ident.problem = why
        if not require_embedding:  # listing the gallery: show it, it is rebuilt when it is used
            return ident
        log.warning("saved identity %r: its embedding is unusable (%s)", name, why)
        photos = [p["source"] for p in meta.get("photos", []) if p.get("passed") and Path(p["source"]).is_file()]
        if builder is None:
            raise MirageError(f"saved identity {name!r} has an unusable face embedding ({why}) and cannot be "
                              f"rebuilt here", "load the face models, then choose it again, or add it again")
        if not photos:
            raise MirageError(f"saved identity {name!r} has an unusable face embedding ({why}) and its photos are "
                              f"gone", "add it again from its photos")
        rebuilt = builder.build(photos, meta["name"])
        if rebuilt.embedding is None:
            raise MirageError(f"saved identity {name!r} could not be rebuilt from its photos",
                              "add it again from its photos")
        ident.embedding, ident.reports = rebuilt.embedding, rebuilt.reports
        try:
            self.save(ident)
        except MirageError as exc:
            log.warning("the rebuilt identity could not be saved: %s", exc)
        log.warning("saved identity %r: embedding rebuilt from %d photo(s)", name, len(photos))
        return ident

    def set_consent(self, name: str, consent: bool = True) -> None:
        d = self._find(name)
        if d is None:
            raise MirageError(f"no saved identity called {name!r}", "add it from its photos")
        meta = json.loads((d / "meta.json").read_text())
        meta["consent"] = bool(consent)
        atomic_write_text(d / "meta.json", json.dumps(meta, indent=2), "saved identity")

    def delete(self, name: str) -> None:
        import shutil

        d = self._find(name)
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)
