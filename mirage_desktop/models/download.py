"""Download model weights: stream, resume, verify, move into place atomically.

The file is streamed into ``<name>.part`` beside its final path. A dropped connection is
retried a few times with back-off, each retry resuming with an HTTP ``Range`` request.
Only when the whole file is there *and* its size and SHA-256 match is it renamed onto the
final path (an atomic rename on the same file system), so a partial or corrupt file is
never loaded. A file that fails verification is deleted.

Models whose checksum could not be confirmed from public sources (``sha256 = None``) are
pinned on first download: the hash is stored in ``pins.json`` in the models dir with a
visible warning, and every later download must match it.

Archive members (insightface's ``buffalo_l.zip``) are downloaded as the archive, which is
verified (or pinned), and the member is extracted to ``<name>.part``, verified against
its own hash and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import threading
import zipfile
from pathlib import Path
from typing import Callable

import requests

from .. import __version__
from ..config import models_dir
from ..errors import ModelError
from .registry import (
    ModelSpec,
    cached_sha256,
    forget_pin,
    model_path,
    part_path,
    pin_sha256,
    pinned_sha256,
    pins_path,
    remember_sha256,
    sha256_file,
    status,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0   # seconds to open the connection
READ_TIMEOUT = 60.0      # seconds without a byte before we give up on this attempt
RETRIES = 4              # extra attempts after a dropped connection / 5xx
BACKOFF = (1.0, 2.0, 4.0, 8.0)
CHUNK = 1 << 20
SPACE_MARGIN = 16 << 20  # keep this much free beyond the file itself

ProgressFn = Callable[[int, "int | None"], None]
WarnFn = Callable[[str], None]


class DownloadCancelled(ModelError):
    """The caller's ``cancel_event`` was set; the ``.part`` file is kept for resuming."""


class _Retry(Exception):
    """A transient failure worth another attempt (dropped connection, 5xx, short body)."""


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


def _default_warn(message: str) -> None:
    log.warning(message)
    print(f"mirage: WARNING: {message}", file=sys.stderr, flush=True)


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
        return "host not found (DNS)"
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, _Retry)):
        return str(exc) if isinstance(exc, _Retry) else "connection dropped mid-way"
    return type(exc).__name__


def _disk_full(label: str, where: Path, need: int | None) -> ModelError:
    return ModelError(
        f"disk full while downloading {label} into {where}" + (f" (needs {_mb(need)})" if need else ""),
        "free some space, or set MIRAGE_MODELS_DIR to a bigger disk",
    )


