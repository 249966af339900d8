"""What virtual camera backends and devices this machine has."""

from __future__ import annotations

import sys
from pathlib import Path


def backends() -> list[dict]:
    """pyvirtualcam's registered backends and whether a device for each seems present."""
    try:
        import pyvirtualcam.camera as pc
    except Exception as exc:  # pyvirtualcam missing or its native part broken
        return [{"backend": "pyvirtualcam", "available": False, "detail": f"pyvirtualcam cannot load: {exc}"}]
    out = []
    for name in sorted(pc.BACKENDS):
        detail = ""
        available = True
        if name == "v4l2loopback":
            devs = v4l2loopback_devices()
            available = bool(devs)
            detail = ", ".join(f"{d['device']} ({d['name']})" for d in devs) or \
                "no v4l2loopback device: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 " \
                "card_label=\"Mirage Camera\""
        out.append({"backend": name, "available": available, "detail": detail})
    return out


def v4l2loopback_devices() -> list[dict]:
    if not sys.platform.startswith("linux"):
        return []
    out = []
    for node in sorted(Path("/sys/class/video4linux").glob("video*")):
        try:
            name = (node / "name").read_text().strip()
            driver = (node / "device" / "driver").resolve().name if (node / "device" / "driver").exists() else ""
        except OSError:
            continue
        if "loopback" in driver.lower() or "v4l2loopback" in str((node / "device").resolve()) \
                or Path("/sys/module/v4l2loopback").exists() and "Dummy" in name or "Mirage" in name:
            out.append({"device": f"/dev/{node.name}", "name": name})
    return out
