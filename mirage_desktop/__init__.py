"""Mirage Desktop: real-time face and voice swap to a virtual webcam and microphone."""

__version__ = "0.1.0"
