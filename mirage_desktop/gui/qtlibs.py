"""Can Qt open a window here? Checked before a QApplication exists: when its platform plugin
cannot load, Qt aborts the whole process (SIGABRT, "This application failed to start because no
Qt platform plugin could be initialized"), so the problem has to be found first.

:func:`platform_problem` says, in one line with the fix, why the window cannot open: no display,
a display that does not answer, an unknown ``QT_QPA_PLATFORM``, or the system libraries the
platform plugin needs and this machine lacks (``ldd`` on PySide6's plugin, mapped to Debian
package names). ``mirage gui`` and ``mirage doctor`` both use it.

:data:`QT_LIBRARIES` is the one list of the system libraries PySide6's Qt needs for a window (X11
and Wayland), with the Debian/Ubuntu package of each; ``scripts/setup-env.sh`` installs exactly
these packages (``python3 mirage_desktop/gui/qtlibs.py --packages``), so this file uses only the
standard library and runs as a plain script, before the virtualenv exists.

The list was derived from the wheel itself: ``readelf -d`` / ``ldd`` on ``platforms/libqxcb.so``,
``libQt6XcbQpa.so.6``, ``xcbglintegrations/*.so``, ``platforms/libqwayland.so``,
``platforms/libqoffscreen.so`` and the ``QtCore``/``QtGui``/``QtWidgets`` modules, and checked by
starting the window under Xvfb with ``QT_QPA_PLATFORM=xcb QT_DEBUG_PLUGINS=1``. (Qt 5's
``libxcb-xinerama0`` is not needed by Qt 6: nothing in the wheel links it.) A test keeps the list
complete for the installed PySide6.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

#: soname -> Debian/Ubuntu package, for everything PySide6's QtCore/QtGui/QtWidgets and the
#: xcb, wayland and offscreen platform plugins load from the system (libc, libm, libstdc++ and
#: libgcc_s are always there and not listed).
QT_LIBRARIES: dict[str, str] = {
    # QtCore / QtGui / QtWidgets
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libz.so.1": "zlib1g",
    "libzstd.so.1": "libzstd1",
    # X11: platforms/libqxcb.so, libQt6XcbQpa.so.6, xcbglintegrations/*.so (and offscreen: libX11)
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-glx.so.0": "libxcb-glx0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    # Wayland: platforms/libqwayland.so, libQt6WaylandClient.so.6, wayland-graphics-integration-client
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
}

#: QT_QPA_PLATFORM name -> plugin file name (the wayland plugin serves wayland, wayland-egl...)
_PLUGIN_FILES = {"xcb": "libqxcb.so", "wayland": "libqwayland.so", "offscreen": "libqoffscreen.so",
                 "minimal": "libqminimal.so", "minimalegl": "libqminimalegl.so", "eglfs": "libqeglfs.so",
                 "linuxfb": "libqlinuxfb.so", "vnc": "libqvnc.so", "vkkhrdisplay": "libqvkkhrdisplay.so"}
#: the PySide6 modules the window imports (their system libraries are checked too)
_MODULES = ("QtCore", "QtGui", "QtWidgets")
#: platforms that draw into memory or a framebuffer: no display server to reach
_NO_DISPLAY = {"offscreen", "minimal", "minimalegl", "eglfs", "linuxfb", "vnc", "vkkhrdisplay"}


def debian_packages() -> list[str]:
    """The Debian/Ubuntu packages of :data:`QT_LIBRARIES`, each once, in order."""
    return list(dict.fromkeys(QT_LIBRARIES.values()))


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package that ships ``soname``: the list above, else Debian's library
    package naming rule (``libfoo.so.3`` -> ``libfoo3``, ``libfoo-2.so.0`` -> ``libfoo-2-0``)."""
    if soname in QT_LIBRARIES:
        return QT_LIBRARIES[soname]
    m = re.fullmatch(r"(lib.+?)\.so\.(\d+)(?:\..*)?", soname)
    if not m:
        return soname
    stem, major = m.group(1).lower(), m.group(2)
    return f"{stem}-{major}" if stem[-1].isdigit() else f"{stem}{major}"


@dataclass
class QtPlatform:
    """What :func:`check` found. ``problem`` is empty when the window can open."""

    platform: str = ""           # the platform plugin Qt will use (or tried first)
    plugin: str = ""             # its file
    problem: str = ""            # one line: what is wrong
    fix: str = ""                # one line: what to do
    missing: list[str] = field(default_factory=list)   # sonames not found
    packages: list[str] = field(default_factory=list)  # their Debian/Ubuntu packages
    display: str = ""            # the display reached (xcb/wayland)

    @property
    def ok(self) -> bool:
        return not self.problem


