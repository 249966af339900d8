"""The ``mirage`` command.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports stay inside ``run`` so ``mirage --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import MirageError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "gui": ("mirage_desktop.commands.gui", "open the desktop window (default)"),
    "run": ("mirage_desktop.commands.run", "run the live engine headless: camera/file -> swap -> virtual camera"),
    "swap": ("mirage_desktop.commands.swap", "swap faces in a still image"),
    "models": ("mirage_desktop.commands.models", "list, download and verify model weights"),
    "devices": ("mirage_desktop.commands.devices", "list cameras, virtual camera backends and audio devices"),
    "doctor": ("mirage_desktop.commands.doctor",
               "check providers, drivers, devices and models; say how to fix problems"),
    "bench": ("mirage_desktop.commands.bench", "benchmark the video pipeline and print P50/P95/P99 and FPS"),
    "voice": ("mirage_desktop.commands.voice", "run the real-time voice changer headless"),
    "mic": ("mirage_desktop.commands.mic", "create or remove the 'Mirage Microphone' virtual microphone (Linux)"),
    "serve": ("mirage_desktop.commands.serve",
              "serve the engine to remote clients over WebRTC (secured; needs the serve extra)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen command's module is imported (``mirage --help`` stays instant)."""
    parser = argparse.ArgumentParser(prog="mirage", description="Mirage Desktop: real-time face and voice swap "
                                     "to a virtual webcam and microphone.")
    parser.add_argument("--version", action="version", version=f"mirage {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _command_in(argv: list[str]) -> str | None:
    for a in argv:
        if a in COMMANDS:
            return a
        if not a.startswith("-"):
            return None
    return None


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _stop_like_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


def install_stop_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal, `kill`, a service manager) stop a command as cleanly as
    Ctrl-C: the same KeyboardInterrupt path, so files are finalised and locks released. `mirage run`
    and the window install their own handlers on top."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _stop_like_ctrl_c)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = _command_in(argv)
    if cmd is None and not any(a in ("-h", "--help", "--version") for a in argv):
        cmd = "gui"  # `mirage` alone opens the window
        argv = [*argv, "gui"]
    args = build_parser(cmd).parse_args(argv)
    setup_logging(args.verbose)
    install_stop_signals()
    try:
        mod = importlib.import_module(args._module)
        return int(mod.run(args) or 0)
    except MirageError as exc:
        print(f"mirage: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mirage: stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mirage doctor | head -1`: the reader left; nothing to report
        _quiet_stdout()
        return 141
    except OSError as exc:  # a file or device error no command turned into a MirageError
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"mirage: error: {exc.strerror or exc}{where} — check the path, its permissions and the disk",
              file=sys.stderr)
        _crash_log(args)
        return 1
    except Exception as exc:  # a bug: one line for the user, the traceback kept for the report
        log_path = _crash_log(args)
        print(f"mirage: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} — this is a bug"
              + (f"; the details are in {log_path}" if log_path else "; run with -vv to see the details"),
              file=sys.stderr)
        if args.verbose >= 2:
            raise
        return 1


def _quiet_stdout() -> None:
    import os

    try:  # stop Python's own "Exception ignored ... BrokenPipeError" at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _crash_log(args) -> str | None:
    """The traceback, written to the cache dir for a bug report; None if it cannot be written."""
    import time
    import traceback

    from .config import cache_dir
    from .fsutil import atomic_write_text

    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = cache_dir() / "crash" / f"mirage-{getattr(args, 'command', '') or 'gui'}-{stamp}.log"
    try:
        atomic_write_text(path, traceback.format_exc(), "crash log")
    except MirageError:
        return None
    return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
