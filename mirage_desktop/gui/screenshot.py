"""Render the main window with a real photo as the camera and save it as PNG (no camera needed).

Without an engine, a demo one is built: small ONNX recognition and swap models with the
real signatures (:mod:`mirage_desktop.models.synthetic`), the engine's OpenCV fallback
detector (the SCRFD weights are missing, as on a first run), a source identity from matplotlib's Grace Hopper photo, and skimage's astronaut photo
as the camera. Settings, identities and models then live in a temporary folder, so the
user's own are never touched.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np


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
    from ..models import synthetic

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
                  seconds: float = 3.0, size: tuple[int, int] = (1480, 920), view: str = "side_by_side") -> Path:
    """Open the window, stream ``image`` (a path or BGR array) for ``seconds``, save a PNG."""
    from PySide6.QtCore import QCoreApplication, QEventLoop

    from ..vision.capture import ImageSource
    from .cli import create_app
    from .window import MainWindow

    app = create_app()
    png = Path(png)
    tmp = None
    cam_img, src_img = demo_images()
    if image is not None:
        import cv2

        cam_img = image if isinstance(image, np.ndarray) else cv2.imread(str(image))
        if cam_img is None:
            raise SystemExit(f"cannot read {image}")
    if engine is None:
        tmp = tempfile.TemporaryDirectory(prefix="mirage-shot-")
        for var, sub in (("MIRAGE_CONFIG_DIR", "config"), ("MIRAGE_DATA_DIR", "data"),
                         ("MIRAGE_CACHE_DIR", "cache"), ("MIRAGE_MODELS_DIR", "models-dir")):
            os.environ[var] = str(Path(tmp.name) / sub)
        engine = demo_engine(Path(tmp.name))
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

    spin(10.0, lambda: win.controller.models_ready.is_set())
    photo = source_photo if source_photo is not None else src_img
    if photo is not None:
        if isinstance(photo, np.ndarray):
            p = Path(tempfile.gettempdir()) / "mirage-demo-source" / "Grace Hopper.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            import cv2

            cv2.imwrite(str(p), photo)
            photo = p
        win.picker.add_photos([str(photo)])
        spin(15.0, lambda: bool(win.engine.identity))
    win.set_view(view)
    win.start()
    spin(seconds)
    spin(1.0, lambda: False)
    png.parent.mkdir(parents=True, exist_ok=True)
    pm = win.grab()
    ok = pm.save(str(png), "PNG")
    win.close()
    release(win)
    spin(0.2)
    if tmp is not None:
        tmp.cleanup()
    if not ok:
        raise SystemExit(f"could not write {png}")
    return png
