"""Settings: defaults < settings file < ``MIRAGE_*`` environment < CLI flags.

Every field of :class:`Settings` can be set from the environment as ``MIRAGE_<FIELD>``
(``MIRAGE_ENABLE_SWAP=0``, ``MIRAGE_MAX_FACES=2``, ``MIRAGE_CODEFORMER_FIDELITY=0.5``).
The settings file is JSON in the user's config dir, written atomically; a corrupt file
is set aside and defaults are used, with a notice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import platformdirs

from .errors import MirageError
from .fsutil import atomic_write_text

log = logging.getLogger(__name__)

APP_NAME = "mirage-desktop"


def config_dir() -> Path:
    return Path(os.environ.get("MIRAGE_CONFIG_DIR") or platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    return Path(os.environ.get("MIRAGE_DATA_DIR") or platformdirs.user_data_dir(APP_NAME))


def cache_dir() -> Path:
    return Path(os.environ.get("MIRAGE_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME))


def models_dir() -> Path:
    return Path(os.environ.get("MIRAGE_MODELS_DIR") or (data_dir() / "models"))


@dataclass
class Settings:
    # --- features (MIRAGE_ENABLE_*) ---
    enable_swap: bool = True
    enable_enhancer: bool = False
    enable_mouth_mask: bool = False
    enable_ai_mark: bool = True
    enable_color_transfer: bool = False
    enable_smoothing: bool = True
    enable_voice: bool = False
    # --- faces ---
    max_faces: int = 1
    det_size: int = 640
    detect_interval: int = 5
    redetect_below: float = 0.70
    stable_confidence: float = 0.85
    stable_count: int = 3
    match_threshold: float = 0.35
    swapper_precision: str = "fp16"  # fp16 | fp32
    # --- enhancer ---
    enhancer: str = "codeformer"  # codeformer | gfpgan
    codeformer_fidelity: float = 0.75
    enhancer_interval: int = 1
    enhancer_blend: float = 1.0
    enhancer_async: bool = True  # run the enhancer on its own thread; the video never waits for it
    enhancer_device: str = "auto"  # torch device for CodeFormer: auto | cuda | cpu
    # --- runtime ---
    providers: str = "auto"  # "auto" or comma list, e.g. "CUDAExecutionProvider,CPUExecutionProvider"
    # --- video io ---
    camera: int = 0
    capture_width: int = 1280
    capture_height: int = 720
    capture_fps: int = 30
    output_width: int = 0  # 0: the camera's
    output_height: int = 0
    output_fps: int = 0
    vcam_backend: str = ""  # "" = pyvirtualcam's default
    # --- identity ---
    source_identity: str = ""  # name of a saved identity
    # --- voice ---
    voice_pitch: float = 0.0
    voice_formant: float = 1.0
    voice_input: str = ""
    voice_output: str = ""
    extra: dict = field(default_factory=dict)  # forward-compatible bag for other modules

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(Settings)}


def coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (often a string from env/CLI/JSON) to the field's type, or raise."""
    if name not in _FIELDS:
        raise MirageError(f"unknown setting {name!r}", "see `mirage run --help` for the settings")
    default = getattr(Settings(), name)
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, dict):
            return dict(value)
        return str(value)
    except (TypeError, ValueError):
        raise MirageError(
            f"setting {name} has an invalid value {value!r}",
            f"expected a {type(default).__name__}",
        ) from None


def validate(s: Settings) -> Settings:
    problems = []
    if not 0 <= s.max_faces <= 32:
        problems.append("max_faces must be 0..32")
    if s.det_size not in (160, 224, 256, 320, 384, 416, 480, 512, 576, 640, 736, 800, 960, 1024):
        problems.append("det_size must be a multiple of 32 such as 320 or 640")
    if s.detect_interval < 1:
        problems.append("detect_interval must be >= 1")
    if not 0.0 <= s.codeformer_fidelity <= 1.0:
        problems.append("codeformer_fidelity must be 0.0..1.0")
    if not 0.0 <= s.enhancer_blend <= 1.0:
        problems.append("enhancer_blend must be 0.0..1.0")
    if s.enhancer_interval < 1:
        problems.append("enhancer_interval must be >= 1")
    if s.swapper_precision not in ("fp16", "fp32"):
        problems.append("swapper_precision must be fp16 or fp32")
    if not -24.0 <= s.voice_pitch <= 24.0:
        problems.append("voice_pitch must be -24..+24 semitones")
    if not 0.5 <= s.voice_formant <= 2.0:
        problems.append("voice_formant must be 0.5..2.0")
    if s.enhancer not in ("codeformer", "gfpgan"):
        problems.append("enhancer must be codeformer or gfpgan")
    if problems:
        raise MirageError("invalid settings: " + "; ".join(problems), "fix the value and try again")
    return s


def from_env(environ: Mapping[str, str] | None = None) -> dict:
    environ = os.environ if environ is None else environ
    out = {}
    for name in _FIELDS:
        if name == "extra":
            continue
        key = "MIRAGE_" + name.upper()
        if key in environ:
            out[name] = coerce(name, environ[key])
    return out


def settings_path() -> Path:
    return config_dir() / "settings.json"


@dataclass
class LoadResult:
    settings: Settings
    notices: list[str]


def load_file(path: Path | None = None) -> tuple[dict, list[str]]:
    """Read the settings file. A corrupt file is renamed aside and ignored, with a notice."""
    path = path or settings_path()
    notices: list[str] = []
    if not path.exists():
        return {}, notices
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        values = {}
        for k, v in raw.items():
            if k in _FIELDS:
                values[k] = coerce(k, v)
        return values, notices
    except (ValueError, MirageError, UnicodeDecodeError) as exc:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(path, aside)
            where = f"moved to {aside}"
        except OSError:
            where = "left in place"
        notices.append(f"settings file {path} was unreadable ({exc}); {where}; using defaults")
        log.warning(notices[-1])
        return {}, notices


def load(cli_overrides: Mapping[str, Any] | None = None, path: Path | None = None,
         environ: Mapping[str, str] | None = None) -> LoadResult:
    file_values, notices = load_file(path)
    values = {**file_values, **from_env(environ)}
    for k, v in (cli_overrides or {}).items():
        if v is not None:
            values[k] = coerce(k, v)
    return LoadResult(validate(Settings(**values)), notices)


def save(settings: Settings, path: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Write the settings file atomically. Values that merely came from ``MIRAGE_*`` variables are
    not written (the file keeps what it had), so a one-off environment override does not stick."""
    path = path or settings_path()
    values = settings.to_dict()
    env = from_env(environ)
    if env:
        previous, _ = load_file(path) if path.exists() else ({}, [])
        for k, v in env.items():
            if values.get(k) == v:
                if k in previous:
                    values[k] = previous[k]
                else:
                    values.pop(k, None)
    atomic_write_text(path, json.dumps(values, indent=2, sort_keys=True))
    return path
