"""Files derived from a model file, kept in the cache so a warm start does not redo them.

Reading the swapper's emap and fixing the detector's input size both parse the ONNX file with
the ``onnx`` package, whose import alone takes about 2 s on two cores, on the way to the first
swapped frame. The results are cached, keyed by the model file's path, size and modification
time (a replaced file is derived anew). A cache that cannot be written is not an error: the
result is used and made again next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def derived_path(src: Path, what: str, suffix: str) -> Path | None:
    """Where the ``what`` derived from ``src`` is cached (None when ``src`` cannot be stat'ed)."""
    from ..paths import cache_dir

    try:
        st = Path(src).stat()
    except OSError:
        return None
    key = f"{Path(src).resolve()}|{st.st_size}|{st.st_mtime_ns}|{what}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir() / "derived" / f"{Path(src).stem}-{digest}{suffix}"


def store(path: Path | None, data: bytes) -> None:
    if path is None:
        return
    from ..fsutil import atomic_write_bytes

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data, "model cache")
    except Exception as exc:  # the cache is an optimisation only
        log.info("could not cache %s: %s", path.name, exc)


def load_json(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
