"""Audio devices through sounddevice (PortAudio): listing, choosing by name or index, opening.

On Linux, PulseAudio / PipeWire-pulse sinks and sources are reachable by name too: PortAudio
sees them through the ALSA ``pulse`` device, and we point that device at a given sink/source by
setting ``PULSE_SINK`` / ``PULSE_SOURCE`` while the stream is opened (libpulse reads them when the
ALSA plugin creates its context). That is how ``--output "Mirage Microphone"`` writes into the
null sink behind the virtual microphone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass

from ..errors import DeviceError

log = logging.getLogger(__name__)

VIRTUAL_CABLE_PATTERNS = (
    r"cable input", r"cable output", r"vb-audio", r"blackhole", r"mirage microphone", r"mirage_mic",
)
_ENV_LOCK = threading.Lock()


def is_virtual_cable(name: str) -> bool:
    low = (name or "").lower()
    return any(re.search(p, low) for p in VIRTUAL_CABLE_PATTERNS)


def _sd():
    """sounddevice, or None when PortAudio is missing."""
    try:
        import sounddevice as sd

        return sd
    except (OSError, ImportError) as exc:
        log.info("sounddevice unavailable: %s", exc)
        return None


# --- PulseAudio ------------------------------------------------------------------------------
def pactl(*args: str, timeout: float = 5.0) -> subprocess.CompletedProcess:
    exe = shutil.which("pactl")
    if not exe:
        raise DeviceError("pactl not found", "install pulseaudio-utils (PulseAudio or PipeWire-pulse)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


def pulse_available() -> bool:
    if not sys.platform.startswith("linux") or not shutil.which("pactl"):
        return False
    try:
        return pactl("info", timeout=3.0).returncode == 0
    except (subprocess.SubprocessError, OSError, DeviceError):
        return False


def pulse_devices(kind: str) -> list[dict]:
    """Pulse sinks (kind="output") or sources (kind="input"): [{name, description}]."""
    what = "sinks" if kind == "output" else "sources"
    try:
        res = pactl("list", what)
    except (subprocess.SubprocessError, OSError, DeviceError):
        return []
    if res.returncode != 0:
        return []
    out, cur = [], None
    for line in res.stdout.splitlines():
        s = line.strip()
        if s.startswith("Name:"):
            cur = {"name": s.split(":", 1)[1].strip(), "description": ""}
            out.append(cur)
        elif s.startswith("Description:") and cur is not None:
            cur["description"] = s.split(":", 1)[1].strip()
    return out


# --- listing ---------------------------------------------------------------------------------
def list_devices() -> list[dict]:
    """PortAudio devices, plus (Linux) PulseAudio sinks/sources reachable through ALSA ``pulse``.

    Keys: index, name, hostapi, max_input_channels, max_output_channels, default_samplerate,
    is_virtual_cable. Pulse entries have ``index`` None, ``hostapi`` "PulseAudio" and a
    ``pulse_name``. Returns [] (no exception) when PortAudio is missing.
    """
    sd = _sd()
    if sd is None:
        return []
    try:
        devs = sd.query_devices()
        apis = sd.query_hostapis()
    except Exception as exc:  # PortAudio present but broken
        log.info("cannot query audio devices: %s", exc)
        return []
    out = []
    for i, d in enumerate(devs):
        out.append({
            "index": i,
            "name": d["name"],
            "hostapi": apis[d["hostapi"]]["name"] if d["hostapi"] < len(apis) else str(d["hostapi"]),
            "max_input_channels": int(d["max_input_channels"]),
            "max_output_channels": int(d["max_output_channels"]),
            "default_samplerate": float(d["default_samplerate"]),
            "is_virtual_cable": is_virtual_cable(d["name"]),
        })
    if _pulse_portaudio_index(out) is not None and pulse_available():
        for kind in ("output", "input"):
            for p in pulse_devices(kind):
                out.append({
                    "index": None,
                    "name": p["description"] or p["name"],
                    "hostapi": "PulseAudio",
                    "max_input_channels": 2 if kind == "input" else 0,
                    "max_output_channels": 2 if kind == "output" else 0,
                    "default_samplerate": 48000.0,
                    "is_virtual_cable": is_virtual_cable(p["description"]) or is_virtual_cable(p["name"]),
                    "pulse_name": p["name"],
                })
    return out


def _pulse_portaudio_index(devs: list[dict]) -> int | None:
    for d in devs:
        if d["index"] is not None and d["name"].lower() == "pulse":
            return d["index"]
    return None


# --- resolution ------------------------------------------------------------------------------
@dataclass
class ResolvedDevice:
    kind: str  # "input" | "output"
    index: int | None  # PortAudio index (None = PortAudio default)
    name: str
    samplerate: float
    channels: int
    pulse_name: str | None = None  # route the ALSA pulse device to this sink/source

    def label(self) -> str:
        return self.name + (f" (pulse: {self.pulse_name})" if self.pulse_name else "")


def _channels_key(kind: str) -> str:
    return "max_input_channels" if kind == "input" else "max_output_channels"


def _not_found(kind: str, spec) -> DeviceError:
    flag = "--input" if kind == "input" else "--output"
    fix = f"run `mirage devices` to list devices and pass one with {flag}"
    if "mirage" in str(spec).lower():
        fix = "run `mirage mic setup` to create it, or " + fix
    return DeviceError(f"{kind} device {spec!r} not found", fix)


def resolve_device(spec, kind: str) -> ResolvedDevice:
    """Find a device by index, exact name, or name fragment (case-insensitive); raise DeviceError."""
    if kind not in ("input", "output"):
        raise ValueError(kind)
    sd = _sd()
    if sd is None:
        raise DeviceError("PortAudio is not available", "install libportaudio2 (Linux) or reinstall sounddevice")
    devs = [d for d in list_devices() if d["index"] is not None]
    key = _channels_key(kind)
    spec_s = "" if spec is None else str(spec).strip()
    if spec_s == "":
        try:
            idx = sd.default.device[0 if kind == "input" else 1]
            if idx is None or idx < 0:
                idx = sd.query_devices(kind=kind)["index"]
        except Exception:
            raise DeviceError(f"there is no default {kind} device",
                              f"plug one in or pass --{kind} (see `mirage devices`)") from None
        d = devs[int(idx)]
        return ResolvedDevice(kind, d["index"], d["name"], d["default_samplerate"], min(2, d[key]) or 1)
    if re.fullmatch(r"\d+", spec_s):
        i = int(spec_s)
        match = [d for d in devs if d["index"] == i]
        if not match:
            raise _not_found(kind, spec)
        if match[0][key] < 1:
            raise DeviceError(f"device {i} ({match[0]['name']}) has no {kind} channels",
                              "run `mirage devices` and pick another")
        d = match[0]
        return ResolvedDevice(kind, i, d["name"], d["default_samplerate"], min(2, d[key]))
    low = spec_s.lower()
    usable = [d for d in devs if d[key] > 0]
    for pred in (lambda n: n == low, lambda n: n.startswith(low), lambda n: low in n):
        hits = [d for d in usable if pred(d["name"].lower())]
        if hits:
            if len(hits) > 1:
                log.info("%s device %r matches %d devices; using %s", kind, spec_s, len(hits), hits[0]["name"])
            d = hits[0]
            return ResolvedDevice(kind, d["index"], d["name"], d["default_samplerate"], min(2, d[key]))
    # PulseAudio sinks/sources through ALSA "pulse"
    pulse_idx = _pulse_portaudio_index(devs)
    if pulse_idx is not None and pulse_available():
        cands = pulse_devices(kind)
        if kind == "input":  # prefer real sources to monitors
            cands.sort(key=lambda p: p["name"].endswith(".monitor"))
        for pred in (lambda s: s == low, lambda s: low in s):
            for p in cands:
                if pred(p["name"].lower()) or pred(p["description"].lower()):
                    return ResolvedDevice(kind, pulse_idx, p["description"] or p["name"], 48000.0, 1,
                                          pulse_name=p["name"])
    raise _not_found(kind, spec)


# --- opening ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _pulse_env(dev: ResolvedDevice):
    if not dev.pulse_name:
        yield
        return
    var = "PULSE_SINK" if dev.kind == "output" else "PULSE_SOURCE"
    with _ENV_LOCK:
        old = os.environ.get(var)
        os.environ[var] = dev.pulse_name
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old


def device_error(exc: Exception, dev: ResolvedDevice) -> DeviceError:
    msg = " ".join(str(exc).split())
    flag = "--input" if dev.kind == "input" else "--output"
    low = msg.lower()
    if "unavailable" in low or "busy" in low or "-9985" in low or "-9993" in low:
        return DeviceError(f"{dev.kind} device {dev.label()!r} is busy or unavailable ({msg})",
                           f"close the other app using it, or pick another device with {flag}")
    return DeviceError(f"cannot open {dev.kind} device {dev.label()!r} ({msg})",
                       f"run `mirage devices` and pick another device with {flag}")


def open_stream(dev: ResolvedDevice, samplerate: int, blocksize: int, callback, channels: int | None = None,
                latency: float | str = "low"):
    """Open (not start) an InputStream/OutputStream of float32 for ``dev``; DeviceError on failure.

    ``latency``: PortAudio's suggested latency, "low" or seconds. Through ALSA (and so the
    ``pulse`` device) PortAudio makes the device buffer that many callbacks of ``blocksize``,
    at least two: "low" gives two."""
    sd = _sd()
    if sd is None:
        raise DeviceError("PortAudio is not available", "install libportaudio2 (Linux) or reinstall sounddevice")
    cls = sd.InputStream if dev.kind == "input" else sd.OutputStream
    try:
        with _pulse_env(dev):
            return cls(device=dev.index, samplerate=samplerate, blocksize=blocksize,
                       channels=channels or dev.channels, dtype="float32", callback=callback,
                       latency=latency)
    except Exception as exc:  # sd.PortAudioError, ValueError for bad parameters
        raise device_error(exc, dev) from exc
