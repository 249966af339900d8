"""Errors a person can act on: one line that says what went wrong and how to fix it."""

from __future__ import annotations


class MirageError(Exception):
    """A failure with a one-line message and, where we know it, the fix."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:  # one line, always
        text = self.message if not self.fix else f"{self.message} — {self.fix}"
        return " ".join(text.split())


class InputImageError(MirageError):
    """An image that cannot be used (unreadable, empty, no face...)."""


class ModelError(MirageError):
    """A model that is missing, corrupt or fails to load or run."""


class DeviceError(MirageError):
    """A camera, virtual camera or audio device that cannot be opened."""


class VirtualCameraError(DeviceError):
    """The virtual camera (v4l2loopback, OBS, Unity Capture) cannot be opened."""


class WriteError(MirageError):
    """A file the app writes (output, recording, settings, cache, download) cannot be written."""
