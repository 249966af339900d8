"""`mirage doctor`: what works on this machine, and for each problem, the fix."""

from __future__ import annotations

import ctypes.util
import platform
import sys
from dataclasses import dataclass


@dataclass
class Check:
    area: str
    ok: bool
    detail: str
    fix: str = ""
    blocking: bool = False


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _providers() -> list[Check]:
    out = []
    try:
        import onnxruntime as ort
    except ImportError:
        return [Check("onnxruntime", False, "not installed", "pip install onnxruntime (or onnxruntime-gpu)", True)]
    avail = ort.get_available_providers()
    out.append(Check("onnxruntime", True, f"{ort.__version__}; providers: {', '.join(avail)}"))
    gpu = [p for p in avail if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider",
                                     "CoreMLExecutionProvider")]
    if not gpu:
        fix = {"Windows": "pip uninstall onnxruntime && pip install onnxruntime-directml (any GPU) or "
                          "onnxruntime-gpu (NVIDIA)",
               "Darwin": "use an Apple-silicon Mac with onnxruntime >= 1.17 (CoreML)"}.get(
            platform.system(), "NVIDIA: pip uninstall onnxruntime && pip install onnxruntime-gpu")
        out.append(Check("GPU provider", False, "only the CPU provider is available: expect a few FPS", fix))
    if "CUDAExecutionProvider" in avail:
        for lib, hint in (("cudart", "install the CUDA 12 runtime"), ("cublas", "install CUDA 12 cuBLAS"),
                          ("cudnn", "install cuDNN 9 (pip install nvidia-cudnn-cu12)")):
            found = ctypes.util.find_library(lib)
            out.append(Check(f"CUDA {lib}", bool(found), found or "not found on the library path", hint))
    return out


def _gpu_memory() -> list[Check]:
    try:
        import subprocess

        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=5)
        if r.returncode == 0 and r.stdout.strip():
            return [Check("GPU", True, r.stdout.strip().replace("\n", "; "))]
    except (OSError, subprocess.SubprocessError):
        pass
    return []


def _vcam() -> list[Check]:
    from ..outputs.sinks import _vcam_fix
    from ..outputs.vcam_probe import backends

    bs = backends()
    ready = [b for b in bs if b["available"]]
    if ready:
        return [Check("virtual camera", True, ", ".join(f"{b['backend']} {b['detail']}".strip() for b in ready))]
    return [Check("virtual camera", False, "no virtual camera device found", _vcam_fix())]


def _models() -> list[Check]:
    out = []
    try:
        from ..config import load
        from ..models.registry import load_registry, status

        reg = load_registry()
        settings = load().settings
        needed = {"detect", "recognize", "swap" if settings.swapper_precision == "fp16" else "swap_fp32"}
        if settings.enable_enhancer:
            needed.add("enhance_" + settings.enhancer)
        for spec in reg.needed_for(needed):
            s = status(spec)
            fix = f"mirage models download {spec.name}" if s.state == "missing" else \
                f"mirage models download --force {spec.name}" if s.state == "corrupt" else \
                f"mirage models verify --pin {spec.name}"
            out.append(Check(f"model {spec.name}", s.ok, f"{s.state} {s.detail}".strip(), "" if s.ok else fix))
    except Exception as exc:
        out.append(Check("models", False, str(exc), "check models.toml / MIRAGE_MODELS_DIR"))
    return out


def _audio() -> list[Check]:
    try:
        import sounddevice

        sounddevice.get_portaudio_version()
    except OSError:
        return [Check("audio", False, "PortAudio library not found", "Debian/Ubuntu: sudo apt install libportaudio2")]
    except ImportError:
        return [Check("audio", False, "sounddevice not installed", "pip install sounddevice")]
    return [Check("audio", True, "PortAudio available")]


def _torch() -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("torch", False, "not installed: the CodeFormer enhancer is unavailable (GFPGAN ONNX works)",
                      "pip install torch (CUDA build for NVIDIA GPUs), then pip install -e '.[enhancer]'")]
    cuda = torch.cuda.is_available()
    return [Check("torch", True, f"{torch.__version__}, CUDA {'available' if cuda else 'not available'}")]


def collect() -> list[Check]:
    checks = [Check("python", sys.version_info >= (3, 10), platform.python_version(), "use Python 3.10+", True)]
    for fn in (_providers, _gpu_memory, _torch, _vcam, _models, _audio):
        try:
            checks.extend(fn())
        except Exception as exc:
            checks.append(Check(fn.__name__.strip("_"), False, f"check failed: {exc}"))
    return checks


def run(args) -> int:
    checks = collect()
    if args.json:
        import json
        from dataclasses import asdict

        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            print(f"[{'ok' if c.ok else '!!'}] {c.area:<22} {c.detail}")
            if not c.ok and c.fix:
                print(f"     fix: {c.fix}")
        bad = [c for c in checks if not c.ok]
        print(f"\n{len(checks) - len(bad)} ok, {len(bad)} to fix" if bad else f"\nall {len(checks)} checks ok")
    return 1 if any(not c.ok and c.blocking for c in checks) else 0
