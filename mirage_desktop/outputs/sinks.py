"""Where processed frames go: the virtual camera, a video file, nothing (benchmarks), a callback.

Every sink has ``open(width, height, fps)``, ``send(frame_bgr)``, ``close()`` and ``describe()``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import MirageError, VirtualCameraError

log = logging.getLogger(__name__)


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


class CallbackSink(NullSink):
    name = "callback"

    def __init__(self, fn: Callable[[np.ndarray], None]):
        super().__init__()
        self.fn = fn

    def send(self, frame: np.ndarray) -> None:
        self.frames += 1
        self.fn(frame)

    def describe(self) -> str:
        return "preview"


class FileSink:
    name = "file"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.writer = None
        self.size = None
        self.frames = 0

    def open(self, width: int, height: int, fps: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() in (".mp4", ".m4v", ".mov")
                                           else "MJPG"))
        self.writer = cv2.VideoWriter(str(self.path), fourcc, float(fps or 30), (int(width), int(height)))
        if not self.writer.isOpened():
            raise MirageError(f"cannot write video to {self.path}", "use a .mp4 or .avi path in a writable folder")
        self.size = (int(width), int(height))

    def send(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None

    def describe(self) -> str:
        return f"file {self.path}"


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
