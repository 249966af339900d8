"""Settings: defaults < settings file < ``MIRAGE_*`` environment < CLI flags.

Every field of :class:`Settings` (except ``extra``) can be set from the environment as
``MIRAGE_<FIELD>`` (``MIRAGE_ENABLE_SWAP=0``, ``MIRAGE_MAX_FACES=2``,
``MIRAGE_CODEFORMER_FIDELITY=0.5``); an empty variable counts as unset. Each value is checked
by :func:`check` against its field's :data:`RULES` entry, whichever layer it came from, and a
bad value is reported where it was set:

- **settings file** (JSON in the user's config dir, written atomically): a key with a wrong or
  out-of-range value, or an unknown key, is dropped with a *notice* naming the file and the key;
  the other keys are kept and the app starts. A file that is not valid JSON (or not a JSON
  object) is set aside (renamed ``settings.json.corrupt-<time>``) and defaults are used, with a
  notice.
- **environment**: a bad ``MIRAGE_*`` value is an *error* (:class:`~mirage_desktop.errors.MirageError`
  naming the variable, e.g. ``MIRAGE_MAX_FACES=abc is not a whole number``; the CLI prints it
  as one line and exits 2). The variable was set for this run, so starting with another value
  would be a surprise. An unknown ``MIRAGE_*`` variable is a notice naming the closest known one;
  :data:`OTHER_VARIABLES` lists the variables that are not settings, :data:`RETIRED_VARIABLES`
  those that are ignored with a notice.
- **command-line flags**: an error naming the flag (``--max-faces 99 is out of range``) when
  :func:`load` is given ``flag_names``.

Notices are returned in :class:`LoadResult` (the CLI prints them, the window shows them) and
logged at INFO level.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping


from .errors import MirageError
from .fsutil import atomic_write_text

log = logging.getLogger(__name__)

from .paths import APP_NAME  # noqa: E402,F401
ENV_PREFIX = "MIRAGE_"


# where things live (in paths.py, which the model registry uses without importing the settings)
from .paths import cache_dir, config_dir, data_dir, models_dir  # noqa: E402,F401



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
    enable_scrfd: bool = True  # face detection (SCRFD); off: no faces are found, frames pass through
    # --- faces ---
    max_faces: int = 1
    det_size: int = 640
    detect_interval: int = 5
    redetect_below: float = 0.70
    stable_confidence: float = 0.85
    stable_count: int = 3
    detect_on_tracks: bool = True  # between full-frame searches, detect on the tracked faces' region only
    full_detect_interval: int = 30  # with detect_on_tracks: frames between full-frame searches for new faces
    match_threshold: float = 0.35
    swapper_precision: str = "fp16"  # fp16 | fp32
    pixel_boost: int = 128  # swapped crop size: 128 (one inswapper call), or 256/384/512 (2x2/3x3/4x4 tiles)
    track_hold_frames: int = 6  # a face the detector misses keeps its track (and swap) this many frames
    color_smoothing: float = 0.8  # colour transfer: weight of the previous frames' statistics (0 = none)
    # --- occlusion-aware mask (face parser) ---
    enable_parser: bool = False  # only the chosen face regions are swapped; what covers the face stays
    parser_model: str = "bisenet_resnet_18"  # bisenet_resnet_18 | bisenet_resnet_34
    parser_regions: str = "skin,brows,eyes,nose,mouth,lips"  # of PARSER_REGIONS; glasses left out: they stay
    parser_interval: int = 3  # parse every k-th frame per face; the last mask follows the face in between
    parser_async: bool = True  # run the parser on its own thread; the video never waits for it
    mask_smoothing: float = 0.6  # parser mask: weight of the previous frames' mask (0 = none)
    # --- enhancer ---
    enhancer: str = "codeformer"  # codeformer | gfpgan
    codeformer_fidelity: float = 0.75
    enhancer_interval: int = 1
    enhancer_blend: float = 1.0
    enhancer_async: bool = True  # run the enhancer on its own thread; the video never waits for it
    enhancer_device: str = "auto"  # torch device for CodeFormer: auto | cuda | cuda:N | cpu | mps
    # --- runtime ---
    providers: str = "auto"  # "auto" or comma list, e.g. "cuda,cpu" or "CUDAExecutionProvider,CPUExecutionProvider"
    # --- video io ---
    camera: str = "0"  # a camera index ("0", "1", ...) or a device path (/dev/video2)
    capture_width: int = 1280
    capture_height: int = 720
    capture_fps: int = 30
    output_width: int = 0  # 0: the camera's
    output_height: int = 0
    output_fps: int = 0
    vcam_backend: str = ""  # "" = pyvirtualcam's default
    # --- identity ---
    source_identity: str = ""  # name of a saved identity
    # --- live calls: one clock, lip sync, adaptation ---
    av_trim_ms: float = 0.0  # shifts the video against the voice (positive: video later)
    lipsync_mic: bool = True  # with no voice conversion: the mic goes to the virtual mic in step with the video
    adapt_video: bool = True  # under load, reduce quality -> fps -> resolution (off: your settings stay pinned)
    # --- voice ---
    voice_pitch: float = 0.0
    voice_formant: float = 1.0
    voice_input: str = ""
    voice_output: str = ""
    voice_converter: str = "world"  # world (built-in pitch/formant) | rvc (your RVC ONNX model) | passthrough
    voice_preset: str = ""  # a built-in voice preset (VOICE_PRESETS), "" = none
    voice_f0_method: str = ""  # dio | harvest | rmvpe; "" = the converter's default
    voice_model: str = ""  # RVC synthesizer .onnx
    voice_encoder: str = ""  # RVC content encoder .onnx (vec-768 / vec-256)
    voice_rmvpe: str = ""  # RMVPE .onnx, for voice_f0_method rmvpe
    voice_speaker: int = 0  # RVC speaker id
    voice_block_ms: float = 0.0  # start chunk; 0 = the smallest the converter keeps up with (adapted)
    voice_silence_db: float = -50.0  # chunks quieter than this pass through unconverted
    voice_adapt: bool = True
    voice_bypass: bool = False  # pass the voice through (the window's voice switch)
    voice_samplerate: int = 0  # 0: the devices' own rates
    voice_device_block_ms: float = 10.0  # PortAudio output callback size (the input's is half)
    # --- engine: this computer or a `mirage serve` server (the window's "Engine" choice) ---
    engine_mode: str = "local"  # local | remote
    remote_url: str = ""  # the server's address, https://host:8443
    remote_token_file: str = ""  # a file holding the token (`mirage serve token`); the token is never a setting
    extra: dict = field(default_factory=dict)  # forward-compatible bag for other modules (the window's layout)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(Settings)}
_DEFAULTS = Settings()

# ---------------------------------------------------------------------------- per-field rules

DET_SIZES = (160, 224, 256, 320, 384, 416, 480, 512, 576, 640, 736, 800, 960, 1024)
ENHANCER_KINDS = ("codeformer", "gfpgan")
PIXEL_BOOSTS = (128, 256, 384, 512)
PARSER_MODELS = ("bisenet_resnet_18", "bisenet_resnet_34")
#: the face parser's regions a user can choose, and their classes (CelebAMask-HQ's 19, as
#: face-parsing BiSeNet exports number them: 0 background, 1 skin, 2/3 brows, 4/5 eyes,
#: 6 glasses, 7/8 ears, 9 earring, 10 nose, 11 mouth, 12/13 lips, 14 neck, 15 necklace,
#: 16 cloth, 17 hair, 18 hat)
PARSER_REGIONS = {"skin": (1,), "brows": (2, 3), "eyes": (4, 5), "glasses": (6,), "nose": (10,),
                  "mouth": (11,), "lips": (12, 13), "ears": (7, 8), "neck": (14,), "hair": (17,)}
VOICE_CONVERTERS = ("world", "rvc", "passthrough")
ENGINE_MODES = ("local", "remote")
VOICE_PRESETS = ("neutral", "deeper", "higher", "feminine", "masculine", "chipmunk", "giant", "robot", "whisper")
F0_METHODS = ("dio", "harvest", "rmvpe")
PITCH_RANGE = (-24.0, 24.0)  # semitones
FORMANT_RANGE = (0.5, 2.0)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_PROVIDER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*ExecutionProvider$")
_PROVIDER_SHORT = ("tensorrt", "trt", "cuda", "directml", "dml", "coreml", "cpu")  # models/runtime.py SHORT_NAMES
CAMERA_FIX = "`mirage devices` lists the cameras"


class _Bad(Exception):
    """A value does not fit its rule; ``problem`` reads after the value ("is not a whole number")."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


