"""Mirage Desktop: real-time face and voice swap to a virtual webcam and microphone."""

__version__ = "0.1.0"

import os as _os

# OpenCV checks this before its image decoders allocate, but reads it only when cv2 is first
# imported: it is set here, before any module of the package imports cv2. The header check in
# vision/image_io.py refuses the same size earlier for the common formats.
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(100_000_000))
