"""Arguments and engine set-up shared by `mirage run`, `swap` and `bench`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import FLAGS, Settings, load, rule
from ..errors import MirageError


ENGINE_GROUPS = {
    "faces and models": ("max_faces", "det_size", "detect_interval", "providers", "swapper_precision",
                         "match_threshold", "enable_swap", "enable_scrfd", "enable_mouth_mask", "enable_ai_mark",
                         "enable_color_transfer", "enable_smoothing", "pixel_boost", "track_hold_frames",
                         "color_smoothing"),
    "occlusion-aware mask": ("enable_parser", "parser_model", "parser_regions", "parser_interval", "parser_async",
                             "mask_smoothing"),
    "enhancer": ("enable_enhancer", "enhancer", "codeformer_fidelity", "enhancer_interval", "enhancer_blend",
                 "enhancer_async"),
}


def add_setting_flags(group, names) -> None:
    """One argparse option per setting, built from ``config.FLAGS`` and ``config.RULES``: the help
    says what a good value is and which variable also sets it; the value itself is checked by the
    setting's rule (so a bad one is reported with its flag)."""
    for name in names:
        f, r = FLAGS[name], rule(name)
        env = f"MIRAGE_{name.upper()}"
        if f.action:
            group.add_argument(f.flag, dest=name, action="store_true" if f.action == "on" else "store_false",
                               default=None, help=f"{f.help} ({env})")
            continue
        choices = [str(c) for c in r.choices if c != ""] if r.choices else None
        what = "" if choices else f": {r.expected()}"
        group.add_argument(f.flag, dest=name, default=None, choices=choices, metavar=None if choices else _METAVARS.get(
            r.kind, "VALUE"), help=f"{f.help}{what} ({env}, default {getattr(Settings(), name)!r})".replace("%", "%%"))


_METAVARS = {"int": "N", "float": "X", "camera": "CAMERA", "providers": "LIST", "text": "TEXT", "device": "DEVICE",
             "regions": "REGIONS"}


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    for title, names in ENGINE_GROUPS.items():
        g = p.add_argument_group(title)
        add_setting_flags(g, names)
        if title == "faces and models":
            g.add_argument("--match", metavar="PHOTO", help="only swap faces that look like the person in PHOTO")
            g.add_argument("--map", action="append", default=[], metavar="REF_PHOTO=SOURCE",
                           help="give the person in REF_PHOTO the face of SOURCE (a photo or a saved identity); "
                                "repeat for each person; the others are not swapped (and --source is not needed)")
            g.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                           help="use this ONNX file for a model instead of the downloaded one (checked against "
                                "the model's signature, not its hash)")
    c = p.add_argument_group("identity")
    c.add_argument("--source", action="append", default=[], metavar="PHOTO",
                   help="photo(s) of the face to use (several photos of one person are averaged)")
    c.add_argument("--identity", help="a saved identity (from the window's picker) instead of --source")
    c.add_argument("--confirm-rights", action="store_true",
                   help="confirm you have the right to use the source face (asked interactively otherwise)")


def settings_from_args(args):
    """Settings from file < environment < these arguments; notices are printed (and logged).
    A bad value raises a MirageError naming its flag (``--max-faces 99 is out of range``)."""
    overrides = {k: getattr(args, k) for k in FLAGS if hasattr(args, k)}
    res = load(overrides, flag_names={k: FLAGS[k].flag for k in overrides})
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


MAP_FIX = "e.g. --map guest.jpg=me.jpg or --map guest.jpg=\"My saved face\""


def parse_map(items: list[str]) -> list[tuple[Path, str]]:
    """``--map REF_PHOTO=SOURCE`` pairs, checked before any model runs: an '=' with something on
    both sides, and a reference photo that exists."""
    pairs = []
    for item in items or []:
        ref, sep, src = item.partition("=")
        if not sep or not ref.strip() or not src.strip():
            raise MirageError(f"--map {item!r} is not REF_PHOTO=SOURCE", MAP_FIX)
        path = Path(ref.strip()).expanduser()
        if not path.is_file():
            raise MirageError(f"--map {item!r}: the photo {ref.strip()} does not exist",
                              "check the reference photo's path")
        pairs.append((path, src.strip()))
    return pairs


def _map_source(engine, args, src: str):
    """SOURCE of --map: a photo (its rights confirmed) or a saved identity (its consent, or confirmed)."""
    from ..vision.identity import IdentityBuilder, IdentityStore

    path = Path(src).expanduser()
    if path.is_file():
        confirm_rights(args, src)
        return engine.build_identity([path], path.stem)
    store = IdentityStore()
    if src not in store.names():
        known = ", ".join(store.names()) or "none saved yet"
        raise MirageError(f"--map: {src} is neither a photo nor a saved identity (saved: {known})",
                          "give the path of a photo or the name of a saved identity")
    ident = store.load(src, builder=IdentityBuilder(engine.analyzer))
    if not ident.consent:
        confirm_rights(args, f"identity {src!r}")
    return ident


def _no_face(ref, src, photo, exc) -> MirageError:
    """A photo of a --map pair without a usable face: the photo checks' own words say why and what to do."""
    why = "; ".join(r.summary() for r in getattr(exc, "reports", []) or []) or exc.message
    return MirageError(f"--map {ref}={src}: no usable face in {photo}: {why}", exc.fix)


def set_face_map(engine, args) -> None:
    """--map REF_PHOTO=SOURCE ...: each person in a reference photo becomes their source face."""
    from ..errors import InputImageError

    pairs = parse_map(getattr(args, "map", None))
    if not pairs:
        return
    if engine.analyzer is None:
        engine.load_models()
    if engine.analyzer.recognizer is None:
        raise MirageError("--map needs face embeddings (ArcFace)", "run `mirage models download buffalo_l`")
    entries = []
    for ref, src in pairs:
        try:
            person = engine.build_identity([ref], "reference")
        except InputImageError as exc:
            raise _no_face(ref, src, ref, exc) from None
        try:
            ident = _map_source(engine, args, src)
        except InputImageError as exc:
            raise _no_face(ref, src, src, exc) from None
        if person.embedding is None or ident.embedding is None:
            raise MirageError("--map needs face embeddings (ArcFace)", "run `mirage models download buffalo_l`")
        entries.append((person.embedding, ident, ident.name))
    engine.set_face_map(entries)
    for ref, ident in zip(pairs, entries):
        print(f"map {ref[0]} -> {ident[2]}", file=sys.stderr)
