"""Render the main window with a real photo as the camera and save it as PNG (no camera needed).

Without an engine, a demo one is built: small ONNX recognition and swap models with the
real signatures (:mod:`mirage_desktop.testing.face_models`), the engine's OpenCV fallback
detector (the SCRFD weights are missing, as on a first run), a source identity from matplotlib's
Grace Hopper photo, and skimage's astronaut photo
as the camera.

Settings, identities and caches always live in a temporary folder while the window is
rendered — also when real models are given (``mirage gui --screenshot --model ...``): the demo
face is saved as consented and would otherwise land in the user's gallery and settings. Only
the models folder stays the user's when an engine is given; the environment is restored after.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

PROFILE_VARS = ("MIRAGE_CONFIG_DIR", "MIRAGE_DATA_DIR", "MIRAGE_CACHE_DIR", "MIRAGE_MODELS_DIR")


@contextlib.contextmanager
def isolated_profile(keep_models: bool = True):
    """Point settings, identities and caches at a fresh temporary folder for the duration;
    ``keep_models``: the models folder stays the user's (else it is temporary too). Yields
    the folder; the ``MIRAGE_*_DIR`` variables are restored afterwards."""
    from ..config import models_dir

    saved = {k: os.environ.get(k) for k in PROFILE_VARS}
    real_models = models_dir()  # resolved now: by default it lives inside the data folder
    tmp = tempfile.TemporaryDirectory(prefix="mirage-shot-")
    root = Path(tmp.name)
    try:
        for var, sub in (("MIRAGE_CONFIG_DIR", "config"), ("MIRAGE_DATA_DIR", "data"),
                         ("MIRAGE_CACHE_DIR", "cache"), ("MIRAGE_MODELS_DIR", "models-dir")):
            os.environ[var] = str(root / sub)
        if keep_models:
            os.environ["MIRAGE_MODELS_DIR"] = str(real_models)
        yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tmp.cleanup()


def demo_images() -> tuple[np.ndarray, np.ndarray]:
    """(camera image, source face photo), both BGR."""
    import cv2
    import matplotlib
    from skimage import data

    cam = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    src = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    return cam, src


def demo_engine(folder: Path):
    """An engine over synthetic recognition and swap models; faces are found by the engine's
    real fallback detector (OpenCV), since a synthetic SCRFD can only replay scripted boxes."""
    from ..config import Settings
    from ..engine import Engine
    from ..testing import face_models as synthetic

    paths = synthetic.build_model_set(folder / "models", [])
    return Engine(Settings(), model_overrides={"w600k_r50": paths["w600k_r50"],
                                               "inswapper_128_fp16": paths["inswapper_128"]})


def release(win) -> None:
    """Destroy a closed window now, while the interpreter is whole (not during finalisation,
    where PySide may free objects in an order that crashes)."""
    import gc

    from PySide6.QtCore import QCoreApplication, QEvent

    win.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    QCoreApplication.processEvents()
    gc.collect()


def render_window(png: str | os.PathLike, *, engine=None, image=None, source_photo=None, notices=None,
                  seconds: float = 3.0, size: tuple[int, int] = (1480, 920), view: str = "side_by_side",
                  from_screen: bool = False, tab: str = "") -> Path:
    """Open the window, stream ``image`` (a path or BGR array) for ``seconds``, save a PNG.
    ``from_screen``: take the picture the display server shows in the window's place (X11: the
    window's pixels read back from the server) instead of rendering the widget into an image.
    ``tab``: the right-hand tab to show ("Live", "Output", "Models"; default: the first).
    Nothing is read from or written to the user's settings, identities or caches."""
    with isolated_profile(keep_models=engine is not None) as folder:
        return _render(png, folder, engine=engine, image=image, source_photo=source_photo, notices=notices,
                       seconds=seconds, size=size, view=view, from_screen=from_screen, tab=tab)


def _render(png, folder: Path, *, engine, image, source_photo, notices, seconds, size, view,
            from_screen=False, tab="") -> Path:
    from PySide6.QtCore import QCoreApplication, QEventLoop

    from ..vision.capture import ImageSource
    from .app import create_app
    from .window import MainWindow

    create_app()
    png = Path(png)
    cam_img, src_img = demo_images()
    if image is not None:
        import cv2

        cam_img = image if isinstance(image, np.ndarray) else cv2.imread(str(image))
        if cam_img is None:
            raise SystemExit(f"cannot read {image}")
    if engine is None:
        engine = demo_engine(folder)
    win = MainWindow(engine, engine.settings, notices, source=ImageSource(cam_img, fps=30, realtime=True),
                     source_label="Astronaut (demo photo)" if image is None else Path(str(image)).name,
                     outputs=["null"], list_cameras=False)
    win.picker.ask_consent = lambda name, thumb: True  # a demo face from a public-domain photo
    win.resize(*size)
    win.show()

    def spin(sec: float, until=None) -> None:
        end = time.monotonic() + sec
        while time.monotonic() < end:
            QCoreApplication.processEvents(QEventLoop.AllEvents, 50)
            if until is not None and until():
                return
            time.sleep(0.01)

    # each wait ends when what it waits for has happened; the caps only end a broken run
    spin(120.0, lambda: win.controller.models_ready.is_set())
    photo = source_photo if source_photo is not None else src_img
    if photo is not None:
        if isinstance(photo, np.ndarray):
            p = folder / "demo-source" / "Grace Hopper.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            import cv2

            cv2.imwrite(str(p), photo)
            photo = p
        win.picker.add_photos([str(photo)])
        spin(120.0, lambda: bool(win.engine.identity))
    win.set_view(view)
    if tab:
        names = [win.tabs.tabText(i).lower() for i in range(win.tabs.count())]
        if tab.lower() not in names:
            raise SystemExit(f"no tab {tab!r}: choose one of {', '.join(names)}")
        win.tabs.setCurrentIndex(names.index(tab.lower()))
    win.start()

    aspect = cam_img.shape[1] / max(1, cam_img.shape[0])

    def streaming() -> bool:  # frames painted in the chosen view, and the plots have points
        img = win.preview.image
        sbs = img is not None and img.width() > 1.5 * aspect * img.height()  # two pictures side by side
        return win.preview.painted_frames >= 3 and (sbs or view != "side_by_side") and win.history.updates >= 2

    spin(120.0, streaming)  # however slow the machine, the picture shows the stream
    spin(seconds)
    png.parent.mkdir(parents=True, exist_ok=True)
    pm = win.screen().grabWindow(win.winId()) if from_screen else win.grab()
    ok = pm.save(str(png), "PNG")
    spin(120.0, lambda: win.controller.jobs.busy == 0)  # nothing still writing when the folder goes
    win.close()
    release(win)
    spin(0.2)
    if not ok:
        raise SystemExit(f"could not write {png}")
    return png
