"""Where processed frames go: the virtual camera, a video file, nothing (benchmarks).

Every sink has ``open(width, height, fps)``, ``send(frame_bgr)``, ``close()`` and ``describe()``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from ..errors import MirageError, VirtualCameraError, WriteError

log = logging.getLogger(__name__)


@runtime_checkable
class FrameSink(Protocol):
    """Where processed frames go. ``critical``: a failure stops the run (a recording) instead of
    being counted and skipped (the virtual camera). A remote engine adds a WebRTC sink."""

    name: str

    def open(self, width: int, height: int, fps: float) -> None: ...

    def send(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


def check_sink(obj) -> "FrameSink":
    missing = [a for a in ("name", "open", "send", "close", "describe") if not hasattr(obj, a)]
    if missing:
        raise MirageError(f"{type(obj).__name__} is not a frame sink (missing {', '.join(missing)})",
                          "a sink needs name, open(w, h, fps), send(frame), close() and describe()")
    return obj


class NullSink:
    name = "null"

    def __init__(self):
        self.frames = 0

    def open(self, width: int, height: int, fps: float) -> None:
        pass

    def send(self, frame: np.ndarray) -> None:
        self.frames += 1

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "null (frames are dropped)"


# containers OpenCV writes everywhere, and the codec used for each
VIDEO_FORMATS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}
RESERVE_BYTES = 1 << 20  # stop a recording while there is still room to finalise it
FULL_FIX = "free some space or record to another disk"


class FileSink:
    """A recording. Written under a temporary name beside the target and moved onto it only when
    it is finalised, so a crash or a kill never leaves a half-written file under the user's name.

    OpenCV's writer does not report write errors, so the free space is checked as frames go out:
    the recording stops with room left to finalise it (a WriteError naming the frames kept), and
    on close the file is read back to count the frames that really are in it."""

    name = "file"
    critical = True  # a failing recording stops the run: its frames are what the user asked for

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.fourcc = check_video_path(self.path)
        self.tmp: Path | None = None
        self.writer = None
        self.size = None
        self.fps = 30.0
        self.frames = 0  # frames handed to the writer
        self.kept: int | None = None  # frames in the finished file (after close)
        self.error: str | None = None  # why the recording stopped early
        self.fix = FULL_FIX

    def open(self, width: int, height: int, fps: float) -> None:
        from ..fsutil import check_writable_target

        check_writable_target(self.path, "recording")
        for old in self.path.parent.glob(f".{glob.escape(self.path.stem)}.recording-*{glob.escape(self.path.suffix)}"):
            pid = old.stem.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):  # a run that was killed before it could finish
                log.warning("an unfinished recording from an earlier run is kept as %s (rename it to keep it, "
                            "or delete it)", old)
        self.tmp = self.path.with_name(f".{self.path.stem}.recording-{os.getpid()}{self.path.suffix}")
        self.fps = float(fps or 30)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                      (int(width), int(height)))
        if not self.writer.isOpened():
            self.writer = None
            self._discard()
            raise WriteError(f"cannot write recording {self.path}: OpenCV has no {self.fourcc} encoder for "
                             f"{self.path.suffix}", "use a .mp4 or .avi path")
        self.size = (int(width), int(height))
        self.frames, self.kept, self.error, self.fix = 0, None, None, FULL_FIX
        self._peak = self._last_size = 0

    def _room_left(self) -> int:
        st = os.statvfs(self.tmp.parent)
        return st.f_bavail * st.f_frsize

    def send(self, frame: np.ndarray) -> None:
        if self.writer is None:
            raise WriteError(f"recording {self.path} is closed", "start the run again")
        if hasattr(os, "statvfs"):  # two cheap syscalls a frame
            try:
                room = self._room_left()
                size = os.stat(self.tmp).st_size
            except OSError as exc:  # the folder or the file went away (an unplugged disk)
                from ..fsutil import describe_os_error

                why, fix = describe_os_error(exc)
                raise self._stopped(why, fix) from None
            self._peak = max(self._peak, size - self._last_size)  # the largest write seen so far
            self._last_size = size
            # room to finish: the encoder's buffer and a few frames, plus the index (grows per frame)
            if room < RESERVE_BYTES + 4 * self._peak + 64 * self.frames:
                raise self._stopped("the disk is full")
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(frame)
        self.frames += 1

    def _stopped(self, why: str, fix: str = "") -> WriteError:
        self.error, self.fix = why, fix or FULL_FIX
        return WriteError(f"recording {self.path} stopped: {why}", self.fix)

    def close(self) -> None:
        """Finalise and move into place. Raises WriteError (saying how many frames are kept, and
        where) when the recording stopped early, lost frames or cannot be moved."""
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        if self.frames == 0:
            self._discard()
            if self.error:
                raise WriteError(f"recording {self.path} failed before its first frame: {self.error}", self.fix)
            return
        self.kept = _count_frames(self.tmp)
        if self.kept == 0:
            why = self.error or "the file is unreadable; the disk may be full"
            self.error = why
            where = f"; the partial file is kept as {self.tmp}" if self.tmp.exists() else "; nothing could be kept"
            raise WriteError(f"recording {self.path} could not be finalised ({why}){where}", self.fix)
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            from ..fsutil import describe_os_error

            why, fix = describe_os_error(exc)
            self.error = why
            raise WriteError(f"recording {self.path} cannot be moved into place ({why}); its {self.kept} frames "
                             f"are kept as {self.tmp}", fix) from None
        self.tmp = None
        if self.error or self.kept < self.frames:
            why = self.error or f"only {self.kept} of the {self.frames} frames sent reached the file"
            self.error = why
            raise WriteError(f"recording {self.path} stopped early ({why}); {self.kept} frames are kept in "
                             f"{self.path}", self.fix)

    def _discard(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                self.tmp.unlink()
            self.tmp = None

    def describe(self) -> str:
        return f"file {self.path}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else (or no way to tell): leave it alone
        return True
    return True


def check_video_path(path: Path) -> str:
    """The codec for ``path``'s extension, or a WriteError naming the ones that work."""
    ext = path.suffix.lower()
    if ext not in VIDEO_FORMATS:
        raise WriteError(f"cannot record to {path}: {ext or 'no extension'} is not a video format Mirage writes",
                         f"use one of {', '.join(VIDEO_FORMATS)}")
    return VIDEO_FORMATS[ext]


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if n <= 0:  # a container without a frame count: read it through
            while cap.grab():
                n += 1
        return n
    finally:
        cap.release()


