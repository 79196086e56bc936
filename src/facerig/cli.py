"""The ``facerig`` command. Each concept module contributes its subcommands through ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules with a ``register(subparsers)`` function; each adds its own subcommands.
COMMAND_MODULES = [
    "facerig.render.commands",
    "facerig.capture.commands",
    "facerig.eval.commands",
    "facerig.diffusion.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facerig", description="3D-rigged portrait editing.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"facerig {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
