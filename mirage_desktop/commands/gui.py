"""``mirage gui`` (and plain ``mirage``): open the desktop window.

Heavy imports (Qt, the engine) stay inside :func:`run` so ``mirage --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", metavar="PATH",
                        help="use an image or video file instead of a camera (handy for demos)")
    parser.add_argument("--output", choices=["virtualcam", "null"], default=None,
                        help="where the video goes: the virtual camera (default) or preview only")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="use this ONNX file for a model (det_10g, w600k_r50, inswapper_128_fp16); repeatable")
    parser.add_argument("--no-autostart", action="store_true",
                        help="do not start the camera when the window opens")
    parser.add_argument("--screenshot", metavar="PNG",
                        help="render the window (with --input as the camera), save it as PNG and exit")
    parser.add_argument("--quit-after", type=float, default=None, help=argparse.SUPPRESS)  # smoke tests
    # with --screenshot: read the window's pixels back from the display server (tests under Xvfb)
    parser.add_argument("--grab-screen", action="store_true", help=argparse.SUPPRESS)


def parse_models(items: list[str]) -> dict[str, str]:
    from ..errors import MirageError

    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise MirageError(f"--model {item!r} is not NAME=PATH", "e.g. --model det_10g=/models/det_10g.onnx")
        out[name.strip()] = path.strip()
    return out


from ..gui.app import create_app  # noqa: E402  (the QApplication; shared with the screenshot mode)


def build_window(args: argparse.Namespace):
    """Settings (a corrupt file is set aside, with a notice), the engine and the window."""
    from .. import config
    from ..engine import Engine
    from ..gui.window import MainWindow

    create_app()
    loaded = config.load()
    engine = Engine(loaded.settings, model_overrides=parse_models(getattr(args, "model", None) or []))
    source = getattr(args, "input", None)
    outputs = [args.output] if getattr(args, "output", None) else None
    return MainWindow(engine, loaded.settings, loaded.notices, source=source, source_label=source or "",
                      outputs=outputs, autostart=not getattr(args, "no_autostart", False))


def _check_display() -> None:
    """Qt aborts the process when its platform plugin cannot start (no display, a display that does
    not answer, a missing system library); find that first and say it in one line with the fix."""
    from ..gui.qtlibs import platform_problem

    problem = platform_problem()
    if problem is not None:
        raise problem


def run(args: argparse.Namespace) -> int:
    import asyncio

    _check_display()  # before Qt is loaded: it would abort the process instead

    import PySide6  # noqa: F401 - imported before qasync so it picks PySide6
    import qasync

    if getattr(args, "screenshot", None):
        from .. import config
        from ..engine import Engine
        from ..gui.screenshot import isolated_profile, render_window

        create_app()
        if getattr(args, "model", None):  # real models given: use them; else the synthetic demo engine
            # built inside a throw-away profile (defaults and MIRAGE_* overrides, not the user's
            # settings file): the demo face must never reach the user's gallery or settings
            with isolated_profile(keep_models=True):
                loaded = config.load()
                engine = Engine(loaded.settings, model_overrides=parse_models(args.model))
                print(render_window(args.screenshot, engine=engine, notices=loaded.notices, image=args.input,
                                    from_screen=getattr(args, "grab_screen", False)))
        else:
            print(render_window(args.screenshot, image=args.input, from_screen=getattr(args, "grab_screen", False)))
        return 0

    app = create_app()
    win = build_window(args)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    closed = asyncio.Event()
    app.lastWindowClosed.connect(closed.set)
    app.aboutToQuit.connect(closed.set)
    win.show()
    notifier = _close_on_signals(win)  # SIGINT/SIGTERM/SIGHUP close the window like its close button
    logging.getLogger(__name__).info("window open")
    if getattr(args, "quit_after", None):
        async def quit_later():
            await asyncio.sleep(args.quit_after)  # runs on the qasync loop, beside Qt's events
            win.close()

        loop.create_task(quit_later())
    with loop:
        loop.run_until_complete(closed.wait())
    del notifier
    from ..gui.screenshot import release

    release(win)
    return 0


def _close_on_signals(win):
    """Close the window (settings saved, camera and engine stopped) on Ctrl-C, SIGTERM or SIGHUP.

    Qt's event loop runs in C++, so a Python signal handler would wait for the next Python call:
    the signal's wake-up byte goes to a socket Qt watches, which hands control to Python at once."""
    import signal
    import socket

    from PySide6.QtCore import QSocketNotifier, QTimer

    rsock, wsock = socket.socketpair()
    for s in (rsock, wsock):
        s.setblocking(False)
    signal.set_wakeup_fd(wsock.fileno())
    notifier = QSocketNotifier(rsock.fileno(), QSocketNotifier.Type.Read)

    def drain() -> None:
        try:
            rsock.recv(64)
        except OSError:
            pass

    notifier.activated.connect(drain)
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, lambda *_: QTimer.singleShot(0, win.close))
    notifier._socks = (rsock, wsock)  # kept alive with the notifier
    return notifier