class VirtualCameraSink:
    """pyvirtualcam: v4l2loopback on Linux, OBS / Unity Capture on Windows, OBS on macOS."""

    name = "virtualcam"

    def __init__(self, backend: str | None = None, device: str | None = None,
                 width: int = 0, height: int = 0, fps: float = 0):
        self.backend = backend or None
        self.device = device or None
        self.req = (int(width), int(height), float(fps))
        self.cam = None
        self.frames = 0
        self._buf = None

    def open(self, width: int, height: int, fps: float) -> None:
        import pyvirtualcam

        w = self.req[0] or width
        h = self.req[1] or height
        f = self.req[2] or fps or 30
        try:
            self.cam = pyvirtualcam.Camera(int(w), int(h), float(f), fmt=pyvirtualcam.PixelFormat.BGR,
                                           backend=self.backend, device=self.device)
        except Exception as exc:  # pyvirtualcam raises RuntimeError/ValueError with the backends' reasons
            raise VirtualCameraError(f"no virtual camera could be started ({' '.join(str(exc).split())[:300]})",
                              _vcam_fix()) from None
        log.info("virtual camera %s via %s at %dx%d %.0f fps", self.cam.device, self.cam.backend, w, h, f)

    def send(self, frame: np.ndarray) -> None:
        cam = self.cam
        if (frame.shape[1], frame.shape[0]) != (cam.width, cam.height):
            frame = cv2.resize(frame, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
        cam.send(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        if self.cam is not None:
            self.cam.close()
            self.cam = None

    def describe(self) -> str:
        if self.cam is None:
            return "virtual camera (closed)"
        return f"virtual camera {self.cam.device} ({self.cam.backend}, {self.cam.width}x{self.cam.height})"


def _vcam_fix() -> str:
    import sys

    if sys.platform.startswith("linux"):
        return ("install v4l2loopback and load it: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 "
                "card_label=\"Mirage Camera\" (see installer/linux-virtualcam.sh)")
    if sys.platform == "darwin":
        return "install OBS 30+ and start its Virtual Camera once"
    return "install OBS Studio (its virtual camera) or Unity Capture"


def make_sink(spec: str, *, backend: str = "", width: int = 0, height: int = 0, fps: float = 0):
    """``virtualcam`` | ``file:PATH`` | ``null``."""
    if spec in ("", "virtualcam", "vcam"):
        return VirtualCameraSink(backend or None, None, width, height, fps)
    if spec == "null":
        return NullSink()
    if spec.startswith("file:"):
        return FileSink(spec[5:])
    raise MirageError(f"unknown output {spec!r}", "use virtualcam, file:out.mp4 or null")
