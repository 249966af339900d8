"""``mirage mic setup|remove|status``: the "Mirage Microphone" virtual microphone (Linux)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("setup", "remove", "status"), nargs="?", default="status",
                        help="create, remove or show the virtual microphone (default: status)")


def run(args) -> int:
    from ..voice import mic

    if args.action == "setup":
        st = mic.setup()
        print(f"Mirage Microphone ready: apps record from source '{st['source']}' "
              f"(\"{mic.DESCRIPTION}\"); the app plays into sink '{st['sink']}'.")
        print('Run the voice changer with: mirage voice --output "Mirage Microphone"')
        return 0
    if args.action == "remove":
        st = mic.remove()
        print("Mirage Microphone removed." if not st["modules"] else f"still loaded: {st['modules']}")
        return 0 if not st["modules"] else 1
    st = mic.status()
    if st["ready"]:
        print(f"Mirage Microphone: ready (sink {st['sink']}, source {st['source']}, modules {st['modules']})")
        return 0
    print("Mirage Microphone: not set up — run `mirage mic setup`")
    return 1
