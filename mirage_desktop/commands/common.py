"""Arguments and engine set-up shared by `mirage run`, `swap` and `bench`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import RULES, load
from ..errors import MirageError


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("faces and models")
    g.add_argument("--max-faces", type=int, help="swap up to N faces, largest first (MIRAGE_MAX_FACES, default 1)")
    g.add_argument("--match", metavar="PHOTO", help="only swap faces that look like the person in PHOTO")
    g.add_argument("--det-size", type=int, help="detector input size, e.g. 320 (faster) or 640 (default)")
    g.add_argument("--detect-interval", type=int, help="run the detector every N frames (default 5)")
    g.add_argument("--providers", help="execution providers in order, e.g. cuda,cpu (default: auto)")
    g.add_argument("--swapper-precision", choices=RULES["swapper_precision"].choices,
                   help="inswapper variant (default fp16)")
    g.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="use this ONNX file for a model instead of the downloaded one (not verified)")
    g.add_argument("--no-swap", dest="enable_swap", action="store_false", default=None, help="pass video through")
    g.add_argument("--mouth-mask", dest="enable_mouth_mask", action="store_true", default=None,
                   help="keep your own mouth (natural speech)")
    g.add_argument("--no-ai-mark", dest="enable_ai_mark", action="store_false", default=None,
                   help="hide the visible 'AI' mark on the output")
    g.add_argument("--color-transfer", dest="enable_color_transfer", action="store_true", default=None,
                   help="match the swapped face's colour to your skin tone")
    g.add_argument("--no-smoothing", dest="enable_smoothing", action="store_false", default=None,
                   help="do not smooth face keypoints over time")
    e = p.add_argument_group("enhancer")
    e.add_argument("--enhance", dest="enable_enhancer", action="store_true", default=None,
                   help="restore the swapped face (MIRAGE_ENABLE_ENHANCER)")
    e.add_argument("--enhancer", choices=RULES["enhancer"].choices, help="which enhancer (default codeformer)")
    e.add_argument("--fidelity", dest="codeformer_fidelity", type=float,
                   help="CodeFormer fidelity 0..1 (MIRAGE_CODEFORMER_FIDELITY, default 0.75)")
    e.add_argument("--enhancer-interval", type=int, help="enhance every k-th frame, re-use in between (default 1)")
    e.add_argument("--enhancer-blend", type=float, help="0..1 mix of the enhanced face over the raw swap")
    e.add_argument("--enhancer-sync", dest="enhancer_async", action="store_false", default=None,
                   help="run the enhancer inline (every result is fresh; the frame waits for it)")
    c = p.add_argument_group("identity")
    c.add_argument("--source", action="append", default=[], metavar="PHOTO",
                   help="photo(s) of the face to use (several photos of one person are averaged)")
    c.add_argument("--identity", help="a saved identity (from the window's picker) instead of --source")
    c.add_argument("--confirm-rights", action="store_true",
                   help="confirm you have the right to use the source face (asked interactively otherwise)")
    p.set_defaults(_setting_flags=_flags_by_dest(p))  # so a bad value is reported with its flag


def _flags_by_dest(p: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the flag that sets it (its long form), for every option of ``p`` added so far
    (the command's own options are added before the engine's)."""
    out = {}
    for action in p._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in out:
            out[action.dest] = longs[0]
    return out


# settings read from an argument of the same name (`mirage run --camera` included)
SETTING_ARGS = ("max_faces", "det_size", "detect_interval", "providers", "swapper_precision", "enable_swap",
                "enable_mouth_mask", "enable_ai_mark", "enable_color_transfer", "enable_smoothing",
                "enable_enhancer", "enhancer", "codeformer_fidelity", "enhancer_interval", "enhancer_blend",
                "enhancer_async", "camera")
# settings a command passes in ``extra`` from an argument with another name (commands/run.py)
SETTING_ARG_ALIASES = {"capture_width": "width", "capture_height": "height", "capture_fps": "fps"}


def settings_from_args(args, extra: dict | None = None):
    """Settings from file < environment < these arguments; notices are printed (and logged).
    A bad value raises a MirageError naming its flag (``--max-faces 99 is out of range``)."""
    overrides = {k: getattr(args, k, None) for k in SETTING_ARGS}
    overrides.update(extra or {})
    flags = getattr(args, "_setting_flags", None) or {}
    names = {k: flags[SETTING_ARG_ALIASES.get(k, k)] for k in overrides if SETTING_ARG_ALIASES.get(k, k) in flags}
    res = load(overrides, flag_names=names)
    for n in res.notices:
        print(f"mirage: notice: {n}", file=sys.stderr)
    return res.settings


def model_overrides(args) -> dict[str, Path]:
    out = {}
    for item in args.model or []:
        if "=" not in item:
            raise MirageError(f"--model {item!r} is not NAME=PATH", "e.g. --model det_10g=/models/det_10g.onnx")
        name, path = item.split("=", 1)
        out[name.strip()] = Path(path).expanduser()
    return out


def confirm_rights(args, label: str) -> None:
    """The user confirms they may use this face: a flag, or a question on a terminal."""
    if getattr(args, "confirm_rights", False):
        return
    if not sys.stdin.isatty():
        raise MirageError(f"you must confirm you have the right to use the face in {label}",
                          "add --confirm-rights")
    ans = input(f"Do you have the right to use the face in {label} (your own, or with the person's "
                f"permission)? [y/N] ").strip().lower()
    if ans not in ("y", "yes"):
        raise MirageError("not confirmed, so this face will not be used", "use a face you have the right to use")


def load_identity(engine, args):
    """--identity NAME or --source PHOTO...; returns the identity or None."""
    from ..vision.identity import IdentityBuilder, IdentityStore

    if args.identity:
        if engine.analyzer is None:
            engine.load_models()
        # an unusable saved embedding is rebuilt from the identity's photos when they are still there
        ident = IdentityStore().load(args.identity, builder=IdentityBuilder(engine.analyzer))
        if not ident.consent:
            confirm_rights(args, f"identity {args.identity!r}")
        engine.set_identity(ident)
        return ident
    if args.source:
        confirm_rights(args, ", ".join(args.source))
        ident = engine.set_source_photos(list(args.source))
        for rep in ident.reports:
            mark = "ok " if rep.passed else "BAD"
            print(f"source {mark} {rep.source}: {rep.summary()}", file=sys.stderr)
        return ident
    return None


def set_match(engine, args) -> None:
    if getattr(args, "match", None):
        ref = engine.build_identity([args.match], "reference")
        if ref.embedding is None:
            raise MirageError("--match needs face embeddings (ArcFace)", "run `mirage models download buffalo_l`")
        engine.set_reference(ref.embedding)
