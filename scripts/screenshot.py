#!/usr/bin/env python3
"""Render Mirage's main window with a real photo as the camera and save a PNG.

    QT_QPA_PLATFORM=offscreen python scripts/screenshot.py [out.png] [--input photo.jpg] [--seconds 3] [--tab models]

No camera, GPU or model weights needed: small ONNX models with the real signatures are
built on the fly (see mirage_desktop/gui/screenshot.py). Same as `mirage gui --screenshot`.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("png", nargs="?", default="mirage-window.png")
    ap.add_argument("--input", help="camera image (default: skimage's astronaut photo)")
    ap.add_argument("--seconds", type=float, default=3.0, help="how long to stream before the shot")
    ap.add_argument("--view", choices=["output", "side_by_side"], default="side_by_side")
    ap.add_argument("--tab", default="", help="the right-hand tab to show: live, output or models")
    ap.add_argument("--size", default="1480x920", help="window size, WxH")
    args = ap.parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from mirage_desktop.gui.screenshot import render_window

    w, h = (int(x) for x in args.size.lower().split("x"))
    print(render_window(args.png, image=args.input, seconds=args.seconds, size=(w, h), view=args.view,
                       tab=args.tab))
    return 0


if __name__ == "__main__":
    sys.exit(main())
