"""``mirage models``: list, download and verify model weights.

    mirage models status                 # present / missing / corrupt, size, licence
    mirage models download NAME ...      # a model, or a pack such as buffalo_l
    mirage models download --needed      # what the current settings need
    mirage models verify [NAME ...]      # re-hash the files (ignores the cache)

Models licensed for non-commercial use only are shown with their licence and need a
confirmation (or ``--yes``) before they are downloaded.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Models live in MIRAGE_MODELS_DIR (default: the user data dir). MIRAGE_<NAME>_URL\n"
        "overrides a model's source (e.g. MIRAGE_INSWAPPER_URL, MIRAGE_CODEFORMER_URL,\n"
        "MIRAGE_BUFFALO_L_URL, http(s) only); MIRAGE_<NAME>_SHA256 its expected checksum\n"
        "(for another export: its size is then unchecked unless MIRAGE_<NAME>_SIZE is set)."
    )
    sub = parser.add_subparsers(dest="models_action", metavar="ACTION")
    p = sub.add_parser("status", help="show each model: present / missing / corrupt, size, licence")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("download", help="download models (resumes, verifies SHA-256)")
    p.add_argument("names", nargs="*", metavar="NAME", help="model or pack names (see `mirage models status`)")
    p.add_argument("--needed", action="store_true", help="the models the current settings need")
    p.add_argument("--all", action="store_true", help="every model in the list")
    p.add_argument("--force", action="store_true", help="download again even if present")
    p.add_argument("--repin", action="store_true",
                   help="forget a hash pinned on first download and pin the new file's")
    p.add_argument("-y", "--yes", action="store_true", help="accept the models' licences without asking")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser("verify", help="re-hash downloaded models and report any that are corrupt")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--pin", action="store_true",
                   help="trust and pin the present file of a model that has no confirmed checksum")
    p = sub.add_parser("path", help="print where a model's file is (or would be)")
    p.add_argument("name", metavar="NAME")
    parser.set_defaults(models_action=None)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..config import models_dir
    from ..models.registry import load_registry

    registry = load_registry()
    action = args.models_action or "status"
    out = sys.stdout
    if action == "status":
        return _status(registry, models_dir(), as_json=getattr(args, "json", False), out=out)
    if action == "path":
        from ..models.registry import model_path
        specs = registry.resolve(args.name)
        for spec in specs:
            print(model_path(spec), file=out)
        return 0
    if action == "verify":
        return _verify(registry, args.names, pin=args.pin, out=out)
    if action == "download":
        return _download(registry, args, out=out)
    raise AssertionError(action)


# ---------------------------------------------------------------------------- status

def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _status(registry, where, *, as_json: bool, out) -> int:
    import json

    from ..models.registry import status

    rows = []
    for spec in registry:
        st = status(spec)
        rows.append((spec, st))
    if as_json:
        json.dump([{
            "name": spec.name, "state": st.state, "path": str(st.path), "size": st.size,
            "expected_size": spec.size, "detail": st.detail, "license": spec.license,
            "license_url": spec.license_url, "commercial_use": spec.commercial_use,
            "needed_by": spec.needed_by, "url": spec.url, "sha256": spec.sha256,
            "checksum_confirmed": spec.checksum_confirmed,
        } for spec, st in rows], out, indent=2)
        out.write("\n")
        return 0
    print(f"models dir: {where}", file=out)
    name_w = max(len(s.name) for s, _ in rows)
    need_w = max(9, *(len(",".join(s.needed_by)) for s, _ in rows))
    print(f"{'NAME':<{name_w}}  {'STATE':<10}  {'SIZE':>9}  {'NEEDED BY':<{need_w}}  LICENCE", file=out)
    licences: dict[str, object] = {}
    for spec, st in rows:
        size = _human(st.size if st.size is not None else spec.size)
        needed = ",".join(spec.needed_by) or "-"
        lic = spec.license_id + ("" if spec.commercial_use else " (not for commercial use)")
        licences.setdefault(spec.license_id, spec)
        print(f"{spec.name:<{name_w}}  {st.state:<10}  {size:>9}  {needed:<{need_w}}  {lic}", file=out)
        if st.state != "present":
            print(f"{'':<{name_w}}  └ {st.detail}", file=out)
    print("\nlicences (see LICENSES.md):", file=out)
    for lic_id, spec in licences.items():
        print(f"  {lic_id}: {spec.license} <{spec.license_url}>", file=out)
    missing = [s.name for s, st in rows if st.state != "present"]
    if missing:
        print("\nto fetch what the current settings need: mirage models download --needed", file=out)
    return 0


# ---------------------------------------------------------------------------- verify

def _verify(registry, names, *, pin: bool, out) -> int:
    from ..models.registry import cached_sha256, pin_sha256, status

    specs = _resolve(registry, names) if names else registry.specs()
    bad = 0
    for spec in specs:
        st = status(spec, refresh=True)
        if st.state == "unverified" and pin:
            digest = cached_sha256(st.path)
            pin_sha256(spec.name, digest, url="(local file)", size=st.size)
            print(f"{spec.name}: pinned {digest} from the present file", file=out)
            continue
        print(f"{spec.name}: {st.state}" + (f" ({st.detail})" if st.detail else ""), file=out)
        if st.state == "corrupt":
            print(f"  fix: mirage models download --force {spec.name}", file=out)
            bad += 1
        elif st.state == "unverified" and names:
            bad += 1
        elif st.state == "missing" and names:
            bad += 1
    return 1 if bad else 0


# ---------------------------------------------------------------------------- download

def _resolve(registry, names):
    seen, specs = set(), []
    for name in names:
        for spec in registry.resolve(name):
            if spec.name not in seen:
                seen.add(spec.name)
                specs.append(spec)
    return specs


def needed_features(settings) -> set[str]:
    """Features the given settings use, in the vocabulary of models.toml's ``needed_by``."""
    features = {"detect", "recognize"}
    if settings.enable_swap:
        features.add("swap_fp32" if settings.swapper_precision == "fp32" else "swap")
    if settings.enable_enhancer:
        features.add("enhance_gfpgan" if settings.enhancer == "gfpgan" else "enhance_codeformer")
    if getattr(settings, "enable_parser", False):
        features.add("parse_resnet_34" if settings.parser_model == "bisenet_resnet_34" else "parse")
    return features