@dataclass(frozen=True)
class Rule:
    """What one setting accepts.

    kind: bool | int | float | choice | text | camera | providers | device | dict | regions.
    ``lo``/``hi`` bound int and float values (inclusive; None = unbounded); ``zero_ok`` also
    allows 0 ("automatic") below ``lo``; ``choices`` lists the allowed values of a choice or int.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    zero_ok: bool = False
    zero_means: str = ""
    live: bool = False  # takes effect on a running stream (else: at the next start)

    def at_run_time(self) -> "Rule":
        return dataclasses.replace(self, live=True)

    @property
    def ranged(self) -> bool:
        """Numbers with bounds or a list of allowed values: an "out of range" value exists."""
        return self.kind in ("int", "float") and (self.lo is not None or self.hi is not None or bool(self.choices))

    def expected(self) -> str:
        """What a good value looks like, for messages ("a whole number from 0 to 32")."""
        k = self.kind
        if k == "bool":
            return "on or off (1/0, true/false, yes/no, on/off)"
        if k in ("int", "float"):
            noun = "a whole number" if k == "int" else "a number"
            if self.choices:
                return "one of " + ", ".join(str(c) for c in self.choices)
            if self.lo is not None and self.hi is not None:
                span = f"{noun} from {_num(self.lo)} to {_num(self.hi)}"
            elif self.lo is not None:
                span = f"{noun} of at least {_num(self.lo)}"
            elif self.hi is not None:
                span = f"{noun} of at most {_num(self.hi)}"
            else:
                span = noun
            return f"0 ({self.zero_means}) or {span}" if self.zero_ok else span
        if k == "choice":
            return "one of " + ", ".join(c or '"" (none)' for c in self.choices)
        if k == "camera":
            return f"a camera index (0, 1, …) or a device path such as /dev/video2 ({CAMERA_FIX})"
        if k == "providers":
            return "auto, or execution providers separated by commas such as cuda,cpu"
        if k == "device":
            return "auto, cpu, cuda, cuda:N or mps"
        if k == "dict":
            return "a JSON object"
        if k == "regions":
            return "face regions separated by commas, of " + ", ".join(PARSER_REGIONS)
        return "text"

    def check(self, value: Any) -> Any:
        """The value converted to the field's type; raises :class:`_Bad` if it does not fit."""
        k = self.kind
        if k == "bool":
            return _to_bool(value)
        if k == "int":
            v = _to_int(value)
            return self._in_range(v)
        if k == "float":
            return self._in_range(_to_float(value))
        if k == "choice":
            text = _to_text(value).strip().lower()
            if text not in self.choices:
                raise _Bad("is not one of " + ", ".join(c or '""' for c in self.choices))
            return text
        if k == "camera":
            return _to_camera(value)
        if k == "providers":
            return _to_providers(value)
        if k == "device":
            text = _to_text(value).strip().lower()
            if not _DEVICE_RE.match(text):
                raise _Bad("is not a device PyTorch knows")
            return text
        if k == "dict":
            if not isinstance(value, dict):
                raise _Bad("is not a JSON object")
            return dict(value)
        if k == "regions":
            return _to_regions(value)
        return _to_text(value)

    def _in_range(self, v):
        if self.choices:
            if v not in self.choices:
                raise _Bad("is out of range")
            return v
        if self.zero_ok and v == 0:
            return v
        if not ((self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)):
            raise _Bad("is out of range")  # also NaN, whose comparisons are all false
        return v


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Bad("is not on or off")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Bad("is not a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise _Bad("is not a whole number")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _Bad("is not a whole number")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Bad("is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _Bad("is not a number")


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Bad("is not text")


MAX_CAMERA_INDEX = 1023  # past any real device count; a larger number would overflow OpenCV's C int


def _to_camera(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _Bad("is not a camera")
    text = value.strip()
    if re.fullmatch(r"\d+", text):
        if int(text) > MAX_CAMERA_INDEX:
            raise _Bad(f"is not a camera: indexes go up to {MAX_CAMERA_INDEX}")
        return str(int(text))
    if re.fullmatch(r"[-+]\d+", text):
        raise _Bad("is not a camera: camera indexes start at 0")
    if text and sys.platform.startswith("linux") and re.fullmatch(r"/dev/video\d+", text):
        return text  # a V4L2 device; it may be plugged in later
    if text and os.path.exists(os.path.expanduser(text)):
        return text
    raise _Bad("is not a camera index or a device path that exists")


def _to_regions(value: Any) -> str:
    """A comma list of parser regions, in :data:`PARSER_REGIONS`' order, each once."""
    items = value if isinstance(value, (list, tuple)) else _to_text(value).split(",")
    names = [str(i).strip().lower() for i in items if str(i).strip()]
    bad = [n for n in names if n not in PARSER_REGIONS]
    if bad:
        near = difflib.get_close_matches(bad[0], list(PARSER_REGIONS), 1)
        raise _Bad(f"names no face region {bad[0]!r}" + (f" (did you mean {near[0]}?)" if near else ""))
    if not names:
        raise _Bad("chooses no face region")
    return ",".join(r for r in PARSER_REGIONS if r in names)


def _to_providers(value: Any) -> str:
    text = _to_text(value).strip()
    if text.lower() in ("", "auto"):
        return "auto"
    items = [p.strip() for p in text.split(",")]
    bad = [p for p in items if not (p.lower() in _PROVIDER_SHORT or _PROVIDER_RE.match(p))]
    if bad or not all(items):
        raise _Bad("is not a list of execution providers")
    return ",".join(items)


_B = Rule("bool")
#: How each setting is checked, whichever layer (file, environment, flag, GUI, engine API) sets it.
RULES: dict[str, Rule] = {
    "enable_swap": _B, "enable_enhancer": _B, "enable_mouth_mask": _B, "enable_ai_mark": _B,
    "enable_color_transfer": _B, "enable_smoothing": _B, "enable_voice": _B, "enable_scrfd": _B,
    "max_faces": Rule("int", 0, 32),
    "det_size": Rule("int", choices=DET_SIZES),
    "detect_interval": Rule("int", 1, 1000),
    "redetect_below": Rule("float", 0.0, 1.0),
    "stable_confidence": Rule("float", 0.0, 1.0),
    "stable_count": Rule("int", 1, 100),
    "detect_on_tracks": _B,
    "full_detect_interval": Rule("int", 1, 1000),
    "match_threshold": Rule("float", 0.0, 1.0),
    "swapper_precision": Rule("choice", choices=("fp16", "fp32")),
    "pixel_boost": Rule("int", choices=PIXEL_BOOSTS),
    "track_hold_frames": Rule("int", 0, 300),
    "color_smoothing": Rule("float", 0.0, 0.95),
    "enable_parser": _B,
    "parser_model": Rule("choice", choices=PARSER_MODELS),
    "parser_regions": Rule("regions"),
    "parser_interval": Rule("int", 1, 1000),
    "parser_async": _B,
    "mask_smoothing": Rule("float", 0.0, 0.95),
    "enhancer": Rule("choice", choices=ENHANCER_KINDS),
    "codeformer_fidelity": Rule("float", 0.0, 1.0),
    "enhancer_interval": Rule("int", 1, 1000),
    "enhancer_blend": Rule("float", 0.0, 1.0),
    "enhancer_async": _B,
    "enhancer_device": Rule("device"),
    "providers": Rule("providers"),
    "camera": Rule("camera"),
    "capture_width": Rule("int", 16, 16384),
    "capture_height": Rule("int", 16, 16384),
    "capture_fps": Rule("int", 1, 240),
    "output_width": Rule("int", 16, 16384, zero_ok=True, zero_means="the camera's"),
    "output_height": Rule("int", 16, 16384, zero_ok=True, zero_means="the camera's"),
    "output_fps": Rule("int", 1, 240, zero_ok=True, zero_means="the camera's"),
    "vcam_backend": Rule("text"),
    "source_identity": Rule("text"),
    "av_trim_ms": Rule("float", -1000.0, 1000.0),
    "lipsync_mic": _B,
    "adapt_video": _B,
    "voice_pitch": Rule("float", *PITCH_RANGE),
    "voice_formant": Rule("float", *FORMANT_RANGE),
    "voice_input": Rule("text"),
    "voice_output": Rule("text"),
    "voice_converter": Rule("choice", choices=VOICE_CONVERTERS),
    "voice_preset": Rule("choice", choices=("", *VOICE_PRESETS)),
    "voice_f0_method": Rule("choice", choices=("", *F0_METHODS)),
    "voice_model": Rule("text"),
    "voice_encoder": Rule("text"),
    "voice_rmvpe": Rule("text"),
    "voice_speaker": Rule("int", 0, 10_000),
    "voice_block_ms": Rule("float", 20.0, 2000.0, zero_ok=True,
                           zero_means="the smallest block the converter keeps up with"),
    "voice_silence_db": Rule("float", -150.0, 0.0),
    "voice_adapt": _B,
    "voice_bypass": _B,
    "voice_samplerate": Rule("int", 8000, 192_000, zero_ok=True, zero_means="the devices' own rates"),
    "voice_device_block_ms": Rule("float", 1.0, 100.0),
    "engine_mode": Rule("choice", choices=ENGINE_MODES),
    "remote_url": Rule("text"),
    "remote_token_file": Rule("text"),
    "extra": Rule("dict"),
}
# what applies to a running stream without a restart (the engine routes each in Engine.set_option)
LIVE = ("enable_swap", "enable_enhancer", "enable_mouth_mask", "enable_ai_mark", "enable_color_transfer",
        "enable_smoothing", "enable_scrfd", "enable_voice", "max_faces", "detect_interval", "det_size",
        "detect_on_tracks", "full_detect_interval",
        "match_threshold", "codeformer_fidelity", "enhancer_interval", "enhancer_blend", "voice_pitch",
        "voice_formant", "voice_preset", "voice_f0_method", "voice_speaker", "voice_converter", "voice_bypass",
        "av_trim_ms", "lipsync_mic", "adapt_video", "pixel_boost", "track_hold_frames", "color_smoothing",
        "enable_parser", "parser_regions", "parser_interval", "mask_smoothing")
for _name in LIVE:
    RULES[_name] = RULES[_name].at_run_time()


@dataclass(frozen=True)
class Flag:
    """A setting's command-line flag. ``action``: "" takes a value (checked by the setting's rule, so
    a bad one names the flag), "on" / "off" set a switch without a value."""

    flag: str
    help: str
    action: str = ""


#: The settings that have a flag, and the flag. argparse is built from this (commands/common.py):
#: a new setting with a flag is one entry here and one in RULES.
FLAGS: dict[str, Flag] = {
    "max_faces": Flag("--max-faces", "swap up to N faces, largest first"),
    "det_size": Flag("--det-size", "detector input size: smaller is faster, larger finds smaller faces"),
    "detect_interval": Flag("--detect-interval", "run the detector every N frames"),
    "providers": Flag("--providers", "execution providers in order, e.g. cuda,cpu"),
    "swapper_precision": Flag("--swapper-precision", "inswapper variant"),
    "match_threshold": Flag("--match-threshold", "how alike a face must be to the --match photo"),
    "enable_swap": Flag("--no-swap", "pass the video through", "off"),
    "enable_scrfd": Flag("--no-detect", "no face detection: every frame passes through", "off"),
    "enable_mouth_mask": Flag("--mouth-mask", "keep your own mouth (natural speech)", "on"),
    "enable_ai_mark": Flag("--no-ai-mark", "hide the visible 'AI' mark on the output", "off"),
    "enable_color_transfer": Flag("--color-transfer", "match the swapped face's colour to your skin tone", "on"),
    "enable_smoothing": Flag("--no-smoothing", "do not smooth face keypoints over time", "off"),
    "enable_enhancer": Flag("--enhance", "restore the swapped face", "on"),
    "pixel_boost": Flag("--pixel-boost", "swapped face size in px: 256/384/512 run the swapper on 2x2/3x3/4x4 "
                        "tiles (sharper, 4/9/16 times the swap cost)"),
    "track_hold_frames": Flag("--track-hold", "frames a face the detector misses keeps its swap (no flashing)"),
    "color_smoothing": Flag("--color-smoothing", "smooth the colour transfer over frames: 0 none, 0.95 most"),
    "enable_parser": Flag("--parser", "occlusion-aware mask: only the chosen face regions are swapped, a hand "
                          "or a mic in front of the face stays", "on"),
    "parser_model": Flag("--parser-model", "face parser"),
    "parser_regions": Flag("--parser-regions", "face regions to swap with --parser"),
    "parser_interval": Flag("--parser-interval", "parse every k-th frame, the mask follows the face in between"),
    "parser_async": Flag("--parser-sync", "run the face parser inline (every mask fresh; the frame waits)", "off"),
    "mask_smoothing": Flag("--mask-smoothing", "smooth the parser mask over frames: 0 none, 0.95 most"),
    "enhancer": Flag("--enhancer", "which enhancer"),
    "codeformer_fidelity": Flag("--fidelity", "CodeFormer fidelity: 0 restores most, 1 stays closest to the input"),
    "enhancer_interval": Flag("--enhancer-interval", "enhance every k-th frame, re-use in between"),
    "enhancer_blend": Flag("--enhancer-blend", "mix of the enhanced face over the raw swap"),
    "enhancer_async": Flag("--enhancer-sync", "run the enhancer inline (every result fresh; the frame waits)", "off"),
    "camera": Flag("--camera", "camera index or device path"),
    "capture_width": Flag("--width", "capture width"),
    "capture_height": Flag("--height", "capture height"),
    "capture_fps": Flag("--fps", "capture frame rate"),
    "vcam_backend": Flag("--vcam-backend", "pyvirtualcam backend (v4l2loopback, obs, unitycapture)"),
    "enable_voice": Flag("--voice", "also run the voice changer (see `mirage voice --help`)", "on"),
    "voice_pitch": Flag("--pitch", "voice pitch shift in semitones, e.g. +4 or -3"),
    "voice_formant": Flag("--formant", "voice formant ratio, 1.0 = unchanged"),
    "av_trim_ms": Flag("--av-trim-ms", "shift the video against the voice, for a call app's own offset "
                       "(positive: video later)"),
    "lipsync_mic": Flag("--no-lipsync-mic", "without voice conversion, leave the microphone alone (no "
                        "lip-synced virtual microphone)", "off"),
    "adapt_video": Flag("--no-adapt", "pin your settings: no automatic reduction of quality, frame rate or "
                        "resolution under load", "off"),
}


def rule(name: str) -> Rule:
    """The rule of a setting; a field without an entry in RULES is checked by its default's type."""
    r = RULES.get(name)
    if r is not None:
        return r
    default = getattr(_DEFAULTS, name)
    kind = ("bool" if isinstance(default, bool) else "int" if isinstance(default, int) else
            "float" if isinstance(default, float) else "dict" if isinstance(default, dict) else "text")
    return Rule(kind)


class SettingValueError(MirageError):
    """One setting's value does not fit; says where it was set (file key, variable or flag)."""

    def __init__(self, name: str, value: Any, problem: str, expected: str, where: str = "", shown: str = ""):
        self.name, self.value, self.problem, self.expected = name, value, problem, expected
        self.where = where or f"setting {name}"
        self.shown = shown or f"{self.where} = {_show(value)}"
        super().__init__(f"{self.shown} {problem}", f"use {expected}")


def _show(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def check(name: str, value: Any) -> Any:
    """Check one setting: the value converted to the field's type, or :class:`SettingValueError`.

    This is the one place a value is judged; the file, environment and flag layers, the GUI
    and the engine API (through :func:`coerce` and :func:`validate`) all use it.
    """
    if name not in _FIELDS:
        raise MirageError(f"unknown setting {name!r}", "see `mirage run --help` for the settings")
    r = rule(name)
    try:
        return r.check(value)
    except _Bad as bad:
        raise SettingValueError(name, value, bad.problem, r.expected()) from None


def coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (often a string from env/CLI/JSON) to the field's type, or raise a
    MirageError naming the setting. The value is checked too (:func:`check`)."""
    return check(name, value)


def validate(s: Settings) -> Settings:
    """Check every field; raises one MirageError naming each bad setting. Returns ``s`` (or a copy
    with values normalised to their type, e.g. ``camera=2`` -> ``"2"``)."""
    problems, changes = [], {}
    for name in _FIELDS:
        value = getattr(s, name)
        try:
            good = check(name, value)
        except SettingValueError as exc:
            problems.append(f"{name} = {_show(value)} {exc.problem} (use {exc.expected})")
            continue
        if type(good) is not type(value) or good != value:
            changes[name] = good
    if problems:
        raise MirageError("invalid settings: " + "; ".join(problems), "fix the value and try again")
    return s.replace(**changes) if changes else s


# ---------------------------------------------------------------------------- environment

def env_var(name: str) -> str:
    """The environment variable of a setting: ``max_faces`` -> ``MIRAGE_MAX_FACES``."""
    return ENV_PREFIX + name.upper()


#: ``MIRAGE_*`` variables that are not settings (read elsewhere); they never warn. The one list.
OTHER_VARIABLES: dict[str, str] = {
    "MIRAGE_CONFIG_DIR": "where the settings file lives (config.config_dir)",
    "MIRAGE_DATA_DIR": "where identities and models live (config.data_dir)",
    "MIRAGE_CACHE_DIR": "caches (config.cache_dir)",
    "MIRAGE_MODELS_DIR": "where models live (config.models_dir)",
    "MIRAGE_MODELS_TOML": "another models.toml (models/registry.py)",
    "MIRAGE_GPU": "which onnxruntime scripts/setup-env.sh installs (cuda)",
    "MIRAGE_VENV": "where scripts/setup-env.sh creates the virtualenv",
    "MIRAGE_SERVE_SECRET": "the shared secret `mirage serve` signs its tokens with (and `mirage run "
                           "--metrics-port` checks them with); --secret-file instead",
}
#: Per-model overrides read by models/registry.py: ``MIRAGE_<NAME>_URL`` / ``_SHA256`` / ``_SIZE``.
MODEL_VARIABLE_SUFFIXES = ("_URL", "_SHA256", "_SIZE")
#: Variables of retired features: one notice each, then ignored.
RETIRED_VARIABLES: dict[str, str] = {
    "MIRAGE_ENABLE_LIVEPORTRAIT": "LivePortrait was retired (Mirage swaps faces with inswapper and does not "
                                  "animate portraits); the flag is ignored",
}


def setting_variables() -> dict[str, str]:
    """``MIRAGE_<FIELD>`` -> field name, for every field that can be set from the environment."""
    return {env_var(n): n for n in _FIELDS if n != "extra"}


_model_vars_cache: dict[tuple, frozenset | None] = {}


def _model_variables(environ: Mapping[str, str]) -> frozenset | None:
    """Every MIRAGE_<NAME>_URL/_SHA256/_SIZE the registry reads (models, archives, url_env
    aliases), or None when models.toml cannot be read (then any such name is accepted)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            return None
    try:
        from .models.registry import default_registry_path, env_prefix

        path = Path(environ["MIRAGE_MODELS_TOML"]) if environ.get("MIRAGE_MODELS_TOML") else default_registry_path()
        key = (str(path), path.stat().st_mtime_ns)
        if key in _model_vars_cache:
            return _model_vars_cache[key]
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        names: set[str] = set()
        for table in ("models", "archives"):
            for name, entry in (data.get(table) or {}).items():
                names.update(env_prefix(name) + s for s in MODEL_VARIABLE_SUFFIXES)
                if isinstance(entry, dict):
                    names.update(str(a) for a in entry.get("url_env", ()) or ())
        result = frozenset(names)
    except Exception as exc:  # noqa: BLE001 - a broken models.toml is reported by the models code
        log.debug("cannot read the model list for MIRAGE_* checks: %s", exc)
        return None
    _model_vars_cache[key] = result
    return result


def env_notices(environ: Mapping[str, str] | None = None) -> list[str]:
    """One notice per ``MIRAGE_*`` variable that is not a setting, not in :data:`OTHER_VARIABLES`
    and not a model override: retired ones say so, unknown ones name the closest known one."""
    environ = os.environ if environ is None else environ
    settings_vars = setting_variables()
    out = []
    model_vars: frozenset | None = None
    read_models = False  # the model variables are read on first need (models.toml)
    for var in sorted(k for k in environ if k.upper().startswith(ENV_PREFIX)):
        up = var.upper()
        if up in settings_vars or up in OTHER_VARIABLES:
            continue
        if up in RETIRED_VARIABLES:
            out.append(f"{var}: {RETIRED_VARIABLES[up]}")
            continue
        known = list(settings_vars) + list(OTHER_VARIABLES)
        if up.endswith(MODEL_VARIABLE_SUFFIXES):
            if not read_models:
                model_vars, read_models = _model_variables(environ), True
            if model_vars is None or up in model_vars:
                continue
            known = sorted(model_vars) + known
        close = difflib.get_close_matches(up, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see the README's settings paragraph for the variables"
        out.append(f"{var} is not a Mirage variable and is ignored — {hint}")
    return out


def _env_error(var: str, raw: str, exc: SettingValueError) -> MirageError:
    return MirageError(f"{var}={shlex.quote(raw)} {exc.problem}", f"use {exc.expected}, or unset {var}")


def _env_values(environ: Mapping[str, str], strict: bool = True) -> dict:
    out, errors = {}, []
    for var, name in setting_variables().items():
        raw = environ.get(var)
        if raw is None or raw.strip() == "":
            continue  # empty = unset, as for every MIRAGE_* variable
        try:
            out[name] = check(name, raw)
        except SettingValueError as exc:
            errors.append(_env_error(var, raw, exc))
    if errors and strict:
        if len(errors) == 1:
            raise errors[0]
        raise MirageError("; ".join(e.message for e in errors), "fix or unset these variables")
    return out


def from_env(environ: Mapping[str, str] | None = None) -> dict:
    """The settings given by ``MIRAGE_*`` variables; a bad value raises a MirageError naming it."""
    return _env_values(os.environ if environ is None else environ)


# ---------------------------------------------------------------------------- the file

def settings_path() -> Path:
    return config_dir() / "settings.json"


@dataclass
class LoadResult:
    settings: Settings
    notices: list[str]


def _notice(notices: list[str], text: str) -> None:
    notices.append(" ".join(text.split()))
    log.info("%s", notices[-1])


def load_file(path: Path | None = None) -> tuple[dict, list[str]]:
    """Read the settings file. A key with a bad value, or an unknown key, is dropped with a notice
    naming the file and the key (the other keys are kept); a file that is not a JSON object is
    renamed aside and ignored, with a notice."""
    path = path or settings_path()
    notices: list[str] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, notices
    except OSError as exc:  # e.g. a folder or no permission: nothing to set aside
        _notice(notices, f"settings file {path} cannot be read ({exc.strerror or exc}); using defaults")
        return {}, notices
    try:
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:  # not JSON, not UTF-8, or not an object: set aside
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(path, aside)
            where = f"moved to {aside}"
        except OSError:
            where = "left in place"
        _notice(notices, f"settings file {path} was unreadable ({exc}); {where}; using defaults")
        return {}, notices
    values = {}
    old: dict = raw["extra"] if isinstance(raw.get("extra"), dict) else {}
    for k in [k for k in old if k in _FIELDS and k != "extra"]:  # kept in "extra" before they were settings
        v = old.pop(k)
        raw.setdefault(k, v)
    for k, v in raw.items():
        if k in _FIELDS:
            try:
                values[k] = check(k, v)
            except SettingValueError as exc:
                _notice(notices, f"settings file {path}: {k} = {_show(v)} {exc.problem} — expected {exc.expected}; "
                                 f"the key is ignored and the default {_show(getattr(_DEFAULTS, k))} is used "
                                 f"(fix or remove the key, or change it in the window)")
        elif env_var(k) in RETIRED_VARIABLES:
            _notice(notices, f"settings file {path}: {k}: {RETIRED_VARIABLES[env_var(k)]}")
        else:
            close = difflib.get_close_matches(k, list(_FIELDS), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            _notice(notices, f"settings file {path}: unknown key {k!r}{hint} is ignored")
    return values, notices


# ---------------------------------------------------------------------------- all layers

def load(cli_overrides: Mapping[str, Any] | None = None, path: Path | None = None,
         environ: Mapping[str, str] | None = None, *, flag_names: Mapping[str, str] | None = None) -> LoadResult:
    """Defaults < file < environment < ``cli_overrides`` (None values are skipped).

    File problems are notices (the key is dropped); environment and flag problems raise a
    MirageError naming the variable or the flag (``flag_names`` maps a setting to the flag it
    came from, e.g. ``{"max_faces": "--max-faces"}``; a setting without one is named as is).
    """
    environ = os.environ if environ is None else environ
    file_values, notices = load_file(path)
    for n in env_notices(environ):
        _notice(notices, n)
    values = {**file_values, **_env_values(environ)}
    for k, v in (cli_overrides or {}).items():
        if v is None:
            continue
        try:
            values[k] = check(k, v)
        except SettingValueError as exc:
            flag = (flag_names or {}).get(k)
            if not flag:
                raise
            shown = f"{flag} {shlex.quote(str(v))}"
            raise MirageError(f"{shown} {exc.problem}", f"use {exc.expected}") from None
    return LoadResult(validate(Settings(**values)), notices)


def save(settings: Settings, path: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Write the settings file atomically. Values that merely came from ``MIRAGE_*`` variables are
    not written (the file keeps what it had), so a one-off environment override does not stick."""
    path = path or settings_path()
    values = settings.to_dict()
    env = _env_values(os.environ if environ is None else environ, strict=False)
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
