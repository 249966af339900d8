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

import requests

from .. import __version__
from ..config import models_dir
from ..errors import ModelError
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

CONNECT_TIMEOUT = 15.0   # seconds to open the connection
READ_TIMEOUT = 60.0      # seconds without a byte before we give up on this attempt
RETRIES = 4              # extra attempts after a dropped connection / 5xx
BACKOFF = (1.0, 2.0, 4.0, 8.0)
CHUNK = 1 << 20
SPACE_MARGIN = 16 << 20  # keep this much free beyond the file itself

ProgressFn = Callable[[int, "int | None"], None]
WarnFn = Callable[[str], None]


LOCK_POLL = 0.2          # seconds between tries for a lock another download holds
CANCEL_POLL = 0.1        # how often the per-attempt watcher looks at cancel_event
FRESH_FOR = 60.0         # seconds a sibling extracted by a forced download counts as fresh


class DownloadCancelled(ModelError):
    """The caller's ``cancel_event`` was set; the ``.part`` file is kept for resuming."""


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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = None
        try:
            fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(label, path.parent, None) from None
            log.warning("cannot create %s (%s); not locked against other processes", lock_path(path), exc)
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


def _pin(key: str, digest: str, *, url: str, size: int | None, label: str, where: Path) -> None:
    """Record a hash pinned on first download; called *before* the file is put in place."""
    try:
        pin_sha256(key, digest, url=url, size=size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(label, where, None) from None
        raise ModelError(f"cannot record the hash of {label} in {pins_path()}: {exc.strerror or exc}",
                         "make the models dir writable, or set MIRAGE_MODELS_DIR") from None


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
        with session.get(self.url, stream=True, headers=headers,
                         timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as r:
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
        connection does not hold a cancel for up to READ_TIMEOUT. Set the returned event
        when the attempt is over."""
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

    def _receive(self, r: requests.Response, offset: int) -> str:
        code = r.status_code
        if code == 416 and offset:
            # Range not satisfiable: the .part may already hold the whole file.
            m = re.match(r"bytes \*/(\d+)", r.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == offset:
                return _DONE
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
        end = full = None  # the range this response covers: offset..end of full bytes
        if offset and code == 206:
            m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", r.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != offset or int(m.group(2)) < offset:
                self.part.unlink()
                raise _Retry("server resumed at the wrong offset; starting over")
            end = int(m.group(2))
            full = None if m.group(3) == "*" else int(m.group(3))
            if full is not None and self.size is not None and full != self.size:
                self.part.unlink()
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
        if full is not None:
            total = full
        elif end is None and remaining is not None:
            total = remaining
        else:
            total = self.size
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
        if remaining is not None and done - offset < remaining:
            return _SHORT
        if end is not None and full is not None and end + 1 < full:
            return _MORE
        return _DONE

    def _verify_and_install(self) -> str:
        got = self.part.stat().st_size
        if self.size is not None and got != self.size:
            self.part.unlink()
            raise ModelError(
                f"{self.label} from {self.url} is {got} bytes, expected {self.size} "
                f"(truncated or wrong file); it was deleted", self._fix())
        digest = sha256_file(self.part)
        pinned = pinned_sha256(self.pin_key) if self.sha256 is None and self.pin_key else None
        expected = self.sha256 or pinned
        if expected is not None and digest != expected:
            self.part.unlink()
            how = "" if self.sha256 else " pinned on first download"
            raise ModelError(
                f"{self.label} from {self.url} failed verification (sha256 mismatch: got "
                f"{digest[:16]}…, expected{how} {expected[:16]}…); it was deleted",
                self._fix() if self.sha256 else self._repin_fix())
        pin_now = expected is None and self.pin_key is not None
        if pin_now:
            # before the file is put in place: a pin that cannot be written leaves no
            # unverifiable file behind (the complete .part is kept)
            _pin(self.pin_key, digest, url=self.url, size=got, label=self.label, where=self.dest.parent)
        os.replace(self.part, self.dest)
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
    # one download per file, and per archive for all the models taken from it
    key = dest if spec.archive is None else models_dir() / spec.archive.filename
    label = spec.filename if spec.archive is None else spec.archive.filename
    with _exclusive(key, label, cancel_event, warn):
        if _already_here(spec, dest, force=force, on_progress=on_progress):
            return dest
        common = dict(progress=progress, cancel_event=cancel_event, on_progress=on_progress,
                      on_warning=warn)
        if spec.archive is None:
            _Fetch(name=spec.name, label=spec.filename, url=spec.url, dest=dest, sha256=spec.sha256,
                   size=spec.size, env_var=spec.url_env, pin_key=spec.name, **common).run()
            return dest
        return _download_member(spec, dest, force=force, **common)


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


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, m: ArchiveMember, dest: Path,
                    source: str) -> tuple[str | None, str | None]:
    """Extract one model to its ``.part``, verify it against its own hash and put it in place.

    Returns ``(problem, pinned)``: ``problem`` says why it was rejected (and deleted), else
    None; ``pinned`` is its hash when that was pinned now (no confirmed or pinned hash). Raises on a broken archive
    (:class:`zipfile.BadZipFile`, ``zlib.error``, ``EOFError``) or a full disk.
    """
    tmp = part_path(dest)
    try:
        with zf.open(info) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        got = tmp.stat().st_size
        digest = sha256_file(tmp)
        pinned = pinned_sha256(m.name) if m.sha256 is None else None
        expected = m.sha256 or pinned
        problem = None
        if m.size is not None and got != m.size:
            problem = f"is {got} bytes, expected {m.size}"
        elif expected is not None and digest != expected:
            how = " pinned on first download" if pinned else ""
            problem = (f"failed verification (sha256 mismatch: got {digest[:16]}…, "
                       f"expected{how} {expected[:16]}…)")
        if problem:
            tmp.unlink()
            return problem, None
        if expected is None:
            _pin(m.name, digest, url=source, size=got, label=m.filename, where=dest.parent)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)
    remember_sha256(dest, digest)
    return None, (digest if expected is None else None)


_BROKEN_ZIP = (zipfile.BadZipFile, zlib.error, EOFError)


def _download_member(spec: ModelSpec, dest: Path, *, force: bool, progress: bool,
                     cancel_event, on_progress, on_warning) -> Path:
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
               on_warning=on_warning).run()
    if not pin_zip and a.sha256 is None:
        with contextlib.suppress(OSError):
            forget_pin(a.name)  # left by an older version; the models' hashes vouch now

    def bad_archive(message: str, *, repin: bool = False) -> ModelError:
        # The archive is not what we expect: drop it, and a pin that vouched for it.
        with contextlib.suppress(FileNotFoundError):
            zpath.unlink()
        if a.sha256 is None:
            with contextlib.suppress(OSError):
                forget_pin(a.name)
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
                raise bad_archive(f"{a.filename} from {a.url} has no {me.member}")
            problem, pinned = _extract_member(zf, info, me, dest, f"{a.url}#{me.member}")
            if problem:
                raise bad_archive(f"{me.member} in {a.filename} from {a.url} {problem}; it was deleted",
                                  repin="pinned on first download" in problem)
            if pinned:
                on_warning(f"{spec.filename}: no official SHA-256 could be confirmed; pinned {pinned} "
                           f"from {a.filename} (saved in {pins_path()})")
            _extract_siblings(zf, infos, siblings, a, cancel_event, on_warning, forced=force)
    except _BROKEN_ZIP as exc:
        raise bad_archive(f"{a.filename} from {a.url} is not a valid zip ({exc})") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(spec.filename, dest.parent, spec.size) from None
        raise
    # The archive is only a vehicle: drop it once every model taken from it is in place.
    needed = [m.filename for m in a.served] or list(a.members)
    if all((mdir / fn).is_file() for fn in needed):
        with contextlib.suppress(FileNotFoundError):
            zpath.unlink()
    return dest


def _extract_siblings(zf: zipfile.ZipFile, infos: dict, siblings: list[ArchiveMember], a,
                      cancel_event, on_warning, *, forced: bool) -> None:
    """While the archive is open, put the other models it serves in place too (each
    checked against its own hash), so a pack is downloaded once. A sibling that fails is
    reported and left as it was; it never fails the model that was asked for."""
    for m in siblings:
        if cancel_event is not None and cancel_event.is_set():
            return
        path = models_dir() / m.filename
        info = infos.get(m.member)
        if info is None:
            on_warning(f"{a.filename} from {a.url} has no {m.member}; {m.name} was not extracted")
            continue
        try:
            problem, pinned = _extract_member(zf, info, m, path, f"{a.url}#{m.member}")
        except _BROKEN_ZIP as exc:
            problem, pinned = f"could not be read ({exc})", None
        except ModelError as exc:  # no room to pin it
            on_warning(f"{m.name} was not extracted: {exc}")
            return
        except OSError as exc:
            on_warning(f"{m.name} was not extracted from {a.filename}: {exc.strerror or exc}")
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return
            continue
        if problem:
            on_warning(f"{m.member} in {a.filename} from {a.url} {problem}; {m.name} was left as it was")
            continue
        if forced:
            _fresh[str(path)] = (_signature(path), time.monotonic())
        if pinned:
            on_warning(f"{m.filename}: no official SHA-256 could be confirmed; pinned {pinned} "
                       f"from {a.filename} (saved in {pins_path()})")
