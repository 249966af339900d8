"""Download model weights: stream, resume, verify, move into place atomically.

The file is streamed into ``<name>.part`` beside its final path. A dropped connection is
retried a few times with back-off, each retry resuming with an HTTP ``Range`` request.
Only when the whole file is there *and* its size and SHA-256 match is it renamed onto the
final path (an atomic rename on the same file system), so a partial or corrupt file is
never loaded. A file that fails verification is deleted.

Models whose checksum could not be confirmed from public sources (``sha256 = None``) are
pinned on first download: the hash is stored in ``pins.json`` in the models dir with a
visible warning, and every later download must match it.

Archive members (insightface's ``buffalo_l.zip``) are downloaded as the archive, and the
member is extracted to ``<name>.part``, verified against its own hash and renamed into
place. While the archive is open every other model it serves that is missing (or, with
``force``, every one) is extracted too, each checked against its own hash, so a pack is
downloaded once. The archive itself is verified against a confirmed hash if it has one;
it is pinned only when some model it serves has no confirmed hash (otherwise those
hashes already vouch for everything taken from it, and a repacked mirror works).

One download of a file (or of an archive, for all its members) runs at a time: a lock
per file (per archive) inside the process, and a lock file (``.<file>.lock`` in the
models dir, ``flock``/``msvcrt.locking``) across processes, e.g. the GUI and the CLI.

Downloads never fill the disk:

- nothing is written past the expected size: the registry's size (``models.toml`` or
  ``MIRAGE_<NAME>_SIZE``), else the size the server announces (``Content-Length`` /
  ``Content-Range``), else :data:`MAX_UNKNOWN_SIZE`. A body that announces or sends more is
  an error ("the server sent more than expected") and its ``.part`` is deleted; the reader
  asks for at most one byte past the limit, and that byte is never written;
- the free space is checked before a download (and before each archive member) and while
  writing: :data:`SPACE_MARGIN` always stays free;
- an archive member's declared size must match the registry's size and its compression
  ratio must stay under :data:`MAX_RATIO` *before* it is extracted, and it is streamed
  with a byte cap, so a lying header cannot write more than it declared. An archive with
  a rejected member is deleted, never reused;
- a server that sends nothing for :data:`STALL_TIMEOUT` seconds (connection open, no
  bytes) is reported then, naming the server; the ``.part`` is kept to resume.

A ``.part`` is kept only when the *network* failed (dropped, stalled, cancelled), to resume
next time; any local failure (a full disk, an unwritable folder, a wrong or oversized body)
deletes it. Every failure to write in the models dir (a read-only or full disk, a folder
where the file should be, a lock file or ``pins.json`` that cannot be written) is one
:class:`DownloadWriteError` line naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import requests

from .. import __version__
from ..config import models_dir
from ..errors import ModelError, WriteError
from ..fsutil import check_writable_target, describe_os_error, write_error
from .registry import (
    ArchiveMember,
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

CONNECT_TIMEOUT = 15.0   # seconds to open the connection (never more than STALL_TIMEOUT)
# Seconds without a byte (no answer, or an answer that stops) before the download is reported
# as stalled; the ``stall_timeout`` argument of :func:`download` overrides it. Retries never
# stretch it: every attempt only gets what is left of it since the last byte arrived.
STALL_TIMEOUT = 20.0
RETRIES = 4              # extra attempts after a dropped connection / 5xx
BACKOFF = (1.0, 2.0, 4.0, 8.0)
CHUNK = 1 << 20
SPACE_MARGIN = 16 << 20  # keep this much free beyond the file itself
# A file with no size in the registry and none announced by the server is cut off here: the
# largest model in models.toml is 0.55 GB and a single-file ONNX model cannot exceed 2 GiB
# (protobuf's limit), so 4 GiB leaves room for any real model and stops an endless body.
MAX_UNKNOWN_SIZE = 4 << 30
# Archive members: declared size / compressed size. Model weights are close to random bytes
# and barely compress (buffalo_l.zip's members: about 1.1x); DEFLATE's own maximum is about
# 1032x, where a zip bomb sits. 200x leaves room for sparse or repetitive real files and
# refuses a bomb before a byte of it is written. Members under RATIO_MIN_SIZE (too small
# to matter for the disk) are not ratio-checked; the byte cap still holds for them.
MAX_RATIO = 200
RATIO_MIN_SIZE = 1 << 20

ProgressFn = Callable[[int, "int | None"], None]
WarnFn = Callable[[str], None]


LOCK_POLL = 0.2          # seconds between tries for a lock another download holds
CANCEL_POLL = 0.1        # how often the per-attempt watcher looks at cancel_event
FRESH_FOR = 60.0         # seconds a sibling extracted by a forced download counts as fresh


class DownloadCancelled(ModelError):
    """The caller's ``cancel_event`` was set; the ``.part`` file is kept for resuming."""


