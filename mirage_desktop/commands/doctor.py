"""`mirage doctor`: what works on this machine, and for each problem, the fix.

Each check is *required* (Mirage cannot do its job as set up until it is fixed) or *advisory*
(Mirage works, worse or without an optional part). The exit code is 1 when a required check
fails, and with ``--strict`` also when an advisory one does; otherwise 0.

Required: Python, onnxruntime, the settings (file and ``MIRAGE_*`` variables), the models the
settings need, a camera, the virtual camera, the Qt libraries the window needs; and, when the
voice changer is on (``enable_voice``), PulseAudio/PipeWire, the virtual microphone and the
audio devices. Advisory: a GPU provider (the CPU works, slowly), torch (CodeFormer), a display to
open the window on (``mirage run`` works without), and the voice checks while voice is off.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import sys
from dataclasses import dataclass

EPILOG = ("Exit code: 0 when every required check passes, 1 when one fails (with --strict also when an "
          "advisory one does). Required: Python, onnxruntime, settings, the models your settings need, a "
          "camera, the virtual camera, the window's Qt libraries, and (voice on) PulseAudio/PipeWire, "
          "the virtual microphone and audio devices. Advisory: GPU provider, torch, a display, and the "
          "voice checks while voice is off.")


@dataclass
class Check:
    area: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = False


def add_arguments(p) -> None:
    p.epilog = EPILOG
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 also when an advisory check fails")


# ---- settings -------------------------------------------------------------------------------
def _settings(state: dict) -> list[Check]:
    from .. import config

    path = config.settings_path()
    try:
        loaded = config.load()
    except Exception as exc:  # an environment value is wrong: the commands refuse to start (exit 2)
        fix = getattr(exc, "fix", "") or "fix or unset the MIRAGE_* variable it names"
        message = getattr(exc, "message", str(exc))
        out = [Check("environment", False, message, fix, True)]
        try:  # the other checks go on with the file's settings (and the defaults)
            values, notices = config.load_file()
            notices += config.env_notices()
            values.update(config._env_values(os.environ, strict=False))  # the variables that are fine
            state["settings"] = config.validate(config.Settings(**values))
        except Exception:  # noqa: BLE001
            notices, state["settings"] = [], config.Settings()
    else:
        out, notices = [], loaded.notices
        state["settings"] = loaded.settings
    for n in notices:
        if n.startswith("settings file"):
            if "was unreadable" in n:  # loading set it aside: the defaults are in use, nothing is lost
                out.append(Check("settings file", False, n, "set your options again in the window (the old file "
                                 "is kept under the name above)"))
            elif "cannot be read" in n:
                out.append(Check("settings file", False, n, f"make {path} a file you can read and write "
                                 "(check its permissions), or remove it", True))
            elif "unknown key" in n:  # e.g. written by a newer Mirage: harmless
                out.append(Check("settings file", False, n, f"remove that key from {path}"))
            else:  # a value that is wrong or out of range: that setting is not what the file says
                out.append(Check("settings file", False, n, f"fix or remove that key in {path}, or change the "
                                 "setting in the window (which rewrites the file)", True))
        elif "not a Mirage variable" in n:
            var = n.split(" ", 1)[0].split("=", 1)[0]
            out.append(Check("environment", False, n, f"rename {var} as suggested, or unset it", True))
        else:  # a retired variable
            var = n.split(":", 1)[0].split("=", 1)[0].strip()
            out.append(Check("environment", False, n, f"unset {var}"))
    if not out:
        where = str(path) if path.exists() else f"defaults ({path} not written yet)"
        env = sorted(k for k in os.environ if k.startswith("MIRAGE_") and k in config.setting_variables())
        out.append(Check("settings", True, where + (f"; from the environment: {', '.join(env)}" if env else "")))
    return out


# ---- video in and out -----------------------------------------------------------------------
def _camera(state: dict) -> list[Check]:
    from ..outputs.vcam_probe import v4l2loopback_devices
    from ..vision.capture import list_cameras

    settings = state.get("settings")
    chosen = getattr(settings, "camera", "0") or "0"
    env = os.environ.get("MIRAGE_CAMERA", "").strip()
    where = f"MIRAGE_CAMERA={env}" if env else f"the camera setting ({chosen})"
    loopback = {d["device"] for d in v4l2loopback_devices()}
    cams = [c for c in list_cameras() if c.get("device") not in loopback]
    no_cam_fix = ("plug in a webcam (Linux: it shows up as /dev/video*), or stream a video file instead: "
                  "mirage run --input clip.mp4, or in the window: Camera → “Image or video file…”")
    if not cams:
        found = "; only the virtual camera is there" if loopback else ""
        chosen_s = f" ({where})" if env else f" (the camera setting is {chosen})" if chosen != "0" else ""
        return [Check("camera", False, f"no camera found{found}{chosen_s}", no_cam_fix, True)]
    names = ", ".join(f"{c.get('device')} ({c.get('name')})" for c in cams)
    if sys.platform.startswith("linux"):
        device = chosen if chosen.startswith("/") else f"/dev/video{chosen}"
        match = [c for c in cams if c.get("device") == device]
        if not match:
            return [Check("camera", False, f"{where}: {device} is not here; cameras: {names}",
                          "choose one in the window's Camera list, or set MIRAGE_CAMERA to one of them "
                          "(`mirage devices` lists them)", True)]
        if not os.access(device, os.R_OK | os.W_OK):
            return [Check("camera", False, f"{device} cannot be opened: permission denied",
                          "add yourself to the video group: sudo usermod -aG video $USER, then log out and in",
                          True)]
        return [Check("camera", True, f"{device} ({match[0].get('name')}); all: {names}")]
    return [Check("camera", True, names)]


def _vcam(state: dict) -> list[Check]:
    from ..outputs.sinks import _vcam_fix
    from ..outputs.vcam_probe import backends

    ready = [b for b in backends() if b["available"]]
    if not ready:
        return [Check("virtual camera", False, "no virtual camera device found", _vcam_fix(), True)]
    if sys.platform.startswith("linux"):
        from ..outputs.vcam_probe import v4l2loopback_devices

        locked = [d["device"] for d in v4l2loopback_devices() if not os.access(d["device"], os.W_OK)]
        if locked and len(locked) == len(v4l2loopback_devices()):
            return [Check("virtual camera", False, f"{', '.join(locked)} cannot be written: permission denied",
                          "add yourself to the video group: sudo usermod -aG video $USER, then log out and in",
                          True)]
    return [Check("virtual camera", True, ", ".join(f"{b['backend']} {b['detail']}".strip() for b in ready))]


# ---- the window -----------------------------------------------------------------------------
def _qt(state: dict) -> list[Check]:
    from ..gui import qtlibs

    libs = qtlibs.check(display=False)  # can Qt load at all (libraries, plugin)?
    if not libs.ok:
        return [Check("Qt (window)", False, libs.problem, libs.fix, True)]
    r = qtlibs.check()  # and is there a display to open the window on, here and now?
    if not r.ok:  # `mirage run` works without one
        return [Check("Qt (window)", True, f"{libs.platform} platform plugin can load"),
                Check("display", False, r.problem, r.fix)]
    where = f", display {r.display}" if r.display else ""
    return [Check("Qt (window)", True, f"{r.platform} platform plugin can load{where}")]


# ---- voice ----------------------------------------------------------------------------------
def _voice_on(state: dict) -> bool:
    return bool(getattr(state.get("settings"), "enable_voice", False))


def _pulse(state: dict) -> list[Check]:
    import shutil
    import subprocess

    required = _voice_on(state)
    if not sys.platform.startswith("linux"):
        return []  # Windows/macOS: the cable (VB-Audio, BlackHole) is an audio device, checked below
    if not shutil.which("pactl"):
        return [Check("PulseAudio/PipeWire", False, "pactl not found",
                      "Debian/Ubuntu: sudo apt install pulseaudio-utils (works with PipeWire's pulse server too)",
                      required)]
    try:
        res = subprocess.run(["pactl", "info"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError) as exc:
        res = None
        err = str(exc)
    if res is None or res.returncode != 0:
        err = (res.stderr or res.stdout).strip() if res is not None else err
        err = (err.splitlines() or ["no answer"])[0].strip()  # one line
        return [Check("PulseAudio/PipeWire", False, f"no PulseAudio/PipeWire-pulse server is reachable ({err})",
                      "start it: systemctl --user start pipewire-pulse (PipeWire) or pulseaudio --start", required)]
    server = next((ln.split(":", 1)[1].strip() for ln in res.stdout.splitlines() if ln.startswith("Server Name:")),
                  "PulseAudio")
    out = [Check("PulseAudio/PipeWire", True, server)]
    from ..voice import mic

    try:
        st = mic.status()
    except Exception as exc:  # noqa: BLE001 - reported as a check
        return out + [Check("virtual microphone", False, str(exc), "run `mirage mic setup`", required)]
    if st["ready"]:
        out.append(Check("virtual microphone", True, f"“{mic.DESCRIPTION}” (source {st['source']}, "
                         f"sink {st['sink']})"))
    elif st["modules"]:
        out.append(Check("virtual microphone", False, f"“{mic.DESCRIPTION}” is half set up (modules "
                         f"{', '.join(st['modules'])})", "run `mirage mic setup` (it starts clean)", required))
    else:
        out.append(Check("virtual microphone", False, f"“{mic.DESCRIPTION}” is not set up",
                         "run `mirage mic setup` (again after each PulseAudio/PipeWire restart)", required))
    return out


def _audio(state: dict) -> list[Check]:
    required = _voice_on(state)
    try:
        import sounddevice

        sounddevice.get_portaudio_version()
    except OSError:
        return [Check("audio devices", False, "PortAudio library not found",
                      "Debian/Ubuntu: sudo apt install libportaudio2", required)]
    except ImportError:
        return [Check("audio devices", False, "sounddevice not installed", "pip install sounddevice", required)]
    from ..voice.audio_io import list_devices, resolve_device

    devs = list_devices()
    ins = [d for d in devs if d.get("max_input_channels")]
    outs = [d for d in devs if d.get("max_output_channels")]
    out = [Check("audio devices", bool(ins and outs), f"{len(ins)} input, {len(outs)} output",
                 "" if ins and outs else "plug in a microphone / speakers (`mirage devices` lists what is there)",
                 required and not (ins and outs))]
    settings = state.get("settings")
    for kind, spec, var in (("input", getattr(settings, "voice_input", ""), "MIRAGE_VOICE_INPUT"),
                            ("output", getattr(settings, "voice_output", ""), "MIRAGE_VOICE_OUTPUT")):
        if not spec and not required:
            continue
        try:
            d = resolve_device(spec, kind)
            out.append(Check(f"voice {kind}", True, d.label()))
        except Exception as exc:  # noqa: BLE001 - a DeviceError with its fix
            if not spec:
                where, fix = f"the default {kind} device", getattr(exc, "fix", "") or "plug one in"
            else:
                where = f"{var}={spec}" if os.environ.get(var) else f"the voice_{kind} setting ({spec})"
                fix = (f"set {var} (or the voice_{kind} setting) to a device `mirage devices` lists, or leave it "
                       f"empty for the default {kind}")
                if "mirage" in spec.lower():
                    fix = "run `mirage mic setup` to create it, or " + fix
            out.append(Check(f"voice {kind}", False, f"{where}: {getattr(exc, 'message', exc)}", fix, required))
    return out


# ---- compute --------------------------------------------------------------------------------
def _providers(state: dict) -> list[Check]:
    try:
        import onnxruntime as ort
    except ImportError:
        return [Check("onnxruntime", False, "not installed", "pip install onnxruntime (or onnxruntime-gpu)", True)]
    from ..models.runtime import resolve_providers

    avail = ort.get_available_providers()
    settings = state.get("settings")
    requested = getattr(settings, "providers", "auto")
    chosen = resolve_providers(requested)
    out = [Check("onnxruntime", True, f"{ort.__version__}; providers: {', '.join(avail)}; in use: "
                 f"{chosen[0] if chosen else 'none'}")]
    gpu = [p for p in avail if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider",
                                     "CoreMLExecutionProvider")]
    if not gpu:
        fix = {"Windows": "pip uninstall onnxruntime && pip install onnxruntime-directml (any GPU) or "
                          "onnxruntime-gpu (NVIDIA)",
               "Darwin": "use an Apple-silicon Mac with onnxruntime >= 1.17 (CoreML)"}.get(
            platform.system(), "NVIDIA: MIRAGE_GPU=cuda ./run.sh (onnxruntime-gpu; needs CUDA 12 and cuDNN 9)")
        out.append(Check("GPU provider", False, "only the CPU provider is available: expect a few FPS", fix))
    if requested not in ("", "auto"):
        from ..models.runtime import SHORT_NAMES

        wanted = [SHORT_NAMES.get(p.strip().lower(), p.strip()) for p in requested.split(",") if p.strip()]
        lacking = [p for p in wanted if p not in avail]
        if lacking:
            var = "MIRAGE_PROVIDERS" if os.environ.get("MIRAGE_PROVIDERS") else "the providers setting"
            out.append(Check("GPU provider", False, f"{var} asks for {', '.join(lacking)}, which this onnxruntime "
                             f"lacks; {chosen[0] if chosen else 'nothing'} is used instead",
                             "install the onnxruntime build for it (NVIDIA: MIRAGE_GPU=cuda ./run.sh), or set "
                             "providers to auto"))
    if "CUDAExecutionProvider" in avail:
        for lib, hint in (("cudart", "install the CUDA 12 runtime"), ("cublas", "install CUDA 12 cuBLAS"),
                          ("cudnn", "install cuDNN 9 (pip install nvidia-cudnn-cu12)")):
            found = ctypes.util.find_library(lib)
            out.append(Check(f"CUDA {lib}", bool(found), found or "not found on the library path: CUDA falls "
                             "back to the CPU", "" if found else hint))
    return out


def _gpu_memory(state: dict) -> list[Check]:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=5)
        if r.returncode == 0 and r.stdout.strip():
            return [Check("GPU", True, r.stdout.strip().replace("\n", "; "))]
    except (OSError, subprocess.SubprocessError):
        pass
    return []


def _torch(state: dict) -> list[Check]:
    settings = state.get("settings")
    needed = bool(getattr(settings, "enable_enhancer", False)) and getattr(settings, "enhancer", "") == "codeformer"
    try:
        import torch
    except ImportError:
        return [Check("torch", False, "not installed: the CodeFormer enhancer is unavailable (GFPGAN ONNX works)",
                      "pip install torch (CUDA build for NVIDIA GPUs), then pip install -e '.[enhancer]'"
                      + ("; or set enhancer to gfpgan" if needed else ""), needed)]
    cuda = torch.cuda.is_available()
    return [Check("torch", True, f"{torch.__version__}, CUDA {'available' if cuda else 'not available'}")]


def _models(state: dict) -> list[Check]:
    from .models import needed_features

    try:
        from ..models.registry import default_registry_path, load_registry

        reg = load_registry()
    except Exception as exc:  # noqa: BLE001 - models.toml itself is broken
        try:
            where = str(default_registry_path())
        except Exception:  # noqa: BLE001
            where = "models.toml"
        return [Check("models", False, f"the model list cannot be read: {exc}",
                      f"fix {where} (or unset MIRAGE_MODELS_TOML to use the built-in list)", True)]
    from ..config import models_dir
    from ..models.registry import status

    out = []
    for spec in reg.needed_for(needed_features(state.get("settings"))):
        try:
            s = status(spec)
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable models folder
            out.append(Check(f"model {spec.name}", False, str(exc),
                             f"check that {models_dir()} can be read (MIRAGE_MODELS_DIR moves it)", True))
            continue
        fix = f"mirage models download {spec.name}" if s.state == "missing" else \
            f"mirage models download --force {spec.name}" if s.state == "corrupt" else \
            f"mirage models verify --pin {spec.name}"
        out.append(Check(f"model {spec.name}", s.ok, f"{s.state} ({s.detail})" if s.detail else s.state,
                         "" if s.ok else fix, True))
    return out


def collect() -> list[Check]:
    checks = [Check("python", sys.version_info >= (3, 10), platform.python_version(), "use Python 3.10+", True)]
    state: dict = {}
    for fn in (_settings, _providers, _gpu_memory, _torch, _models, _camera, _vcam, _qt, _pulse, _audio):
        try:
            checks.extend(fn(state))
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            checks.append(Check(fn.__name__.strip("_"), False, f"the check itself failed: {exc}",
                                "please report this with `mirage -vv doctor`"))
    return checks


def exit_code(checks: list[Check], strict: bool = False) -> int:
    return 1 if any(not c.ok and (c.required or strict) for c in checks) else 0


def run(args) -> int:
    checks = collect()
    strict = getattr(args, "strict", False)
    if args.json:
        import json
        from dataclasses import asdict

        print(json.dumps([asdict(c) for c in checks], indent=2))
        return exit_code(checks, strict)
    for c in checks:
        mark = "ok" if c.ok else "FIX" if c.required or strict else "note"
        print(f"[{mark:<4}] {c.area:<20} {' '.join(str(c.detail).split())}")  # each one line
        if not c.ok and c.fix:
            print(f"       fix: {' '.join(str(c.fix).split())}")
    bad = [c for c in checks if not c.ok and (c.required or strict)]
    notes = [c for c in checks if not c.ok and not (c.required or strict)]
    if not bad and not notes:
        print(f"\nall {len(checks)} checks ok")
    else:
        parts = [f"{len(checks) - len(bad) - len(notes)} ok"]
        if bad:
            parts.append(f"{len(bad)} to fix")
        if notes:
            parts.append(f"{len(notes)} advisory (Mirage works without; --strict counts them)")
        print("\n" + ", ".join(parts))
    return exit_code(checks, strict)
