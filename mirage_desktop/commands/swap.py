"""`mirage swap`: swap the face(s) in a still image."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputImageError, MirageError
from .common import add_engine_arguments, load_identity, model_overrides, set_match, settings_from_args


def add_arguments(p) -> None:
    p.add_argument("--target", required=True, help="the photo whose face(s) are replaced")
    p.add_argument("-o", "--out", required=True, help="where to write the result (.png or .jpg)")
    add_engine_arguments(p)


def run(args) -> int:
    from ..engine import Engine
    from ..vision.blend import draw_ai_mark
    from ..vision.image_io import check_image_target, load_image, save_image
    from ..vision.tracking import select_faces

    settings = settings_from_args(args)
    check_image_target(args.out)  # before any work: a folder, an unknown extension, no write access
    if not args.source and not args.identity:
        raise MirageError("no source face", "pass --source PHOTO or --identity NAME")
    engine = Engine(settings, model_overrides=model_overrides(args))
    engine.load_models()
    load_identity(engine, args)
    set_match(engine, args)
    st = engine.status()
    if st.passthrough:
        raise MirageError(f"cannot swap: {st.passthrough[0]}")
    img = load_image(args.target, max_side=8192)
    faces = engine.analyzer.detect(img)
    if not faces:
        raise InputImageError(f"no face found in {args.target}", "use a photo with a clearly visible face")
    ref = engine.reference
    if ref is not None:
        for f in faces:
            engine.analyzer.embed(img, f)
    chosen = select_faces(faces, settings.max_faces, ref, settings.match_threshold)
    if not chosen:
        raise InputImageError(f"no face in {args.target} matches the --match photo", "lower the threshold or "
                              "use another reference")
    for f in chosen:
        engine.swapper.swap(img, f, engine.latent, mouth_mask=settings.enable_mouth_mask,
                            color_fn=engine._color_fn() if settings.enable_color_transfer else None)
    if settings.enable_enhancer and engine.enhance_stage is not None:
        engine.enhance_stage.process(img, chosen)
    if settings.enable_ai_mark:
        draw_ai_mark(img)
    save_image(args.out, img)
    print(f"swapped {len(chosen)} of {len(faces)} face(s) -> {Path(args.out)}", file=sys.stderr)
    return 0