class DownloadWriteError(ModelError, WriteError):
    """A file in the models dir cannot be written (read-only, full, a folder in the way...).

    Both a :class:`ModelError` (the download failed) and a :class:`WriteError` (a file the
    app writes), so callers catching either see it."""


class _Retry(Exception):
    """A transient failure worth another attempt (dropped connection, 5xx, short body)."""


# What one request achieved: the whole file is there; the body stopped short (a failed
# attempt); or the server sent the whole of a range that ends before the file does (some
# servers cap range sizes): ask for the next part, which is not a failure.
_DONE, _SHORT, _MORE = "done", "short", "more"


# ---------------------------------------------------------------------------- locks

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


def lock_path(path: Path) -> Path:
    """The lock file that serialises downloads of ``path`` across processes."""
    return path.with_name(f".{path.name}.lock")


def _try_file_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without blocking; False if another process holds it."""
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:  # e.g. a network file system without locks
        log.warning("cannot lock %s against other processes (%s)", fd, exc)
        return True


def _release_file_lock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)


def _cancelled_waiting(label: str) -> DownloadCancelled:
    return DownloadCancelled(f"download of {label} cancelled while waiting for another download of it",
                             "nothing was changed")


@contextlib.contextmanager
def _exclusive(path: Path, label: str, cancel_event: threading.Event | None, on_warning: WarnFn):
    """Own the download of ``path``: first in this process, then across processes."""
    lock = _lock_for(path)
    while not lock.acquire(timeout=LOCK_POLL):
        if cancel_event is not None and cancel_event.is_set():
            raise _cancelled_waiting(label)
    try:
        lock_file = lock_path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            # a models dir that cannot hold a lock file cannot hold the download either
            raise _cannot_write(lock_file, exc, "lock file",
                                detail=f"it guards the download of {label}") from None
        try:
            told = False
            while fd is not None and not _try_file_lock(fd):
                if not told:
                    told = True
                    on_warning(f"another Mirage process is downloading {label}; waiting for it to finish")
                if cancel_event is not None:
                    if cancel_event.wait(LOCK_POLL):
                        raise _cancelled_waiting(label)
                else:
                    time.sleep(LOCK_POLL)
            yield
        finally:
            if fd is not None:
                _release_file_lock(fd)
                os.close(fd)
    finally:
        lock.release()


# Siblings a *forced* download just extracted from the archive it fetched: file path ->
# (file signature, when). The forced download of such a file that follows (``--force
# buffalo_l``, the GUI re-downloading det_10g then w600k_r50) takes it as done instead of
# fetching the archive again, if it comes within FRESH_FOR seconds, the file is unchanged
# and it still verifies. Each entry is used once.
_fresh: dict[str, tuple[tuple, float]] = {}


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# ---------------------------------------------------------------------------- helpers

def _default_warn(message: str) -> None:
    log.warning(message)
    print(f"mirage: WARNING: {message}", file=sys.stderr, flush=True)


def _mb(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e3:.1f} kB" if n < 100_000 else f"{n / 1e6:.1f} MB"


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


_FULL = (errno.ENOSPC, errno.EDQUOT)
_MODELS_DIR_FIX = "MIRAGE_MODELS_DIR sets where models are kept"


def _os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, or the one a WriteError was made from)."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__context__ or exc.__cause__
    return exc


def _cannot_write(path: Path, exc: BaseException, what: str = "", *, detail: str = "",
                  after: str = "") -> DownloadWriteError:
    """One line for a write in the models dir that failed: the path, why, and the fix.

    ``exc`` is an OSError (or a WriteError made from one); ``detail`` goes after the reason
    ("needs 170 MB, 3 MB free"), ``after`` after that ("the partial download was deleted").
    """
    os_exc = _os_error_of(exc) or OSError(errno.EIO, str(exc))
    if isinstance(exc, WriteError) and not isinstance(exc, DownloadWriteError) and _os_error_of(exc) is None:
        message, fix = exc.message, exc.fix or "check the path and the disk"
    else:
        message, fix = write_error(path, os_exc, what).message, describe_os_error(os_exc)[1]
    if os_exc.errno == errno.EISDIR:
        fix = "move or delete that folder"
    if detail:
        message += f" ({detail})"
    if after:
        message += f"; {after}"
    return DownloadWriteError(message, f"{fix}; {_MODELS_DIR_FIX}")


def _no_room(path: Path, what: str, need: int | None, free: int) -> DownloadWriteError:
    """Too little free space for ``need`` more bytes (plus SPACE_MARGIN) where ``path`` goes."""
    margin = f", {_mb(SPACE_MARGIN)} must stay free" if SPACE_MARGIN else ""
    if need is None or free < SPACE_MARGIN:
        why = OSError(errno.ENOSPC, "No space left on device")
        detail = (f"needs {_mb(need)}, " if need else "") + f"{_mb(free)} free{margin}"
        return _cannot_write(path, why, what, detail=detail)
    return DownloadWriteError(
        f"cannot write {what} {path}: not enough disk space (needs {_mb(need)}, {_mb(free)} free{margin})",
        f"free some space or choose another folder; {_MODELS_DIR_FIX}")


def _free_space(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _check_models_dir(dest: Path) -> None:
    """Fail before any work if ``dest`` cannot become a file: a models dir (or a folder above
    it) that is a file, cannot be made or is read-only, or a folder where the file goes."""
    if dest.is_dir():
        raise _cannot_write(dest, OSError(errno.EISDIR, "Is a directory"), "model file")
    for p in (dest.parent, *dest.parent.parents):
        if p.exists():
            if not p.is_dir():
                raise _cannot_write(dest, OSError(errno.ENOTDIR, "Not a directory"), "model file",
                                    detail=f"{p} is a file")
            break
    try:
        check_writable_target(dest, "model file")
    except WriteError as exc:
        raise _cannot_write(dest, exc, "model file") from None


def _delete(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _pin(key: str, digest: str, *, url: str, size: int | None, label: str, part: Path | None) -> None:
    """Record a hash pinned on first download; called *before* the file is put in place.

    If ``pins.json`` cannot be written nothing is installed and ``part`` (the verified
    download, not yet in place) is deleted."""
    try:
        pin_sha256(key, digest, url=url, size=size)
    except (OSError, WriteError) as exc:
        if part is not None:
            _delete(part)
        raise _cannot_write(pins_path(), exc, "pins file",
                            detail=f"it records the hash of {label}",
                            after=f"{label} was not installed") from None


def _abort(r: requests.Response) -> None:
    """Wake a read blocked on ``r``'s socket (from another thread) and close the response."""
    sock = None
    with contextlib.suppress(Exception):
        sock = r.raw.connection.sock  # urllib3 2
    if sock is None:
        with contextlib.suppress(Exception):
            sock = r.raw._fp.fp.raw._sock  # urllib3 1 / http.client
    if sock is not None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            # the plain socket's shutdown, also for TLS: the reader sees end-of-stream
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        return
    with contextlib.suppress(Exception):
        r.close()


