"""The "Mirage Microphone" virtual microphone on Linux (PulseAudio or PipeWire's pulse layer).

``setup()`` loads two modules with pactl:

    pactl load-module module-null-sink sink_name=mirage_mic_sink \
        sink_properties='device.description="Mirage Microphone Sink"'
    pactl load-module module-remap-source master=mirage_mic_sink.monitor source_name=mirage_mic \
        source_properties='device.description="Mirage Microphone"'

The app plays into the null sink (``--output "Mirage Microphone"`` resolves to it); the remap
source turns its monitor into a proper source, so call apps list "Mirage Microphone" among
microphones (monitors are often hidden). ``remove()`` unloads both. Modules do not survive a
PulseAudio restart; run ``mirage mic setup`` again after one.
"""

from __future__ import annotations

import shlex
import sys

from ..errors import DeviceError
from .audio_io import pactl, pulse_available

SINK = "mirage_mic_sink"
SOURCE = "mirage_mic"
DESCRIPTION = "Mirage Microphone"


def _require_pulse() -> None:
    if not sys.platform.startswith("linux"):
        raise DeviceError("`mirage mic` creates the virtual microphone on Linux only",
                          "on Windows install VB-Audio CABLE, on macOS BlackHole, then use --output 'CABLE Input' / "
                          "'BlackHole'")
    if not pulse_available():
        raise DeviceError("no PulseAudio/PipeWire-pulse server is reachable",
                          "start it (`pulseaudio --start` or `systemctl --user start pipewire-pulse`) and retry")


def _modules() -> list[tuple[str, str, str]]:
    res = pactl("list", "short", "modules")
    out = []
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return out


def _arg_tokens(args: str) -> list[str]:
    """A module's argument string split into ``key=value`` tokens (quotes honoured when balanced)."""
    try:
        return shlex.split(args)
    except ValueError:  # unbalanced quotes in someone else's arguments
        return args.split()


# whole-token matches only: ``sink_name=mirage_mic_sink_user`` is someone else's sink
_OUR_ARG = {"module-null-sink": f"sink_name={SINK}", "module-remap-source": f"source_name={SOURCE}"}


def _ours() -> list[tuple[str, str, str]]:
    return [m for m in _modules() if m[1] in _OUR_ARG and _OUR_ARG[m[1]] in _arg_tokens(m[2])]


def status() -> dict:
    _require_pulse()
    mods = _ours()
    sink = any(m[1] == "module-null-sink" for m in mods)
    source = any(m[1] == "module-remap-source" for m in mods)
    return {"sink": SINK if sink else None, "source": SOURCE if source else None,
            "modules": [m[0] for m in mods], "ready": sink and source}


def setup() -> dict:
    """Create the virtual microphone (idempotent); returns :func:`status`."""
    _require_pulse()
    st = status()
    if st["ready"]:
        return st
    if st["modules"]:  # half there: start clean
        remove()
    res = pactl("load-module", "module-null-sink", f"sink_name={SINK}",
                f"sink_properties='device.description=\"{DESCRIPTION} Sink\"'")
    if res.returncode != 0:
        raise DeviceError(f"cannot create the null sink: {res.stderr.strip() or res.stdout.strip()}",
                          "check that PulseAudio/PipeWire-pulse is running (`pactl info`)")
    res = pactl("load-module", "module-remap-source", f"master={SINK}.monitor", f"source_name={SOURCE}",
                f"source_properties='device.description=\"{DESCRIPTION}\"'")
    if res.returncode != 0:
        remove()
        raise DeviceError(f"cannot create the remap source: {res.stderr.strip() or res.stdout.strip()}",
                          "check that module-remap-source is available (`pactl list short modules`)")
    return status()


def remove() -> dict:
    """Unload our modules (remap source first); returns :func:`status`."""
    _require_pulse()
    for mod_id, name, _ in sorted(_ours(), key=lambda m: m[1] != "module-remap-source"):
        pactl("unload-module", mod_id)
    return status()
