"""File-system helpers: atomic writes so settings, caches and downloads are never half-written.

Every write the app makes goes through here, so every way a write can fail (a folder that does
not exist and cannot be made, a read-only folder, a path that is a folder, a full disk) becomes
one :class:`WriteError` naming the path and the fix, and the file that was there stays whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import WriteError


def describe_os_error(exc: OSError) -> tuple[str, str]:
    """(what went wrong, how to fix it) for an OSError raised by a write."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full", "free some space or choose another folder"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied", "choose a folder you can write to"
    if code == errno.EROFS:
        return "the file system is read-only", "choose a folder on a writable disk"
    if code == errno.EISDIR:
        return "it is a folder", "give a file name, not a folder"
    if code in (errno.ENOTDIR, errno.EEXIST):  # EEXIST: mkdir met a file on the way
        return "a part of the path is not a folder", "check the path"
    if code == errno.ENOENT:
        return "its folder does not exist and cannot be made there", "check the path"
    if code == errno.ENAMETOOLONG:
        return "the name is too long", "use a shorter path"
    return (exc.strerror or str(exc) or type(exc).__name__), "check the path and the disk"


def write_error(path: str | os.PathLike, exc: OSError, what: str = "") -> WriteError:
    why, fix = describe_os_error(exc)
    label = f"{what} {path}" if what else str(path)
    return WriteError(f"cannot write {label}: {why}", fix)


def check_writable_target(path: str | os.PathLike, what: str = "") -> Path:
    """Fail early, before any work, if ``path`` cannot become a file: a folder, or a parent that
    cannot be made or written. The real write still reports its own errors (a full disk)."""
    path = Path(path)
    if path.is_dir():
        raise write_error(path, OSError(errno.EISDIR, "Is a directory"), what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc, what) from None
    if not path.parent.is_dir():
        raise write_error(path, OSError(errno.ENOTDIR, "Not a directory"), what)
    probe = None
    try:  # os.access lies for root and for read-only mounts; a real probe file does not
        fd, probe = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".probe", dir=path.parent)
        try:
            os.write(fd, b"\0")  # a disk with no block left fails here
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(path, exc, what) from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)
    return path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", what: str = "") -> Iterator:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched. OSErrors become a
    :class:`WriteError` naming ``path`` (``what`` says what it is: "settings file", "recording").
    """
    path = Path(path)
    tmp = None
    try:
        if path.is_dir():
            raise OSError(errno.EISDIR, "Is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise write_error(path, exc, what) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "") -> None:
    with atomic_open(path, "wb", what) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), what)