class _Fetch:
    """One file from one URL into ``dest`` via ``dest.part``; see :func:`download`.

    ``pin_key`` is where a hash is pinned on first download when ``sha256`` is None;
    None means the file needs no hash of its own (an archive whose models are all
    checked against confirmed hashes).
    """

    def __init__(self, *, name: str, label: str, url: str, dest: Path, sha256: str | None,
                 size: int | None, env_var: str, pin_key: str | None, progress: bool,
                 cancel_event: threading.Event | None, on_progress: ProgressFn | None,
                 on_warning: WarnFn, stall_timeout: float | None = None):
        self.name, self.label, self.url, self.dest = name, label, url, dest
        self.sha256, self.size, self.env_var, self.pin_key = sha256, size, env_var, pin_key
        self.progress, self.cancel_event, self.on_progress = progress, cancel_event, on_progress
        self.on_warning = on_warning
        self.stall_timeout = STALL_TIMEOUT if stall_timeout is None else float(stall_timeout)
        self.part = part_path(dest)
        self.bar = None
        self._progress_at = time.monotonic()  # when the last byte arrived (or the start)

    # -- helpers
    def _cancelled(self) -> bool:
        return self.cancel_event is not None and self.cancel_event.is_set()

    def _raise_cancelled(self):
        raise DownloadCancelled(f"download of {self.label} cancelled",
                                f"the partial file is kept; download {self.name} again to resume")

    def _fix(self) -> str:
        return (f"run `mirage models download --force {self.name}` to try again, "
                f"or set {self.env_var} to another source")

    def _repin_fix(self) -> str:
        return (f"if the file changed upstream or {self.env_var} points at a mirror you trust, "
                f"run `mirage models download --repin {self.name}` to pin the new file")

    def _report(self, done: int, total: int | None) -> None:
        if self.bar is not None:
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.n = done
            self.bar.refresh()
        if self.on_progress is not None:
            self.on_progress(done, total)

    def _got(self) -> int:
        try:
            return self.part.stat().st_size
        except OSError:
            return 0

    def _check_space(self, need: int | None) -> None:
        """Refuse before writing if ``need`` more bytes (and SPACE_MARGIN) do not fit."""
        if not need:
            return
        free = _free_space(self.dest.parent)
        if free is not None and free < need + SPACE_MARGIN:
            raise _no_room(self.dest, "model file", need, free)

    def _write_failed(self, exc: OSError) -> DownloadWriteError:
        """A local write failure: the partial file is deleted (it would only hold the space)."""
        _delete(self.part)
        return _cannot_write(self.part, exc, "download", after="the partial download was deleted")

    def _server(self) -> str:
        try:
            return urlsplit(self.url).netloc or self.url
        except ValueError:
            return self.url

    def _stalled(self, exc: BaseException) -> ModelError:
        """No byte for stall_timeout seconds: say which server and what to do."""
        got = self._got()
        if got == 0:
            _delete(self.part)  # an empty .part resumes nothing
        secs = f"{self.stall_timeout:g} s"
        if isinstance(exc, requests.ConnectTimeout):
            what = f"cannot download {self.label}: {self._server()} did not answer for {secs} ({self.url})"
        else:
            what = f"download of {self.label} stalled: {self._server()} sent nothing for {secs} ({self.url})"
        if got:
            what += f"; {_mb(got)} of {_mb(self.size)} kept"
            fix = (f"try again later (`mirage models download {self.name}` resumes it), "
                   f"or set {self.env_var} to another mirror")
        else:
            fix = f"try again later, or set {self.env_var} to another mirror"
        return ModelError(what, fix)

    def _budget(self) -> float:
        """Seconds left before no progress since the last byte counts as a stall."""
        return self.stall_timeout - (time.monotonic() - self._progress_at)

    # -- the work
    def run(self) -> str:
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
        self._progress_at = time.monotonic()
        try:
            while True:
                if self._cancelled():
                    self._raise_cancelled()
                offset = self._got() if self.part.exists() else 0
                if self.size is not None and offset > self.size:
                    _delete(self.part)
                    offset = 0
                if self.size is not None and offset == self.size:
                    return
                self._check_space(None if self.size is None else self.size - offset)
                try:
                    result = self._attempt(session, offset)
                    if result == _DONE:
                        return
                    if result == _MORE:
                        continue  # a capped range arrived whole: ask for the rest, no failure
                    raise _Retry("the connection closed before the whole file arrived")
                except (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError, _Retry) as exc:
                    if self._cancelled():
                        self._raise_cancelled()
                    # the attempt's timeout was what was left of the stall budget: when it
                    # ran out, nothing has arrived for stall_timeout seconds
                    stalled = isinstance(exc, requests.Timeout)
                    if stalled and self._budget() <= max(0.01, 0.01 * self.stall_timeout):
                        raise self._stalled(exc) from None
                    attempt += 1
                    got = self._got()
                    if attempt > RETRIES and stalled:
                        raise self._stalled(exc) from None
                    if attempt > RETRIES:
                        if got == 0:
                            _delete(self.part)
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
                except requests.RequestException as exc:
                    # anything else requests refuses (a malformed URL, too many redirects…)
                    if self._cancelled():
                        self._raise_cancelled()
                    detail = " ".join(f"{type(exc).__name__}: {exc}".split())
                    raise ModelError(f"cannot download {self.label} from {self.url}: {detail}",
                                     f"set {self.env_var} to a working http:// or https:// URL") from None
        finally:
            session.close()

    def _attempt(self, session: requests.Session, offset: int) -> str:
        """One request: :data:`_DONE`, :data:`_SHORT` or :data:`_MORE`."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        # what is left of the stall budget since the last byte: retries never stretch it
        budget = max(self._budget(), 0.001)
        with session.get(self.url, stream=True, headers=headers,
                         timeout=(min(CONNECT_TIMEOUT, budget), budget)) as r:
            if self._cancelled():
                self._raise_cancelled()
            finished = self._watch(r)
            try:
                return self._receive(r, offset)
            except Exception:
                # a cancel closes the connection under the reader: whatever that raised,
                # it is a cancel
                if self._cancelled():
                    self._raise_cancelled()
                raise
            finally:
                finished.set()

    def _watch(self, r: requests.Response) -> threading.Event:
        """A small thread that aborts ``r`` when ``cancel_event`` is set, so a stalled
        connection does not hold a cancel for up to the stall timeout. Set the returned
        event when the attempt is over."""
        finished = threading.Event()
        cancel = self.cancel_event
        if cancel is None:
            return finished

        def watch():
            while not finished.is_set():
                if cancel.wait(CANCEL_POLL):
                    if not finished.is_set():
                        _abort(r)
                    return

        threading.Thread(target=watch, name="mirage-download-cancel", daemon=True).start()
        return finished

    def _too_much(self, detail: str, *, wrote: bool) -> ModelError:
        _delete(self.part)
        kept = "the partial download was deleted" if wrote else "nothing was written"
        return ModelError(f"{self.label} from {self.url}: the server sent more than expected "
                          f"({detail}); {kept}", self._fix())

    def _limit(self, full: int | None, end: int | None, offset: int,
               remaining: int | None) -> tuple[int, str]:
        """The most bytes the whole file may have, and where that figure comes from."""
        if self.size is not None:
            return self.size, "the size in the model list"
        if full is not None:
            return full, "the size the server announced"
        if end is None and remaining is not None:
            return offset + remaining, "the size the server announced"
        return MAX_UNKNOWN_SIZE, (f"the most Mirage accepts for a file of unknown size; if it "
                                  f"really is larger, set {self.env_var[:-4]}_SIZE")

    @staticmethod
    def _read(r: requests.Response, amt: int) -> bytes:
        """Up to ``amt`` bytes of the body, as soon as some are there (so progress, the
        stall clock and a cancel see every byte), with urllib3's errors as requests' ones."""
        import urllib3.exceptions as u3
        raw = r.raw
        read = getattr(raw, "read1", None) or raw.read  # read1: urllib3 2; 1.x fills amt
        try:
            return read(amt, decode_content=True)
        except (u3.ReadTimeoutError, TimeoutError) as exc:
            raise requests.exceptions.ReadTimeout(exc) from None
        except u3.SSLError as exc:
            raise requests.exceptions.SSLError(exc) from None
        except u3.DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from None
        except (u3.ProtocolError, ConnectionError) as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from None

    def _receive(self, r: requests.Response, offset: int) -> str:
        code = r.status_code
        if code == 416 and offset:
            # Range not satisfiable: the .part may already hold the whole file.
            m = re.match(r"bytes \*/(\d+)", r.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == offset:
                return _DONE
            _delete(self.part)
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
        end = full = None  # the range this response covers: offset..end of full bytes
        if offset and code == 206:
            m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", r.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != offset or int(m.group(2)) < offset:
                _delete(self.part)
                raise _Retry("server resumed at the wrong offset; starting over")
            end = int(m.group(2))
            full = None if m.group(3) == "*" else int(m.group(3))
            if full is not None and self.size is not None and full != self.size:
                _delete(self.part)
                raise ModelError(
                    f"{self.label} from {self.url} is {full} bytes, expected {self.size} "
                    f"(wrong file); the partial download was deleted", self._fix())
            mode = "ab"
        else:
            offset = 0  # a 200 is the whole file from the start
        length = r.headers.get("Content-Length")
        if length and length.isdigit():
            remaining = int(length)
        else:
            remaining = end - offset + 1 if end is not None else None
        limit, why = self._limit(full, end, offset, remaining)
        if remaining is not None and offset + remaining > limit:
            # announced too much: refused before a byte is written
            if mode == "wb":
                _delete(self.part)
            raise self._too_much(f"it announced {offset + remaining:,} bytes, at most {limit:,} "
                                 f"expected from {why}", wrote=mode == "ab")
        if full is not None:
            total = full
        elif end is None and remaining is not None:
            total = remaining
        else:
            total = self.size
        if self.size is None and total is not None:
            self._check_space(total - offset)
        # this response ends here: its Content-Length, else the file's limit
        stop = min(limit, offset + remaining) if remaining is not None else limit
        done = offset
        self._report(done, total)
        try:
            with open(self.part, mode) as fh:
                try:
                    while True:
                        if self._cancelled():
                            self._raise_cancelled()
                        # never more than one byte past the limit: that byte is the proof
                        # that the body is too long, and it is never written
                        chunk = self._read(r, max(1, min(CHUNK, stop + 1 - done)))
                        if not chunk:
                            break
                        self._progress_at = time.monotonic()
                        if done + len(chunk) > limit:
                            fh.close()
                            raise self._too_much(f"more than {limit:,} bytes, {why}", wrote=True)
                        fh.write(chunk)
                        done += len(chunk)
                        free = _free_space(self.dest.parent)
                        if free is not None and free < SPACE_MARGIN:
                            fh.close()
                            _delete(self.part)
                            raise _no_room(self.dest, "model file", None, free)
                        self._report(done, total)
                finally:
                    if not fh.closed:
                        fh.flush()
                        os.fsync(fh.fileno())
        except requests.RequestException:
            raise  # an OSError too, but the network's, not the disk's
        except OSError as exc:
            raise self._write_failed(exc) from None
        if remaining is not None and done - offset < remaining:
            return _SHORT
        if end is not None and full is not None and end + 1 < full:
            return _MORE
        return _DONE

    def _verify_and_install(self) -> str:
        got = self.part.stat().st_size
        if self.size is not None and got != self.size:
            _delete(self.part)
            raise ModelError(
                f"{self.label} from {self.url} is {got} bytes, expected {self.size} "
                f"(truncated or wrong file); it was deleted", self._fix())
        digest = sha256_file(self.part)
        pinned = pinned_sha256(self.pin_key) if self.sha256 is None and self.pin_key else None
        expected = self.sha256 or pinned
        if expected is not None and digest != expected:
            _delete(self.part)
            how = "" if self.sha256 else " pinned on first download"
            raise ModelError(
                f"{self.label} from {self.url} failed verification (sha256 mismatch: got "
                f"{digest[:16]}…, expected{how} {expected[:16]}…); it was deleted",
                self._fix() if self.sha256 else self._repin_fix())
        pin_now = expected is None and self.pin_key is not None
        if pin_now:
            # before the file is put in place: a pin that cannot be written leaves no
            # unverifiable file behind
            _pin(self.pin_key, digest, url=self.url, size=got, label=self.label, part=self.part)
        try:
            os.replace(self.part, self.dest)
        except OSError as exc:
            _delete(self.part)
            raise _cannot_write(self.dest, exc, "model file", after="the download was deleted") from None
        _fsync_dir(self.dest.parent)
        remember_sha256(self.dest, digest)
        if pin_now:
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
             on_warning: WarnFn | None = None,
             stall_timeout: float | None = None) -> Path:
    """Download ``spec`` into the models dir and return its verified path.

    ``progress`` shows a tqdm bar on stderr; ``on_progress(done_bytes, total_bytes)`` is
    called as bytes arrive (``total_bytes`` may be None); setting ``cancel_event`` stops
    the download with :class:`DownloadCancelled`, keeping the ``.part`` file to resume.
    Without ``force`` a model that is already present and verified is not downloaded again.
    ``on_warning`` receives warnings such as a hash pinned on first download (default:
    logged and printed to stderr). ``stall_timeout`` (default :data:`STALL_TIMEOUT`) is how
    many seconds without a byte count as a stalled server.

    Every failure is a :class:`ModelError` (a :class:`DownloadWriteError` when the models
    dir cannot be written), one line naming the fix.
    """
    dest = model_path(spec)
    warn = on_warning or _default_warn
    if not force and _already_here(spec, dest, force=False, on_progress=on_progress):
        return dest  # nothing to write: a read-only models dir with the model in it works
    _check_models_dir(dest)
    # one download per file, and per archive for all the models taken from it
    key = dest if spec.archive is None else models_dir() / spec.archive.filename
    label = spec.filename if spec.archive is None else spec.archive.filename
    try:
        with _exclusive(key, label, cancel_event, warn):
            if _already_here(spec, dest, force=force, on_progress=on_progress):
                return dest
            common = dict(progress=progress, cancel_event=cancel_event, on_progress=on_progress,
                          on_warning=warn, stall_timeout=stall_timeout)
            if spec.archive is None:
                _Fetch(name=spec.name, label=spec.filename, url=spec.url, dest=dest,
                       sha256=spec.sha256, size=spec.size, env_var=spec.url_env, pin_key=spec.name,
                       **common).run()
                return dest
            return _download_member(spec, dest, force=force, **common)
    except requests.RequestException:
        raise  # pragma: no cover - _Fetch turns these into ModelErrors
    except OSError as exc:
        # a last resort: any other file operation in the models dir that failed
        where = Path(exc.filename) if getattr(exc, "filename", None) else dest
        raise _cannot_write(where, exc, "", detail=f"while downloading {label}") from None


def _already_here(spec: ModelSpec, dest: Path, *, force: bool, on_progress) -> bool:
    fresh = _fresh.pop(str(dest), None)
    if force:
        # forced, but this process has just extracted it from a freshly downloaded archive
        if not (fresh is not None and fresh[0] == _signature(dest)
                and time.monotonic() - fresh[1] < FRESH_FOR):
            return False
    if status(spec).state != "present":
        return False
    if on_progress is not None:
        size = dest.stat().st_size
        on_progress(size, size)
    return True


def _member_problem(info: zipfile.ZipInfo, m: ArchiveMember) -> str | None:
    """Why ``info`` must not be extracted as ``m``, judged from its header alone (before a
    byte is written): a declared size that is not the expected one, or a zip bomb."""
    declared, packed = info.file_size, info.compress_size
    if m.size is not None and declared != m.size:
        return f"declares {declared:,} bytes, expected {m.size:,} (a wrong file or a lying header)"
    if m.size is None and declared > MAX_UNKNOWN_SIZE:
        return (f"declares {declared:,} bytes, more than the {MAX_UNKNOWN_SIZE:,} Mirage accepts "
                f"for a file of unknown size")
    if declared >= RATIO_MIN_SIZE and declared > MAX_RATIO * packed:
        ratio = declared / max(packed, 1)
        return (f"is compressed {ratio:,.0f}x ({packed:,} bytes unpacking to {declared:,}; model "
                f"weights barely compress, over {MAX_RATIO}x is a zip bomb)")
    return None


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, m: ArchiveMember, dest: Path,
                    source: str) -> tuple[str | None, str | None]:
    """Extract one model to its ``.part``, verify it against its own hash and put it in place.

    The header is checked first (:func:`_member_problem`), then the free space, and the
    member is streamed with a cap of its declared size: a body longer than its header says
    is refused at the first byte past it. Returns ``(problem, pinned)``: ``problem`` says why
    it was rejected (nothing of it is left), else None; ``pinned`` is its hash when that was
    pinned now (no confirmed or pinned hash). Raises on a broken archive
    (:class:`zipfile.BadZipFile`, ``zlib.error``, ``EOFError``) and
    :class:`DownloadWriteError` when it cannot be written (a full disk).
    """
    problem = _member_problem(info, m)
    if problem:
        return problem, None
    cap = info.file_size
    free = _free_space(dest.parent)
    if free is not None and free < cap + SPACE_MARGIN:
        raise _no_room(dest, "model file", cap, free)
    tmp = part_path(dest)
    try:
        try:
            with zf.open(info) as src, open(tmp, "wb") as out:
                done = 0
                while True:
                    buf = src.read(min(CHUNK, cap + 1 - done))
                    if not buf:
                        break
                    if done + len(buf) > cap:
                        problem = f"holds more than the {cap:,} bytes its header declares"
                        break
                    out.write(buf)
                    done += len(buf)
                if problem is None:
                    out.flush()
                    os.fsync(out.fileno())
        except OSError as exc:
            raise _cannot_write(tmp, exc, "model file", detail=f"extracting it from {source}",
                                after="nothing of it was kept") from None
        if problem:
            _delete(tmp)
            return problem, None
        got = tmp.stat().st_size
        digest = sha256_file(tmp)
        pinned = pinned_sha256(m.name) if m.sha256 is None else None
        expected = m.sha256 or pinned
        if m.size is not None and got != m.size:
            problem = f"is {got} bytes, expected {m.size}"
        elif expected is not None and digest != expected:
            how = " pinned on first download" if pinned else ""
            problem = (f"failed verification (sha256 mismatch: got {digest[:16]}…, "
                       f"expected{how} {expected[:16]}…)")
        if problem:
            _delete(tmp)
            return problem, None
        if expected is None:
            _pin(m.name, digest, url=source, size=got, label=m.filename, part=tmp)
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            raise _cannot_write(dest, exc, "model file", after="nothing of it was kept") from None
    except BaseException:
        _delete(tmp)
        raise
    _fsync_dir(dest.parent)
    remember_sha256(dest, digest)
    return None, (digest if expected is None else None)


_BROKEN_ZIP = (zipfile.BadZipFile, zlib.error, EOFError)


def _download_member(spec: ModelSpec, dest: Path, *, force: bool, progress: bool,
                     cancel_event, on_progress, on_warning, stall_timeout) -> Path:
    a = spec.archive
    assert a is not None
    mdir = models_dir()
    zpath = mdir / a.filename
    # The archive needs a hash of its own (confirmed, or pinned on first download) only
    # when a model it serves has none: otherwise each model's confirmed hash is the check,
    # and a mirror that repacks the same models works.
    pin_zip = a.sha256 is None and not a.members_confirmed
    zip_expected = a.sha256 or (pinned_sha256(a.name) if pin_zip else None)
    reuse = (not force and zpath.is_file()
             and (cached_sha256(zpath) == zip_expected if zip_expected else not pin_zip))
    if not reuse:
        _Fetch(name=spec.name, label=a.filename, url=a.url, dest=zpath, sha256=a.sha256,
               size=a.size, env_var=a.url_env, pin_key=a.name if pin_zip else None,
               progress=progress, cancel_event=cancel_event, on_progress=on_progress,
               on_warning=on_warning, stall_timeout=stall_timeout).run()
    if not pin_zip and a.sha256 is None:
        with contextlib.suppress(OSError, WriteError):
            forget_pin(a.name)  # left by an older version; the models' hashes vouch now

    def drop_archive() -> None:
        # The archive is not what we expect: drop it (never reused), and a pin that vouched for it.
        _delete(zpath)
        if a.sha256 is None:
            with contextlib.suppress(OSError, WriteError):
                forget_pin(a.name)

    def bad_archive(message: str, *, repin: bool = False) -> ModelError:
        drop_archive()
        if repin:
            fix = (f"if {spec.filename} changed upstream, run `mirage models download --repin "
                   f"{spec.name}` to pin the new file, or set {spec.url_env} to a direct copy of it")
        else:
            fix = (f"run `mirage models download --force {spec.name}` to try again, "
                   f"or set {spec.url_env} to a direct copy of {spec.filename}")
        return ModelError(message, fix)

    me = ArchiveMember(name=spec.name, filename=spec.filename, member=a.member,
                       sha256=spec.sha256, size=spec.size)
    siblings = [m for m in a.served if m.name != spec.name
                and (force or not (mdir / m.filename).exists())]
    try:
        with zipfile.ZipFile(zpath) as zf:
            infos: dict[str, zipfile.ZipInfo] = {}
            for i in zf.infolist():
                if not i.is_dir():
                    infos.setdefault(Path(i.filename).name, i)
            info = infos.get(me.member)
            if info is None:
                raise bad_archive(f"{a.filename} from {a.url} has no {me.member}; the archive was deleted")
            problem, pinned = _extract_member(zf, info, me, dest, f"{a.url}#{me.member}")
            if problem:
                raise bad_archive(f"{me.member} in {a.filename} from {a.url} {problem}; "
                                  f"the archive was deleted",
                                  repin="pinned on first download" in problem)
            if pinned:
                on_warning(f"{spec.filename}: no official SHA-256 could be confirmed; pinned {pinned} "
                           f"from {a.filename} (saved in {pins_path()})")
            rejected = _extract_siblings(zf, infos, siblings, a, cancel_event, on_warning, forced=force)
    except _BROKEN_ZIP as exc:
        raise bad_archive(f"{a.filename} from {a.url} is not a valid zip ({exc}); "
                          f"the archive was deleted") from None
    if rejected:
        drop_archive()  # it held a bad member: the next download fetches a fresh copy
        return dest
    # The archive is only a vehicle: drop it once every model taken from it is in place.
    needed = [m.filename for m in a.served] or list(a.members)
    if all((mdir / fn).is_file() for fn in needed):
        _delete(zpath)
    return dest


def _extract_siblings(zf: zipfile.ZipFile, infos: dict, siblings: list[ArchiveMember], a,
                      cancel_event, on_warning, *, forced: bool) -> bool:
    """While the archive is open, put the other models it serves in place too (each
    checked against its own hash), so a pack is downloaded once. A sibling that fails is
    reported and left as it was; it never fails the model that was asked for. True when
    one was rejected (the archive is then not kept for later)."""
    rejected = False
    for m in siblings:
        if cancel_event is not None and cancel_event.is_set():
            return rejected
        path = models_dir() / m.filename
        info = infos.get(m.member)
        if info is None:
            on_warning(f"{a.filename} from {a.url} has no {m.member}; {m.name} was not extracted")
            rejected = True
            continue
        try:
            problem, pinned = _extract_member(zf, info, m, path, f"{a.url}#{m.member}")
        except _BROKEN_ZIP as exc:
            problem, pinned = f"could not be read ({exc})", None
        except ModelError as exc:  # cannot be written (a full disk, no room to pin it)
            on_warning(f"{m.name} was not extracted: {exc}")
            return rejected
        if problem:
            on_warning(f"{m.member} in {a.filename} from {a.url} {problem}; {m.name} was left as it was")
            rejected = True
            continue
        if forced:
            _fresh[str(path)] = (_signature(path), time.monotonic())
        if pinned:
            on_warning(f"{m.filename}: no official SHA-256 could be confirmed; pinned {pinned} "
                       f"from {a.filename} (saved in {pins_path()})")
    return rejected
