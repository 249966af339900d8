"""`mirage serve`: the engine as a secured WebRTC server, its monitoring endpoints, a browser
client, and the desktop's remote mode (the optional ``serve`` extra: aiortc, aiohttp, PyJWT,
prometheus_client).

* :mod:`.auth` — the shared secret, HS256 tokens, rate limits.
* :mod:`.guard` — the frame-size guard and the invalid-frame window (anomaly abandonment).
* :mod:`.tracks` — a WebRTC track as the pipeline's FrameSource, the pipeline's FrameSink as a track.
* :mod:`.session` — one client: its peer connection, its own engine on the shared models.
* :mod:`.app` — the aiohttp application: signalling, endpoints, the static client.
* :mod:`.exposition` — /metrics in the Prometheus text format.
* :mod:`.client` — an aiortc client (tests, benchmark, the desktop's remote mode).
* :mod:`.remote` — `mirage run --remote`: local pass-through whenever the server is away.
"""

from __future__ import annotations

from ..errors import MirageError

EXTRA_FIX = "install the serving extra: pip install 'mirage-desktop[serve]'"


def require_serve_extra() -> None:
    """Raise a MirageError naming the fix when the serving libraries are not installed."""
    missing = []
    for mod in ("aiortc", "aiohttp", "jwt", "prometheus_client"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise MirageError(f"`mirage serve` needs {', '.join(missing)}", EXTRA_FIX)
