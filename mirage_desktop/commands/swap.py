"""`mirage swap`: swap the face(s) in a still image."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputImageError, MirageError
from .common import (add_engine_arguments, load_identity, model_overrides, parse_map, set_face_map, set_match,
                     settings_from_args)


def add_arguments(p) -> None:
    p.add_argument("--target", required=True, help="the photo whose face(s) are replaced")
    p.add_argument("-o", "--out", required=True, help="where to write the result (.png or .jpg)")
    add_engine_arguments(p)


def run(args) -> int:
    from ..engine import Engine
    from ..vision.image_io import check_image_target, load_image, save_image

    settings = settings_from_args(args)
    check_image_target(args.out)  # before any work: a folder, an unknown extension, no write access
    parse_map(args.map)  # a malformed pair before any model loads
    if not args.source and not args.identity and not args.map:
        raise MirageError("no source face", "pass --source PHOTO, --identity NAME or --map REF_PHOTO=SOURCE")
    engine = Engine(settings, model_overrides=model_overrides(args))
    engine.load_models()
    load_identity(engine, args)
    set_match(engine, args)
    set_face_map(engine, args)
    st = engine.status()
    if st.passthrough:
        raise MirageError(f"cannot swap: {st.passthrough[0]}")
    img = load_image(args.target, max_side=8192)
    res = engine.process_still(img)
    if not res.found:
        raise InputImageError(f"no face found in {args.target}", "use a photo with a clearly visible face")
    if not res.chosen and args.map:
        raise InputImageError(f"no face in {args.target} matches a --map photo", "lower the threshold or "
                              "use other reference photos")
    if not res.chosen:
        raise InputImageError(f"no face in {args.target} matches the --match photo", "lower the threshold or "
                              "use another reference")
    save_image(args.out, img)
    print(f"swapped {res.swapped} of {res.found} face(s) -> {Path(args.out)}", file=sys.stderr)
    return 0
