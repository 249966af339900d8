"""The real window on a real X server (Xvfb, Qt's xcb platform, not offscreen), and what a person
sees when Qt cannot start there: one line naming the missing library's package, not Qt's abort."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mirage_desktop.gui import qtlibs


def _env(tmp_path: Path, display: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM_PLUGIN_PATH")}
    env["QT_QPA_PLATFORM"] = "xcb"
    if display is None:
        env.pop("DISPLAY", None)
    else:
        env["DISPLAY"] = display
    for k, sub in (("MIRAGE_CONFIG_DIR", "c"), ("MIRAGE_DATA_DIR", "d"), ("MIRAGE_CACHE_DIR", "x"),
                   ("MIRAGE_MODELS_DIR", "m")):
        env[k] = str(tmp_path / sub)
    return env


@pytest.fixture
def xvfb(tmp_path):
    """A fresh Xvfb on a free display number (Xvfb picks it and writes it to a pipe once it is
    accepting connections: no polling). Yields ``":N"``."""
    exe = shutil.which("Xvfb")
    if not exe:
        pytest.skip("Xvfb is not installed (apt-get install xvfb; ./test.sh installs it)")
    r, w = os.pipe()
    log = open(tmp_path / "xvfb.log", "wb")
    proc = subprocess.Popen([exe, "-displayfd", str(w), "-screen", "0", "1920x1080x24", "-nolisten", "tcp",
                             "-noreset"], pass_fds=(w,), stdout=log, stderr=log, start_new_session=True)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 120)  # a deadline for a broken Xvfb only
        number = os.read(r, 64).decode().strip() if ready else ""
        if not number:
            proc.kill()
            pytest.fail(f"Xvfb did not start: {(tmp_path / 'xvfb.log').read_text(errors='replace')[-1000:]}")
        yield f":{number}"
    finally:
        os.close(r)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        log.close()


def test_the_window_opens_on_a_real_x_server_and_shows_the_camera(tmp_path, xvfb):
    out = tmp_path / "window.png"
    r = subprocess.run([sys.executable, "-m", "mirage_desktop", "gui", "--screenshot", str(out), "--grab-screen"],
                       env=_env(tmp_path, xvfb), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "could not load the Qt platform plugin" not in r.stderr.lower()
    img = cv2.imread(str(out))
    assert img is not None and img.shape[:2] == (920, 1480)  # the window's size, read back from the X server
    # a real picture: the theme's dark panels, light text and the astronaut photo in the preview
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 5000
    assert img.std() > 20
    preview = img[200:600, 320:1120]
    assert len(np.unique(preview.reshape(-1, 3), axis=0)) > 2000
    # the astronaut's orange suit is on screen (the photo reached the window through Xvfb)
    hsv = cv2.cvtColor(preview, cv2.COLOR_BGR2HSV)
    orange = (hsv[..., 0] >= 5) & (hsv[..., 0] <= 20) & (hsv[..., 1] > 120) & (hsv[..., 2] > 120)
    assert orange.mean() > 0.05
    assert not (tmp_path / "c").exists(), "the screenshot must not touch the user's settings"


def test_an_x_display_that_does_not_answer_is_one_clear_line(tmp_path):
    taken = {int(p.name[1:]) for p in Path("/tmp/.X11-unix").glob("X*") if p.name[1:].isdigit()} \
        if Path("/tmp/.X11-unix").is_dir() else set()
    free = next(n for n in range(97, 10_000) if n not in taken and not Path(f"/tmp/.X{n}-lock").exists())
    r = subprocess.run([sys.executable, "-m", "mirage_desktop", "gui", "--no-autostart"],
                       env=_env(tmp_path, f":{free}"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    err = r.stderr.strip()
    assert err.startswith(f"mirage: error: cannot connect to the X display DISPLAY=:{free}"), err
    assert "mirage run" in err and "\n" not in err
    r = subprocess.run([sys.executable, "-m", "mirage_desktop", "gui"], env=_env(tmp_path, None),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().startswith("mirage: error: no X display"), r.stderr[-2000:]


def _can_hide_libraries() -> str:
    """Why a library cannot be hidden from a child process here ('' when it can): that takes a
    private mount namespace (root, unshare) and overlayfs."""
    if os.geteuid() != 0:
        return "needs root (a private mount namespace hides a library from one process)"
    if not shutil.which("unshare"):
        return "needs unshare (util-linux)"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=60)
    if r.returncode != 0:
        return f"cannot create a mount namespace here: {r.stderr.decode(errors='replace').strip()}"
    return ""


def test_a_missing_xcb_library_names_its_debian_package(tmp_path, xvfb):
    """libxcb-icccm.so.4 is made absent for one process tree: a private mount namespace lays an
    overlay over the library folder with a whiteout for it, so the dynamic loader (and ldd) really
    cannot find it, as on a machine without libxcb-icccm4. Qt alone aborts there; mirage says which
    package to install."""
    why = _can_hide_libraries()
    if why:
        pytest.skip(why)
    base = qtlibs.pyside_dir()
    plugin = base / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    ldd = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, timeout=60).stdout
    line = next(x for x in ldd.splitlines() if x.strip().startswith("libxcb-icccm.so.4 =>"))
    lib = Path(line.split("=>")[1].split("(")[0].strip())
    libdir = lib.parent.resolve()
    ovl = tmp_path / "ovl"
    ovl.mkdir()

    def hidden(*cmd: str) -> subprocess.CompletedProcess:
        script = (f"set -e; mount -t tmpfs none {ovl}; mkdir {ovl}/up {ovl}/work; "
                  f"mknod {ovl}/up/{lib.name} c 0 0; "  # an overlayfs whiteout: the file is not there
                  f"mount -t overlay overlay -o lowerdir={libdir},upperdir={ovl}/up,workdir={ovl}/work {libdir}; "
                  'exec "$@"')
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd],
                              env=_env(tmp_path, xvfb), capture_output=True, text=True, timeout=600)

    probe = hidden("ldd", str(plugin))
    if "mount" in probe.stderr and probe.returncode != 0:
        pytest.skip(f"overlayfs is not available here: {probe.stderr.strip()[-300:]}")
    assert "libxcb-icccm.so.4 => not found" in probe.stdout, probe.stdout + probe.stderr
    # without the check, Qt aborts the process (what a new user saw)
    qt = hidden(sys.executable, "-c", "from PySide6.QtWidgets import QApplication; QApplication([])")
    assert qt.returncode in (-signal.SIGABRT, 128 + signal.SIGABRT), (qt.returncode, qt.stderr[-1000:])
    assert "xcb" in qt.stderr
    # mirage: one line naming the library and the package, exit code 2, no abort
    r = hidden(sys.executable, "-m", "mirage_desktop", "gui", "--no-autostart")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("mirage: error: the window cannot open: Qt's xcb platform plugin needs "
                          "libxcb-icccm.so.4, which is not installed"), err
    if shutil.which("apt-get"):
        assert err.endswith("sudo apt install libxcb-icccm4 (./run.sh installs everything the window needs)"), err
    else:
        assert "libxcb-icccm4" in err
    # mirage doctor names it too, and fails
    d = hidden(sys.executable, "-m", "mirage_desktop", "doctor")
    assert d.returncode == 1, d.stdout[-2000:] + d.stderr[-2000:]
    assert "libxcb-icccm.so.4" in d.stdout and "sudo apt install libxcb-icccm4" in d.stdout or \
        not shutil.which("apt-get")


def test_the_library_list_covers_what_this_pyside6_links():
    """Every system library PySide6's window stack links directly is in qtlibs.QT_LIBRARIES
    (which scripts/setup-env.sh installs); a new PySide6 that needs one more fails here."""
    readelf = shutil.which("readelf")
    if not readelf:
        pytest.skip("readelf (binutils) is not installed")
    base = qtlibs.pyside_dir()
    qt = base / "Qt"
    files = [qt / "plugins" / "platforms" / f"libq{p}.so" for p in ("xcb", "wayland", "offscreen")]
    files += list((qt / "plugins" / "xcbglintegrations").glob("*.so"))
    files += list((qt / "plugins" / "wayland-graphics-integration-client").glob("*.so"))
    files += [qt / "lib" / f"libQt6{m}.so.6" for m in ("Core", "Gui", "Widgets", "DBus", "XcbQpa", "WaylandClient")]
    files += [f for m in ("QtCore", "QtGui", "QtWidgets") for f in base.glob(f"{m}.*so")]
    needed = set()
    for f in files:
        if f.exists():
            out = subprocess.run([readelf, "-d", str(f)], capture_output=True, text=True, timeout=60).stdout
            needed |= {line.split("[")[1].split("]")[0] for line in out.splitlines() if "(NEEDED)" in line}
    base_libs = ("libc.so", "libm.so", "libstdc++.so", "libgcc_s.so", "libdl.so", "libpthread.so", "librt.so",
                 "ld-linux")
    system = {n for n in needed if not n.startswith(("libQt6", "libicu", "libpyside6", "libshiboken6"))
              and not n.startswith(base_libs)}
    assert "libxcb-cursor.so.0" in system and "libxcb-icccm.so.4" in system
    assert system <= set(qtlibs.QT_LIBRARIES), sorted(system - set(qtlibs.QT_LIBRARIES))
    # and the packages follow Debian's naming, e.g. for a library not in the list
    assert qtlibs.debian_package("libxcb-xinput.so.0") == "libxcb-xinput0"
    assert qtlibs.debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