def _confirm_licences(specs, *, yes: bool, out) -> None:
    import sys

    from ..errors import ModelError

    restricted = [s for s in specs if not s.commercial_use]
    if not restricted:
        return
    print("These models are licensed for non-commercial use only:", file=out)
    for s in restricted:
        print(f"  {s.name}: {s.license}", file=out)
        if s.license_url:
            print(f"      {s.license_url}", file=out)
    print("See LICENSES.md. By downloading them you agree to their terms.", file=out)
    if yes:
        print("Licences accepted with --yes.", file=out)
        return
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        names = " ".join(s.name for s in restricted)
        raise ModelError(
            f"not downloading {names}: their non-commercial licence needs your agreement "
            f"and there is no terminal to ask",
            "re-run with --yes to accept the licence",
        )
    out.flush()
    answer = input("Accept these licences and download? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise ModelError("download cancelled: licence not accepted", "re-run and answer y, or pass --yes")


def _download(registry, args, *, out) -> int:
    import sys

    from ..errors import ModelError
    from ..models.download import download
    from ..models.registry import forget_pin, status

    if args.all:
        specs = registry.specs()
    elif args.needed:
        from .. import config
        loaded = config.load()
        for notice in loaded.notices:
            print(f"notice: {notice}", file=out)
        specs = registry.needed_for(needed_features(loaded.settings))
        if args.names:
            specs += [s for s in _resolve(registry, args.names) if s not in specs]
    elif args.names:
        specs = _resolve(registry, args.names)
    else:
        raise ModelError("nothing to download", "name a model (see `mirage models status`), or use --needed or --all")

    todo = [s for s in specs if args.force or args.repin or status(s).state != "present"]
    for s in specs:
        if s not in todo:
            print(f"{s.name}: already present", file=out)
    if not todo:
        return 0
    _confirm_licences(todo, yes=args.yes, out=out)
    if args.repin:
        # all at once, before anything is downloaded: one archive download can put several
        # of these models in place, and each must be pinned afresh from it
        for spec in todo:
            forget_pin(spec.name)
            if spec.archive is not None:
                forget_pin(spec.archive.name)
    failures = 0
    for spec in todo:
        try:
            path = download(spec, progress=not args.no_progress, force=args.force or args.repin)
        except ModelError as exc:
            if len(todo) == 1:
                raise
            print(f"mirage: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        print(f"{spec.name}: ok ({path})", file=out)
    return 2 if failures else 0
