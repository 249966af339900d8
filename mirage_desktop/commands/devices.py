"""`mirage devices`: cameras, virtual camera backends and audio devices."""

from __future__ import annotations

import json


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def collect() -> dict:
    from ..outputs.vcam_probe import backends
    from ..vision.capture import list_cameras

    try:
        from ..voice.audio_io import list_devices

        audio = list_devices()
    except Exception as exc:  # PortAudio missing etc.: list_devices itself returns []; belt and braces
        audio = [{"error": str(exc)}]
    return {"cameras": list_cameras(), "virtual_camera_backends": backends(), "audio": audio}


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print("Cameras:")
    for c in info["cameras"] or [{"index": "-", "name": "none found (plug one in, or use --input FILE)"}]:
        idx = c.get("index")
        print(f"  {'-' if idx is None else idx:>3}  {c.get('name', '')}  {c.get('device', '')}")
    print("Virtual camera backends:")
    for b in info["virtual_camera_backends"]:
        print(f"  {b['backend']:<14} {'ready' if b['available'] else 'NOT READY'}  {b['detail']}")
    print("Audio devices:")
    if not info["audio"]:
        print("  none (is PortAudio installed? Debian/Ubuntu: sudo apt install libportaudio2)")
    for d in info["audio"]:
        if "error" in d:
            print(f"  error: {d['error']}")
            continue
        io = ("in " if d.get("max_input_channels") else "   ") + ("out" if d.get("max_output_channels") else "   ")
        tag = "  [virtual cable]" if d.get("is_virtual_cable") else ""
        idx = d.get("index")
        where = f"  ({d['hostapi']})" if d.get("hostapi") and idx is None else ""
        print(f"  {'-' if idx is None else idx:>3}  {io}  {d.get('name', '')}{where}{tag}")
    return 0
