"""The last line of defence in `mirage`: no traceback reaches the user, whatever goes wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirage_desktop.cli import main


def test_a_bug_is_one_line_and_its_traceback_is_kept(monkeypatch, capsys):
    import mirage_desktop.commands.devices as devices

    def broken(args):
        raise ValueError("something nobody expected")

    monkeypatch.setattr(devices, "run", broken)
    rc = main(["devices"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "internal error: ValueError: something nobody expected" in lines[0]
    log = Path(lines[0].split("the details are in ")[1])
    assert log.is_file() and "Traceback" in log.read_text() and "something nobody expected" in log.read_text()
    assert str(log).startswith(os.environ["MIRAGE_CACHE_DIR"])


def test_an_os_error_no_command_caught_is_one_line(monkeypatch, capsys):
    import mirage_desktop.commands.devices as devices

    def broken(args):
        raise PermissionError(13, "Permission denied", "/dev/snd/controlC0")

    monkeypatch.setattr(devices, "run", broken)
    rc = main(["devices"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.strip() == ("mirage: error: Permission denied (/dev/snd/controlC0) — check the path, its "
                           "permissions and the disk")


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    """`mirage models status | head -1`: the reader goes away early."""
    proc = subprocess.Popen([sys.executable, "-m", "mirage_desktop", "models", "status"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    proc.stdout.close()  # gone before the command's first line: every write it makes meets a closed pipe
    err = proc.stderr.read()
    proc.wait()
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_any_command_like_ctrl_c(sig):
    """Not only `mirage run`: every command turns them into the Ctrl-C path (files finalised, locks
    released) instead of dying mid-write."""
    import signal

    from mirage_desktop.cli import install_stop_signals

    old = {s: signal.getsignal(getattr(signal, s)) for s in ("SIGTERM", "SIGHUP")}
    try:
        for s in old:
            signal.signal(getattr(signal, s), signal.SIG_DFL)
        install_stop_signals()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(getattr(signal, sig))
    finally:
        for s, h in old.items():
            signal.signal(getattr(signal, s), h)
