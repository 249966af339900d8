"""Frame sources: a camera (MJPG requested, real fps measured), a video file, a still image.

Every source has ``open()``, ``read() -> frame | None`` (None: nothing more / lost),
``close()``, ``fps`` and ``size``. A camera that stops delivering raises DeviceError with the
fix; the capture thread reports it and keeps trying to reopen it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from ..errors import DeviceError, InputImageError
from .image_io import load_image

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@runtime_checkable
class FrameSource(Protocol):
    """Where frames come from: a camera, a file, a still (a remote engine adds a WebRTC track).
    ``read()`` returns a BGR frame, or None for "nothing now" (a camera) / "no more" (a file).
    An ``open()``, if there is one, is called at start so a missing camera fails the start."""

    name: str
    fps: float

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


def check_source(obj) -> "FrameSource":
    missing = [a for a in ("name", "read", "close") if not hasattr(obj, a)]  # open() is optional
    if missing:
        raise DeviceError(f"{type(obj).__name__} is not a frame source (missing {', '.join(missing)})",
                          "a source needs name, read() and close() (and may have open())")
    return obj


def _pace(due: float, fps: float) -> float:
    """Sleep until ``due``; return when the next frame is due (never more than 0.5 s behind)."""
    delay = due - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    return max(due + 1.0 / fps, time.perf_counter() - 0.5)


CAMERA_FIX = "use 0, 1, ... or a device path such as /dev/video0; `mirage devices` lists the cameras"
MAX_CAMERA_INDEX = 1023  # past any real device count; a larger number overflows OpenCV's C int
V4L2_MAJOR = 81  # the Linux device number of video4linux nodes


def parse_camera(spec: int | str) -> int | str:
    """A camera index (``0``, ``"1"``) or a device path (``/dev/video2``), checked before anything
    touches a driver: a negative or non-numeric value is a DeviceError naming the fix."""
    if isinstance(spec, bool):
        raise DeviceError(f"camera {spec!r} is not a camera", CAMERA_FIX)
    if isinstance(spec, int):
        if not 0 <= spec <= MAX_CAMERA_INDEX:
            raise DeviceError(f"camera {spec} is not a camera index (0 to {MAX_CAMERA_INDEX})", CAMERA_FIX)
        return spec
    text = str(spec).strip()
    if text.isascii() and text.isdigit():
        return parse_camera(int(text))
    if text.isascii() and text.lstrip("+-").isdigit():
        raise DeviceError(f"camera {text} is not a camera index (indexes start at 0)", CAMERA_FIX)
    if text and (text.startswith("/dev/") or "/" in text or "\\" in text):
        if not Path(text).exists():
            raise DeviceError(f"camera {text} does not exist", CAMERA_FIX)
        return text
    raise DeviceError(f"camera {text!r} is neither a camera index nor a device path", CAMERA_FIX)


class CameraSource:
    kind = "camera"

    def __init__(self, index: int | str = 0, width: int = 1280, height: int = 720, fps: int = 30,
                 mjpg: bool = True):
        self.index, self.req = parse_camera(index), (int(width), int(height), int(fps))
        self.mjpg = mjpg
        self.cap = None
        self.fps = float(fps)
        self.size = (int(width), int(height))
        self.measured_fps = 0.0
        self._times: list[float] = []
        self._fails = 0

    @property
    def name(self) -> str:
        return f"camera {self.index}"

    def open(self) -> None:
        backend = cv2.CAP_DSHOW if sys.platform == "win32" else cv2.CAP_V4L2 if sys.platform.startswith("linux") \
            else cv2.CAP_AVFOUNDATION if sys.platform == "darwin" else cv2.CAP_ANY
        cap = cv2.VideoCapture(self.index, backend)
        if not cap.isOpened():
            cap.release()
            cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            cap.release()
            raise DeviceError(f"camera {self.index} cannot be opened",
                              "check it is plugged in and not used by another app; `mirage devices` lists cameras")
        w, h, fps = self.req
        if self.mjpg:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
        cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise DeviceError(f"camera {self.index} opened but gives no frames",
                              "close other apps using it, or pick another camera with --camera")
        self.size = (frame.shape[1], frame.shape[0])
        self.fps = cap.get(cv2.CAP_PROP_FPS) or float(fps)
        self.cap = cap
        self._fails = 0

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            self.open()
        ok, frame = self.cap.read()
        if not ok or frame is None:
            self._fails += 1
            if self._fails >= 5:
                self.close()
                raise DeviceError(f"camera {self.index} stopped delivering frames",
                                  "check the cable, or pick another camera with --camera")
            return None
        self._fails = 0
        now = time.perf_counter()
        self._times.append(now)
        if len(self._times) > 60:
            self._times.pop(0)
        if len(self._times) >= 10:
            self.measured_fps = (len(self._times) - 1) / (self._times[-1] - self._times[0])
        return frame

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class VideoFileSource:
    kind = "file"

    def __init__(self, path: str | Path, loop: bool = False, realtime: bool = True):
        self.path = Path(path)
        self.loop, self.realtime = loop, realtime
        self.cap = None
        self.fps, self.size = 30.0, (0, 0)
        self._next = 0.0
        self.measured_fps = 0.0

    @property
    def name(self) -> str:
        return str(self.path)

    def open(self) -> None:
        if not self.path.is_file():
            raise InputImageError(f"video {self.path} does not exist", "check the --input path")
        cap = cv2.VideoCapture(str(self.path))
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            cap.release()
            raise InputImageError(f"video {self.path} cannot be decoded", "convert it to H.264 MP4")
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.size = (frame.shape[1], frame.shape[0])
        self.cap = cap
        self._next = time.perf_counter()

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            self.open()
        if self.realtime:
            self._next = _pace(self._next, self.fps)
        ok, frame = self.cap.read()
        if not ok:
            if not self.loop:
                return None
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
            if not ok:
                return None
        return frame

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageSource:
    """A still photo delivered as a stream (for demos, screenshots and benchmarks)."""

    kind = "image"

    def __init__(self, image: str | Path | np.ndarray, fps: float = 30.0, frames: int | None = None,
                 realtime: bool = True, size: tuple[int, int] | None = None):
        self.image = image
        self.fps = float(fps)
        self.frames = frames
        self.realtime = realtime
        self._n = 0
        self._img: np.ndarray | None = None
        self._size = size
        self._next = 0.0
        self.measured_fps = 0.0

    @property
    def name(self) -> str:
        return "image" if isinstance(self.image, np.ndarray) else str(self.image)

    @property
    def size(self) -> tuple[int, int]:
        if self._img is None:
            self.open()
        return (self._img.shape[1], self._img.shape[0])

    def open(self) -> None:
        img = self.image if isinstance(self.image, np.ndarray) else load_image(self.image, max_side=4096)
        if self._size:
            img = cv2.resize(img, self._size, interpolation=cv2.INTER_AREA)
        self._img = np.ascontiguousarray(img)
        self._next = time.perf_counter()

    def read(self) -> np.ndarray | None:
        if self._img is None:
            self.open()
        if self.frames is not None and self._n >= self.frames:
            return None
        if self.realtime:
            self._next = _pace(self._next, self.fps)
        self._n += 1
        return self._img.copy()

    def close(self) -> None:
        pass


def _is_video_device(path: str) -> bool:
    """A camera device node (``/dev/video2``), not any path under /dev (``/dev/stdin`` is a file)."""
    import stat

    if not path.startswith("/dev/"):
        return False
    try:
        st = Path(path).stat()
    except OSError:
        return Path(path).name.startswith("video")  # not plugged in yet: say so as a camera
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == V4L2_MAJOR


def open_source(spec: str | int, *, width: int = 1280, height: int = 720, fps: int = 30, loop: bool = True,
                realtime: bool = True):
    """``0`` / ``"1"`` / ``/dev/video2`` → camera; an image path → still; anything else → video file."""
    if isinstance(spec, int) or (isinstance(spec, str) and ((spec.strip().isascii() and spec.strip().isdigit())
                                                   or _is_video_device(spec))):
        return CameraSource(spec, width, height, fps)
    p = Path(spec)
    if p.suffix.lower() in IMAGE_EXTS:
        return ImageSource(p, fps=fps, realtime=realtime)
    return VideoFileSource(p, loop=loop, realtime=realtime)


def list_cameras(max_index: int = 8) -> list[dict]:
    """Cameras that open, with their default size. Probing is quiet and quick."""
    out = []
    if sys.platform.startswith("linux"):
        import glob

        nodes = sorted(glob.glob("/dev/video*"))
        for node in nodes:
            idx = int(node.replace("/dev/video", "")) if node[10:].isdigit() else None
            name = ""
            try:
                name = Path(f"/sys/class/video4linux/video{idx}/name").read_text().strip()
            except OSError:
                pass
            out.append({"index": idx, "device": node, "name": name or node})
        return out
    for i in range(max_index):
        cap = cv2.VideoCapture(i)
        if cap.isOpened():
            out.append({"index": i, "device": str(i), "name": f"camera {i}",
                        "size": (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))})
        cap.release()
    return out