def pyside_dir() -> Path | None:
    """PySide6's package folder, found without importing it (no Qt library is loaded)."""
    try:
        spec = importlib.util.find_spec("PySide6")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def candidates(environ: Mapping[str, str] | None = None) -> list[str]:
    """The platform plugins Qt tries, in order: ``QT_QPA_PLATFORM`` (``a;b`` lists, ``name:args``),
    else wayland then xcb in a Wayland session, else xcb (Qt 6 on Linux)."""
    env = os.environ if environ is None else environ
    raw = (env.get("QT_QPA_PLATFORM") or "").strip()
    if raw:
        return [p.split(":", 1)[0].strip() for p in raw.split(";") if p.split(":", 1)[0].strip()]
    if env.get("WAYLAND_DISPLAY") or env.get("XDG_SESSION_TYPE") == "wayland":
        return ["wayland", "xcb"]
    return ["xcb"]


def plugin_file(platform: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """Where Qt finds the plugin: ``QT_QPA_PLATFORM_PLUGIN_PATH``, ``QT_PLUGIN_PATH``/platforms,
    then PySide6's own ``Qt/plugins/platforms``."""
    env = os.environ if environ is None else environ
    name = _PLUGIN_FILES.get(platform.split("-", 1)[0] if platform.startswith("wayland") else platform,
                             f"libq{platform}.so")
    dirs = [Path(d) for d in (env.get("QT_QPA_PLATFORM_PLUGIN_PATH") or "").split(os.pathsep) if d]
    dirs += [Path(d) / "platforms" for d in (env.get("QT_PLUGIN_PATH") or "").split(os.pathsep) if d]
    base = pyside_dir()
    if base is not None:
        dirs.append(base / "Qt" / "plugins" / "platforms")
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def missing_libraries(files: list[Path]) -> list[str]:
    """Sonames that ``files`` need and the dynamic loader cannot find (``ldd``, which sees
    ``LD_LIBRARY_PATH`` like the app does). [] when ``ldd`` is not there (not glibc)."""
    ldd = shutil.which("ldd")
    files = [str(f) for f in files if f and Path(f).is_file()]
    if not ldd or not files:
        return []
    try:
        res = subprocess.run([ldd, *files], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    out = []
    for line in res.stdout.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+not found", line)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def _install_hint(packages: list[str]) -> str:
    pk = " ".join(packages)
    if shutil.which("apt-get"):
        return f"install {'it' if len(packages) == 1 else 'them'}: sudo apt install {pk} " \
               f"(./run.sh installs everything the window needs)"
    return f"install the package{'s' if len(packages) > 1 else ''} that provide{'s' if len(packages) == 1 else ''} " \
           f"{'it' if len(packages) == 1 else 'them'} (on Debian/Ubuntu: {pk})"


def _libs_problem(platform: str, plugin: Path | None, environ: Mapping[str, str]) -> QtPlatform:
    base = pyside_dir()
    r = QtPlatform(platform=platform, plugin=str(plugin or ""))
    if base is None:
        r.problem = "PySide6 is not installed"
        r.fix = "run ./run.sh, or pip install -e . in the project's virtualenv"
        return r
    if plugin is None:
        known = ", ".join(sorted(p for p in _PLUGIN_FILES if (base / "Qt" / "plugins" / "platforms" /
                                                               _PLUGIN_FILES[p]).is_file()))
        r.problem = f"QT_QPA_PLATFORM={environ.get('QT_QPA_PLATFORM', '')} names no Qt platform plugin " \
                    f"(this PySide6 has {known})" if environ.get("QT_QPA_PLATFORM") else \
                    f"PySide6 has no {platform} platform plugin ({base / 'Qt' / 'plugins' / 'platforms'})"
        r.fix = "use QT_QPA_PLATFORM=xcb (X11), wayland or offscreen, or unset it" \
            if environ.get("QT_QPA_PLATFORM") else "reinstall PySide6: pip install --force-reinstall PySide6-Essentials"
        return r
    files = [plugin] + [f for m in _MODULES for f in base.glob(f"{m}.*so")]
    r.missing = missing_libraries(files)
    if r.missing:
        qt_own = [s for s in r.missing if s.startswith("libQt6") or "pyside6" in s or "shiboken6" in s]
        if qt_own:
            r.problem = f"the window cannot open: PySide6 is incomplete, {', '.join(qt_own)} " \
                        f"{'is' if len(qt_own) == 1 else 'are'} missing"
            r.fix = "reinstall it: pip install --force-reinstall PySide6-Essentials (or delete .venv and run ./run.sh)"
            return r
        r.packages = list(dict.fromkeys(debian_package(s) for s in r.missing))
        what = ", ".join(r.missing)
        r.problem = f"the window cannot open: Qt's {platform} platform plugin needs {what}, " \
                    f"which {'is' if len(r.missing) == 1 else 'are'} not installed"
        r.fix = _install_hint(r.packages)
    return r


def _xcb_connect(display: str | None) -> int:
    """0 when an X server answers on ``display`` (None: $DISPLAY), else libxcb's error code."""
    import ctypes

    try:
        lib = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return -1
    lib.xcb_connect.restype = ctypes.c_void_p
    lib.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
    lib.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    lib.xcb_disconnect.argtypes = [ctypes.c_void_p]
    screen = ctypes.c_int(0)
    conn = lib.xcb_connect(display.encode() if display else None, ctypes.byref(screen))
    try:
        return int(lib.xcb_connection_has_error(conn)) if conn else -1
    finally:
        if conn:
            lib.xcb_disconnect(conn)


def _display_problem(platform: str, environ: Mapping[str, str]) -> tuple[str, str, str]:
    """(problem, fix, display) for reaching the display server of ``platform``."""
    headless = "use `mirage run` for the headless engine, or QT_QPA_PLATFORM=offscreen for a screenshot"
    if platform == "xcb":
        display = environ.get("DISPLAY", "")
        if not display:
            return ("no X display to open the window on (DISPLAY is not set)",
                    f"start it from a desktop session, or {headless}", "")
        err = _xcb_connect(display)
        if err == 0:
            return "", "", display
        why = {5: "DISPLAY is not a valid display name", 6: "the display has no such screen"}.get(
            err, "no X server answers there, or it refused the connection")
        return (f"cannot connect to the X display DISPLAY={display} ({why})",
                "check that the X server is running and DISPLAY is right (over ssh: ssh -X; "
                f"as another user: xhost +SI:localuser:$USER), or {headless}", display)
    if platform.startswith("wayland"):
        name = environ.get("WAYLAND_DISPLAY") or "wayland-0"
        runtime = environ.get("XDG_RUNTIME_DIR", "")
        sock = Path(name) if os.path.isabs(name) else Path(runtime) / name
        if not runtime and not os.path.isabs(name):
            return ("no Wayland display to open the window on (XDG_RUNTIME_DIR is not set)",
                    f"start it from a desktop session, or {headless}", "")
        if not sock.exists():
            return (f"no Wayland compositor at {sock} (WAYLAND_DISPLAY={environ.get('WAYLAND_DISPLAY', '')})",
                    f"start it from a Wayland desktop session, use QT_QPA_PLATFORM=xcb, or {headless}", "")
        return "", "", name
    return "", "", ""


def check(environ: Mapping[str, str] | None = None, *, display: bool = True) -> QtPlatform:
    """Whether Qt can open a window with the platform it will pick; the first problem if not.
    Qt tries the candidates in order and aborts only when none works, so one that works is enough.
    ``display=False``: only whether the platform plugin and Qt can load (libraries), not whether a
    display server answers now."""
    env = dict(os.environ if environ is None else environ)
    if not sys.platform.startswith("linux"):
        return QtPlatform(platform="native")
    if display and not env.get("QT_QPA_PLATFORM") and not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        return QtPlatform(platform="xcb", problem="no display to open the window on (DISPLAY and WAYLAND_DISPLAY "
                                                  "are not set)",
                          fix="start it from a desktop session, or use `mirage run` for the headless engine")
    first: QtPlatform | None = None
    for platform in candidates(env):
        r = _libs_problem(platform, plugin_file(platform, env), env)
        if r.ok and display and platform not in _NO_DISPLAY:
            r.problem, r.fix, r.display = _display_problem(platform, env)
        if r.ok:
            return r
        # report the library problem rather than "no Wayland here" when both fail
        if first is None or (first.platform.startswith("wayland") and r.missing):
            first = r
    return first or QtPlatform(problem="QT_QPA_PLATFORM is empty", fix="unset QT_QPA_PLATFORM")


def platform_problem(environ: Mapping[str, str] | None = None):
    """A :class:`~mirage_desktop.errors.MirageError` saying why the window cannot open, or None."""
    r = check(environ)
    if r.ok:
        return None
    from ..errors import MirageError

    return MirageError(r.problem, r.fix)


def missing_packages(extra: Mapping[str, str] | None = None) -> list[str]:
    """The Debian/Ubuntu packages of :data:`QT_LIBRARIES` (and ``extra``: soname -> package) whose
    library the dynamic loader cannot load on this machine. Asks the loader itself (by soname), so
    renamed packages (Ubuntu 24.04's ``libglib2.0-0t64``) count as present."""
    import ctypes

    out = []
    for soname, package in {**QT_LIBRARIES, **(extra or {})}.items():
        if package in out:
            continue
        try:
            ctypes.CDLL(soname)
        except OSError:
            out.append(package)
    return out


def _main(argv: list[str]) -> int:
    """``--packages``: every package; ``--missing-packages [SONAME=PACKAGE...]``: the ones to install;
    no argument: can the window open here (exit 1 with the reason if not)."""
    if argv[:1] == ["--packages"]:
        print(" ".join(debian_packages()))
        return 0
    if argv[:1] == ["--missing-packages"]:
        print(" ".join(missing_packages(dict(a.split("=", 1) for a in argv[1:]))))
        return 0
    r = check()
    print("ok" if r.ok else f"{r.problem} — {r.fix}")
    return 0 if r.ok else 1


if __name__ == "__main__":  # used by scripts/setup-env.sh, before the virtualenv exists
    sys.exit(_main(sys.argv[1:]))
