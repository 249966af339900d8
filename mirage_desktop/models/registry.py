"""The model registry: what each model is, where it lives and whether it can be used.

``models.toml`` (repo root; ``mirage_desktop/models/models.toml`` links to it) lists every
model. This module reads it, applies ``MIRAGE_<NAME>_URL`` / ``MIRAGE_<NAME>_SHA256``
/ ``MIRAGE_<NAME>_SIZE``
overrides, and answers the three questions the app asks:

- :func:`model_path` — where a model's file goes (inside :func:`~mirage_desktop.config.models_dir`);
- :func:`status` — present / missing / corrupt / unverified, cheaply: SHA-256 results are
  cached by (path, size, mtime, ctime, inode) in the models dir, so only the first check
  reads the file;
- :func:`require` — the path of a verified model, or a :class:`ModelError` naming the fix.

A partial download (``*.part``) is never reported present nor returned. Models whose
checksum could not be confirmed from public sources have ``sha256 = None``; their hash is
pinned on first download into ``pins.json`` in the models dir (see :mod:`.download`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..paths import models_dir
from ..errors import ModelError, WriteError
from ..fsutil import atomic_write_text

log = logging.getLogger(__name__)

PINS_FILE = "pins.json"
VERIFY_CACHE_FILE = ".verify-cache.json"
PART_SUFFIX = ".part"

STATES = ("present", "missing", "corrupt", "unverified")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_json_lock = threading.RLock()


# ---------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class ArchiveMember:
    """One model the archive serves (a sibling of the model being downloaded)."""

    name: str                 # model name, e.g. "w600k_r50"
    filename: str             # its file in the models dir
    member: str               # base name inside the archive
    sha256: str | None        # after MIRAGE_<NAME>_SHA256; None: pinned on first extraction
    size: int | None


@dataclass(frozen=True)
class ArchiveSpec:
    """A model that ships inside an archive (e.g. insightface's ``buffalo_l.zip``)."""

    name: str                 # archive table name, e.g. "buffalo_l"
    url: str                  # after MIRAGE_<ARCHIVE>_URL override
    filename: str             # e.g. "buffalo_l.zip", downloaded into the models dir
    sha256: str | None        # None: unconfirmed, pinned on first download
    size: int | None
    member: str               # the member to extract (matched by base name)
    url_env: str              # the variable that overrides ``url``
    members: tuple[str, ...] = ()  # filenames of every model taken from this archive
    # every model still extracted from it (not made a direct download by MIRAGE_<NAME>_URL)
    served: tuple[ArchiveMember, ...] = ()

    @property
    def members_confirmed(self) -> bool:
        """Every model the archive serves has a confirmed hash: the archive needs no pin."""
        return bool(self.served) and all(m.sha256 is not None for m in self.served)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    url: str                              # after env override; the archive's url for archive members
    sha256: str | None                    # None: no confirmed checksum (pinned on first download)
    size: int | None                      # bytes, None if unknown
    license: str                          # human-readable licence name
    license_url: str
    commercial_use: bool
    needed_by: list[str] = field(default_factory=list)
    description: str = ""
    archive: ArchiveSpec | None = None
    sha256_source: str = ""
    url_env: str = ""                     # MIRAGE_<NAME>_URL
    url_env_aliases: tuple[str, ...] = ()  # e.g. MIRAGE_INSWAPPER_URL
    url_overridden: bool = False
    license_id: str = ""                  # key of the [licenses.*] table, e.g. "s-lab-1-0"

    @property
    def checksum_confirmed(self) -> bool:
        return self.sha256 is not None


def env_prefix(name: str) -> str:
    """``inswapper_128_fp16`` -> ``MIRAGE_INSWAPPER_128_FP16``."""
    return "MIRAGE_" + re.sub(r"[^0-9A-Za-z]+", "_", name).upper()


# ---------------------------------------------------------------------------- registry

class Registry:
    def __init__(self, models: Iterable[ModelSpec], archives: dict[str, dict] | None = None,
                 source: Path | None = None):
        self._models: dict[str, ModelSpec] = {m.name: m for m in models}
        self._archives = dict(archives or {})
        self.source = source

    def names(self) -> list[str]:
        return list(self._models)

    def specs(self) -> list[ModelSpec]:
        return list(self._models.values())

    def __iter__(self):
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def get(self, name: str) -> ModelSpec:
        try:
            return self._models[name]
        except KeyError:
            raise ModelError(
                f"unknown model {name!r}",
                f"known models: {', '.join(self._models)}",
            ) from None

    def groups(self) -> dict[str, list[ModelSpec]]:
        """Archive name -> the models extracted from it (``buffalo_l`` -> det_10g, w600k_r50)."""
        out: dict[str, list[ModelSpec]] = {}
        for aname, info in self._archives.items():
            # a member made a direct download by MIRAGE_<NAME>_URL still belongs to its pack
            out[aname] = [self._models[n] for n in info.get("_models", ()) if n in self._models]
        return {k: v for k, v in out.items() if v}

    def resolve(self, name: str) -> list[ModelSpec]:
        """A model name, or an archive/pack name such as ``buffalo_l``, to its models."""
        if name in self._models:
            return [self._models[name]]
        groups = self.groups()
        if name in groups:
            return groups[name]
        known = list(self._models) + [g for g in groups if g not in self._models]
        raise ModelError(f"unknown model {name!r}", f"known models: {', '.join(known)}")

    def needed_for(self, features: set[str] | Iterable[str]) -> list[ModelSpec]:
        wanted = set(features)
        return [m for m in self._models.values() if wanted.intersection(m.needed_by)]


def default_registry_path() -> Path:
    env = os.environ.get("MIRAGE_MODELS_TOML")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (Path(__file__).parent / "models.toml", here.parents[1] / "models.toml"):
        if candidate.is_file():
            return candidate
    return Path(__file__).parent / "models.toml"


def _bad(path: Path, what: str) -> ModelError:
    return ModelError(f"{path}: {what}", "fix models.toml (see the comments at its top)")


def _opt_sha(value, path: Path, where: str) -> str | None:
    if value in (None, ""):
        return None
    text = str(value).strip().lower()
    if not _HEX64.match(text):
        raise _bad(path, f"{where}: sha256 must be 64 hex digits or empty, got {value!r}")
    return text


def _opt_size(value, path: Path, where: str) -> int | None:
    if value in (None, 0, ""):
        return None
    if not isinstance(value, int) or value < 0:
        raise _bad(path, f"{where}: size must be a whole number of bytes, got {value!r}")
    return value


def _env_override(environ, names: Iterable[str]) -> tuple[str | None, str | None]:
    for var in names:
        val = environ.get(var)
        if val:
            return val.strip(), var
    return None, None


def _check_url(url: str, where: str, fix: str) -> str:
    """Only http(s) URLs with a host can be downloaded; anything else is a clear error."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ModelError(f"{where}: {url!r} is not an http:// or https:// URL", fix)
    return url


def _env_url(environ, names: Iterable[str]) -> str | None:
    url, var = _env_override(environ, names)
    if url:
        _check_url(url, var, f"set {var} to an http:// or https:// URL of the file, or unset it")
    return url


def _env_sha(environ, var: str) -> str | None:
    val = environ.get(var)
    return _opt_sha(val, Path(var), "environment") if val else None


def _env_size(environ, var: str) -> int | None:
    """``MIRAGE_<NAME>_SIZE``: the expected size in bytes; "" or 0 = unknown."""
    val = (environ.get(var) or "").strip()
    if not val:
        return None
    if not val.isdigit():
        raise ModelError(f"{var}: size must be a whole number of bytes, got {val!r}",
                         f"set {var} to the file's size in bytes, or unset it")
    return int(val) or None


def _sha_and_size(table: dict, environ, prefix: str, path: Path, where: str) -> tuple[str | None, int | None]:
    """A file's expected hash and size after the ``MIRAGE_<NAME>_SHA256`` / ``_SIZE`` overrides.

    A SHA-256 override means another file (e.g. another export), so the size in
    models.toml no longer applies: it is unknown unless ``MIRAGE_<NAME>_SIZE`` gives it.
    """
    sha = _opt_sha(table.get("sha256"), path, where)
    size = _opt_size(table.get("size"), path, where)
    env_sha = _env_sha(environ, prefix + "_SHA256")
    if env_sha:
        sha, size = env_sha, None
    if environ.get(prefix + "_SIZE", "").strip():
        size = _env_size(environ, prefix + "_SIZE")
    return sha, size


def load_registry(path: str | os.PathLike | None = None, environ=None) -> Registry:
    """Read ``models.toml`` and apply ``MIRAGE_<NAME>_URL`` / ``_SHA256`` / ``_SIZE`` overrides."""
    environ = os.environ if environ is None else environ
    path = Path(path) if path is not None else default_registry_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model list {path} not found",
                         "reinstall mirage-desktop or set MIRAGE_MODELS_TOML") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _bad(path, f"not valid TOML ({exc})") from None

    licenses = data.get("licenses", {})
    archives_raw = data.get("archives", {})
    models_raw = data.get("models", {})
    if not isinstance(models_raw, dict) or not models_raw:
        raise _bad(path, "no [models.*] tables")

    # First pass: each model's own fields after the environment overrides.
    entries: list[dict] = []
    filenames: dict[str, str] = {}
    for name, m in models_raw.items():
        where = f"[models.{name}]"
        if not isinstance(m, dict):
            raise _bad(path, f"{where} is not a table")
        filename = m.get("filename")
        if not filename or "/" in filename or "\\" in filename or filename.startswith("."):
            raise _bad(path, f"{where}: filename must be a plain file name")
        if filename in filenames:
            raise _bad(path, f"{where}: filename {filename} is also used by {filenames[filename]}")
        filenames[filename] = name
        prefix = env_prefix(name)
        aliases = tuple(m.get("url_env", ()))
        sha, size = _sha_and_size(m, environ, prefix, path, where)
        override = _env_url(environ, (prefix + "_URL", *aliases))
        entries.append(dict(name=name, m=m, where=where, filename=filename, prefix=prefix,
                            aliases=aliases, sha=sha, size=size, override=override))

    # archive -> model names using it, and their filenames
    archive_users: dict[str, list[tuple[str, str]]] = {}
    # archive -> the models still extracted from it (no URL override)
    archive_served: dict[str, list[ArchiveMember]] = {}
    for e in entries:
        m = e["m"]
        if m.get("archive"):
            archive_users.setdefault(m["archive"], []).append((e["name"], e["filename"]))
            if not e["override"] and m.get("member"):
                archive_served.setdefault(m["archive"], []).append(ArchiveMember(
                    name=e["name"], filename=e["filename"], member=m["member"],
                    sha256=e["sha"], size=e["size"]))

    specs: list[ModelSpec] = []
    built_archives: dict[str, tuple] = {}
    for e in entries:
        name, m, where, prefix = e["name"], e["m"], e["where"], e["prefix"]
        lic_key = m.get("license", "")
        lic = licenses.get(lic_key)
        if not isinstance(lic, dict):
            raise _bad(path, f"{where}: license {lic_key!r} has no [licenses.{lic_key}] table")

        archive: ArchiveSpec | None = None
        if e["override"]:
            # a direct file now: the pack's hash/size rules no longer apply to it
            url = e["override"]
        elif m.get("archive"):
            aname = m["archive"]
            a = archives_raw.get(aname)
            if not isinstance(a, dict):
                raise _bad(path, f"{where}: archive {aname!r} has no [archives.{aname}] table")
            if aname not in built_archives:
                a_where = f"[archives.{aname}]"
                a_prefix = env_prefix(aname)
                a_url = _env_url(environ, (a_prefix + "_URL",))
                if not a_url and a.get("url"):
                    _check_url(a["url"], f"{path}: {a_where}", "fix models.toml (see the comments at its top)")
                a_sha, a_size = _sha_and_size(a, environ, a_prefix, path, a_where)
                built_archives[aname] = (a_url or a.get("url"), a_sha, a_size, a_prefix)
            a_url, a_sha, a_size, a_prefix = built_archives[aname]
            if not a_url or not a.get("filename") or not m.get("member"):
                raise _bad(path, f"{where}: archive entries need url, filename and member")
            archive = ArchiveSpec(
                name=aname, url=a_url, filename=a["filename"], sha256=a_sha, size=a_size,
                member=m["member"], url_env=a_prefix + "_URL",
                members=tuple(fn for _n, fn in archive_users.get(aname, ())),
                served=tuple(archive_served.get(aname, ())),
            )
            url = archive.url
        else:
            url = m.get("url", "")
            if not url:
                raise _bad(path, f"{where}: needs url, or archive + member")
            _check_url(url, f"{path}: {where}", "fix models.toml (see the comments at its top)")

        specs.append(ModelSpec(
            name=name, filename=e["filename"], url=url, sha256=e["sha"], size=e["size"],
            license=str(lic.get("name", lic_key)), license_url=str(lic.get("url", "")),
            commercial_use=bool(lic.get("commercial_use", False)),
            needed_by=list(m.get("needed_by", [])), description=str(m.get("description", "")),
            archive=archive, sha256_source=str(m.get("sha256_source", "")),
            url_env=prefix + "_URL", url_env_aliases=e["aliases"], url_overridden=bool(e["override"]),
            license_id=str(lic_key),
        ))

    archives = {k: {**v, "_models": [n for n, _ in archive_users.get(k, ())]}
                for k, v in archives_raw.items() if isinstance(v, dict)}
    return Registry(specs, archives, source=path)


# ---------------------------------------------------------------------------- paths, pins, cache

def model_path(spec: ModelSpec) -> Path:
    return models_dir() / spec.filename


def part_path(path: Path) -> Path:
    return path.with_name(path.name + PART_SUFFIX)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return {}


def _update_json(path: Path, key: str, value: dict | None, what: str = "") -> None:
    """Set (or with None remove) ``key`` in a small JSON file, written atomically: a failed
    write raises :class:`WriteError` naming the file and leaves the old one whole."""
    with _json_lock:
        data = _read_json(path)
        if value is None:
            if key not in data:
                return
            data.pop(key)
        else:
            data[key] = value
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", what)


def pins_path() -> Path:
    return models_dir() / PINS_FILE


def pinned_sha256(name: str) -> str | None:
    """The hash pinned on first download for a model (or archive) with no confirmed hash."""
    entry = _read_json(pins_path()).get(name)
    if isinstance(entry, dict):
        sha = str(entry.get("sha256", "")).lower()
        if _HEX64.match(sha):
            return sha
    return None


def pin_sha256(name: str, sha256: str, *, url: str = "", size: int | None = None) -> None:
    """Pin ``name``'s hash in pins.json; :class:`WriteError` (naming the file) if it cannot be written."""
    _update_json(pins_path(), name, {
        "sha256": sha256, "url": url, "size": size,
        "pinned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, "pins file")


def forget_pin(name: str) -> None:
    _update_json(pins_path(), name, None, "pins file")


def expected_sha256(spec: ModelSpec) -> str | None:
    """The confirmed hash from models.toml / env, else the hash pinned on first download."""
    return spec.sha256 or pinned_sha256(spec.name)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            buf = fh.read(chunk)
            if not buf:
                break
            h.update(buf)
    return h.hexdigest()


def _cache_key(path: Path) -> str:
    return str(path.resolve())


def _stat_key(st: os.stat_result) -> dict:
    # mtime alone can be restored (cp -p, rsync -t, utime); ctime cannot be set by the user
    # and changes on any write, and a file copied or renamed over this one has another inode.
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino}


def cached_sha256(path: Path, *, refresh: bool = False) -> str:
    """SHA-256 of ``path``, cached in the models dir by (path, size, mtime, ctime, inode)."""
    st = path.stat()
    cache_file = models_dir() / VERIFY_CACHE_FILE
    key = _cache_key(path)
    if not refresh:
        entry = _read_json(cache_file).get(key)
        if (isinstance(entry, dict) and _HEX64.match(str(entry.get("sha256", "")))
                and all(entry.get(k) == v for k, v in _stat_key(st).items())):
            return entry["sha256"]
    digest = sha256_file(path)
    remember_sha256(path, digest, st)
    return digest


def remember_sha256(path: Path, digest: str, st: os.stat_result | None = None) -> None:
    try:
        st = st or path.stat()
        _update_json(models_dir() / VERIFY_CACHE_FILE, _cache_key(path),
                     {**_stat_key(st), "sha256": digest}, "verification cache")
    except (OSError, WriteError) as exc:  # a read-only or full models dir still works, just slower
        log.debug("cannot write verification cache: %s", exc)


# ---------------------------------------------------------------------------- status

@dataclass(frozen=True)
class ModelStatus:
    state: str            # "present" | "missing" | "corrupt" | "unverified"
    path: Path
    size: int | None      # bytes on disk, None if missing
    detail: str = ""
    sha256: str | None = None   # the file's actual hash, when it was computed

    @property
    def ok(self) -> bool:
        return self.state == "present"


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def status(spec: ModelSpec, *, refresh: bool = False) -> ModelStatus:
    """Is the model usable? ``refresh`` re-hashes the file instead of trusting the cache."""
    path = model_path(spec)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: the models dir is a file
        part = part_path(path)
        detail = "not downloaded"
        if part.exists():
            detail = f"partial download ({_mb(part.stat().st_size)} of {_mb(spec.size)}); download resumes it"
        return ModelStatus("missing", path, None, detail)
    if not path.is_file():
        return ModelStatus("corrupt", path, None, "not a regular file")
    if spec.size is not None and st.st_size != spec.size:
        return ModelStatus("corrupt", path, st.st_size,
                           f"size mismatch: {st.st_size} bytes, expected {spec.size}")
    expected = expected_sha256(spec)
    if expected is None:
        return ModelStatus("unverified", path, st.st_size,
                           "no confirmed or pinned checksum to verify against")
    actual = cached_sha256(path, refresh=refresh)
    if actual != expected:
        return ModelStatus("corrupt", path, st.st_size,
                           f"sha256 mismatch: {actual[:12]}…, expected {expected[:12]}…", actual)
    how = "sha256 ok" if spec.sha256 else "sha256 matches the hash pinned on first download"
    return ModelStatus("present", path, st.st_size, how, actual)


# ---------------------------------------------------------------------------- require

_default_registry: Registry | None = None
_default_key: tuple | None = None


def _registry_for_require() -> Registry:
    global _default_registry, _default_key
    path = default_registry_path()
    env = tuple(sorted((k, v) for k, v in os.environ.items()
                       if k.startswith("MIRAGE_") and k.endswith(("_URL", "_SHA256", "_SIZE"))))
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = None
    key = (str(path), mtime, env)
    if _default_registry is None or key != _default_key:
        _default_registry = load_registry(path)
        _default_key = key
    return _default_registry


def require(name: str | ModelSpec, registry: Registry | None = None) -> Path:
    """The path of a verified model, or :class:`ModelError` naming the fix.

    >>> require("inswapper_128_fp16")  # doctest: +SKIP
    ModelError: inswapper_128_fp16 is missing — run `mirage models download inswapper_128_fp16`
    """
    spec = name if isinstance(name, ModelSpec) else (registry or _registry_for_require()).get(name)
    st = status(spec)
    if st.state == "present":
        return st.path
    n = spec.name
    if st.state == "missing":
        raise ModelError(f"{n} is missing", f"run `mirage models download {n}`")
    if st.state == "corrupt":
        reason = "sha256 mismatch" if "sha256" in st.detail else st.detail
        raise ModelError(f"{n} is corrupt ({reason})", f"run `mirage models download --force {n}`")
    raise ModelError(
        f"{n} cannot be verified (no confirmed or pinned checksum)",
        f"run `mirage models download --force {n}` to fetch and pin it, "
        f"or `mirage models verify --pin {n}` to trust the file you have",
    )