class _Fetch:
    """One file from one URL into ``dest`` via ``dest.part``; see :func:`download`."""

    def __init__(self, *, name: str, label: str, url: str, dest: Path, sha256: str | None,
                 size: int | None, env_var: str, pin_key: str, progress: bool,
                 cancel_event: threading.Event | None, on_progress: ProgressFn | None,
                 on_warning: WarnFn):
        self.name, self.label, self.url, self.dest = name, label, url, dest
        self.sha256, self.size, self.env_var, self.pin_key = sha256, size, env_var, pin_key
        self.progress, self.cancel_event, self.on_progress = progress, cancel_event, on_progress
        self.on_warning = on_warning
        self.part = part_path(dest)
        self.bar = None

    # -- helpers
    def _cancelled(self) -> bool:
        return self.cancel_event is not None and self.cancel_event.is_set()

    def _raise_cancelled(self):
        raise DownloadCancelled(f"download of {self.label} cancelled",
                                f"the partial file is kept; download {self.name} again to resume")

    def _fix(self) -> str:
        return (f"run `mirage models download --force {self.name}` to try again, "
                f"or set {self.env_var} to another source")

    def _report(self, done: int, total: int | None) -> None:
        if self.bar is not None:
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.n = done
            self.bar.refresh()
        if self.on_progress is not None:
            self.on_progress(done, total)

    def _check_space(self, offset: int) -> None:
        if not self.size:
            return
        need = self.size - offset
        try:
            free = shutil.disk_usage(self.dest.parent).free
        except OSError:
            return
        if free < need + SPACE_MARGIN:
            raise ModelError(
                f"not enough disk space for {self.label}: needs {_mb(need)}, "
                f"{_mb(free)} free in {self.dest.parent}",
                "free some space, or set MIRAGE_MODELS_DIR to a bigger disk",
            )

    # -- the work
    def run(self) -> str:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        if self.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=self.size, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=self.label, file=sys.stderr, leave=True, dynamic_ncols=True)
        try:
            self._transfer()
            return self._verify_and_install()
        finally:
            if self.bar is not None:
                self.bar.close()

    def _transfer(self) -> None:
        session = requests.Session()
        session.headers.update({"User-Agent": f"mirage-desktop/{__version__}",
                                "Accept-Encoding": "identity"})
        attempt = 0
        try:
            while True:
                if self._cancelled():
                    self._raise_cancelled()
                offset = self.part.stat().st_size if self.part.exists() else 0
                if self.size is not None and offset > self.size:
                    self.part.unlink()
                    offset = 0
                if self.size is not None and offset == self.size:
                    return
                self._check_space(offset)
                try:
                    if self._attempt(session, offset):
                        return
                    raise _Retry("the connection closed before the whole file arrived")
                except (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError, _Retry) as exc:
                    attempt += 1
                    got = self.part.stat().st_size if self.part.exists() else 0
                    if attempt > RETRIES:
                        if got == 0:
                            raise ModelError(
                                f"cannot download {self.label} from {self.url}: {_reason(exc)}",
                                f"check the network connection, or set {self.env_var} to a reachable mirror",
                            ) from None
                        raise ModelError(
                            f"download of {self.label} from {self.url} kept failing ({_reason(exc)}); "
                            f"{_mb(got)} of {_mb(self.size)} kept",
                            f"run `mirage models download {self.name}` again to resume, "
                            f"or set {self.env_var} to another source",
                        ) from None
                    delay = BACKOFF[min(attempt - 1, len(BACKOFF) - 1)]
                    log.info("%s: %s; retry %d/%d in %.1fs (resuming at %d bytes)",
                             self.label, _reason(exc), attempt, RETRIES, delay, got)
                    if self.cancel_event is not None:
                        if self.cancel_event.wait(delay):
                            self._raise_cancelled()
                    elif delay > 0:
                        threading.Event().wait(delay)
        finally:
            session.close()

    def _attempt(self, session: requests.Session, offset: int) -> bool:
        """One request. True when the body arrived complete, False when it stopped short."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with session.get(self.url, stream=True, headers=headers,
                         timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as r:
            code = r.status_code
            if code == 416 and offset:
                # Range not satisfiable: the .part may already hold the whole file.
                m = re.match(r"bytes \*/(\d+)", r.headers.get("Content-Range", ""))
                if m and int(m.group(1)) == offset:
                    return True
                self.part.unlink()
                raise _Retry("server refused to resume; starting over")
            if code == 404:
                raise ModelError(f"{self.url} was not found (HTTP 404) while downloading {self.label}",
                                 f"the file has moved: set {self.env_var} to a working URL")
            if code in (401, 403):
                raise ModelError(f"{self.url} refused the download of {self.label} (HTTP {code})",
                                 f"set {self.env_var} to a URL that allows downloads")
            if code == 429 or code >= 500:
                raise _Retry(f"HTTP {code} from the server")
            if code >= 400:
                raise ModelError(f"{self.url} answered HTTP {code} for {self.label}",
                                 f"set {self.env_var} to a working URL")
            mode = "wb"
            if offset and code == 206:
                m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != offset:
                    self.part.unlink()
                    raise _Retry("server resumed at the wrong offset; starting over")
                mode = "ab"
            else:
                offset = 0  # a 200 is the whole file from the start
            length = r.headers.get("Content-Length")
            remaining = int(length) if length and length.isdigit() else None
            total = offset + remaining if remaining is not None else self.size
            done = offset
            self._report(done, total)
            try:
                with open(self.part, mode) as fh:
                    try:
                        for chunk in r.iter_content(CHUNK):
                            if self._cancelled():
                                self._raise_cancelled()
                            if chunk:
                                fh.write(chunk)
                                done += len(chunk)
                                self._report(done, total)
                    finally:
                        fh.flush()
                        os.fsync(fh.fileno())
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _disk_full(self.label, self.dest.parent, self.size) from None
                raise
            return remaining is None or done - offset >= remaining

    def _verify_and_install(self) -> str:
        got = self.part.stat().st_size
        if self.size is not None and got != self.size:
            self.part.unlink()
            raise ModelError(
                f"{self.label} from {self.url} is {got} bytes, expected {self.size} "
                f"(truncated or wrong file); it was deleted", self._fix())
        digest = sha256_file(self.part)
        expected = self.sha256 or pinned_sha256(self.pin_key)
        if expected is not None and digest != expected:
            self.part.unlink()
            how = "" if self.sha256 else " pinned on first download"
            raise ModelError(
                f"{self.label} from {self.url} failed verification (sha256 mismatch: got "
                f"{digest[:16]}…, expected{how} {expected[:16]}…); it was deleted", self._fix())
        os.replace(self.part, self.dest)
        _fsync_dir(self.dest.parent)
        remember_sha256(self.dest, digest)
        if expected is None:
            pin_sha256(self.pin_key, digest, url=self.url, size=got)
            self.on_warning(
                f"{self.label}: no official SHA-256 could be confirmed for this file, so the hash "
                f"of this first download was pinned: {digest} (from {self.url}, saved in "
                f"{pins_path()}); later downloads must match it")
        return digest


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def download(spec: ModelSpec, *, progress: bool = True, force: bool = False,
             cancel_event: threading.Event | None = None,
             on_progress: ProgressFn | None = None,
             on_warning: WarnFn | None = None) -> Path:
    """Download ``spec`` into the models dir and return its verified path.

    ``progress`` shows a tqdm bar on stderr; ``on_progress(done_bytes, total_bytes)`` is
    called as bytes arrive (``total_bytes`` may be None); setting ``cancel_event`` stops
    the download with :class:`DownloadCancelled`, keeping the ``.part`` file to resume.
    Without ``force`` a model that is already present and verified is not downloaded again.
    ``on_warning`` receives warnings such as a hash pinned on first download (default:
    logged and printed to stderr).
    """
    dest = model_path(spec)
    warn = on_warning or _default_warn
    with _lock_for(dest):
        if not force and status(spec).state == "present":
            if on_progress is not None:
                size = dest.stat().st_size
                on_progress(size, size)
            return dest
        common = dict(progress=progress, cancel_event=cancel_event, on_progress=on_progress,
                      on_warning=warn)
        if spec.archive is None:
            _Fetch(name=spec.name, label=spec.filename, url=spec.url, dest=dest, sha256=spec.sha256,
                   size=spec.size, env_var=spec.url_env, pin_key=spec.name, **common).run()
            return dest
        return _download_member(spec, dest, force=force, **common)


def _download_member(spec: ModelSpec, dest: Path, *, force: bool, progress: bool,
                     cancel_event, on_progress, on_warning) -> Path:
    a = spec.archive
    assert a is not None
    zpath = models_dir() / a.filename
    zip_expected = a.sha256 or pinned_sha256(a.name)
    have_zip = (not force and zpath.is_file() and zip_expected is not None
                and cached_sha256(zpath) == zip_expected)
    if not have_zip:
        _Fetch(name=spec.name, label=a.filename, url=a.url, dest=zpath, sha256=a.sha256,
               size=a.size, env_var=a.url_env, pin_key=a.name, progress=progress,
               cancel_event=cancel_event, on_progress=on_progress, on_warning=on_warning).run()

    def bad_archive(message: str) -> ModelError:
        # The archive is not what we expect: drop it, and a pin that vouched for it.
        with contextlib.suppress(FileNotFoundError):
            zpath.unlink()
        if a.sha256 is None:
            forget_pin(a.name)
        return ModelError(message, f"run `mirage models download --force {spec.name}` to try again, "
                                   f"or set {spec.url_env} to a direct copy of {spec.filename}")

    tmp = part_path(dest)
    try:
        with zipfile.ZipFile(zpath) as zf:
            info = next((i for i in zf.infolist()
                         if not i.is_dir() and Path(i.filename).name == a.member), None)
            if info is None:
                raise bad_archive(f"{a.filename} from {a.url} has no {a.member}")
            with zf.open(info) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
    except zipfile.BadZipFile as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise bad_archive(f"{a.filename} from {a.url} is not a valid zip ({exc})") from None
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(spec.filename, dest.parent, spec.size) from None
        raise

    got = tmp.stat().st_size
    digest = sha256_file(tmp)
    expected = spec.sha256 or pinned_sha256(spec.name)
    problem = None
    if spec.size is not None and got != spec.size:
        problem = f"is {got} bytes, expected {spec.size}"
    elif expected is not None and digest != expected:
        problem = f"failed verification (sha256 mismatch: got {digest[:16]}…, expected {expected[:16]}…)"
    if problem:
        tmp.unlink()
        raise bad_archive(f"{a.member} in {a.filename} from {a.url} {problem}; it was deleted")
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    remember_sha256(dest, digest)
    if expected is None:
        pin_sha256(spec.name, digest, url=f"{a.url}#{a.member}", size=got)
        on_warning(f"{spec.filename}: no official SHA-256 could be confirmed; pinned {digest} "
                   f"from {a.filename} (saved in {pins_path()})")
    # The archive is only a vehicle: drop it once every model taken from it is in place.
    if all((models_dir() / fn).is_file() for fn in a.members):
        with contextlib.suppress(FileNotFoundError):
            zpath.unlink()
    return dest
