"""The ``facerig`` command. Each concept module contributes its subcommands through ``register``.

Only the module of the command being run is imported: the others would pull in torch, dlib or matplotlib
for nothing (``facerig --help`` imports none of them). Every subcommand gets ``--threads``. Bad input is one
line and exit code 2; Ctrl-C one line and exit code 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module with a ``register(subparsers)`` function that adds it, one-line help for the index)
COMMANDS = {
    "render": ("facerig.render.commands", "render physical buffers of 3D face parameters as PNGs"),
    "capture": ("facerig.capture.commands", "photos -> aligned crops, fitted 3D face parameters and buffers"),
    "train": ("facerig.diffusion.commands", "train DiffusionRig (stage 1: generic prior; stage 2: personal)"),
    "personalize": ("facerig.diffusion.commands", "a personal DiffusionRig from ~20 photos of one person"),
    "edit": ("facerig.edit.commands", "relight, re-pose or change the expression of a portrait"),
    "eval": ("facerig.eval.commands", "identity, edit accuracy and reconstruction metrics with a report"),
    "ui": ("facerig.ui.commands", "the interactive rig in a local web page"),
    "gan": ("facerig.stylerig.commands", "train a StyleGAN2 generator on aligned faces"),
    "stylerig": ("facerig.stylerig.commands", "rig a StyleGAN with the 3D face model: train, sample, mix, evaluate"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with ``command``'s full options; every other command is listed by its help line only."""
    parser = argparse.ArgumentParser(prog="facerig", description="3D-rigged portrait editing.")
    sub = parser.add_subparsers(dest="command", required=True)
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command][0]).register(sub)
        from facerig.runtime import add_runtime_arguments

        if "--threads" not in sub.choices[command]._option_string_actions:
            add_runtime_arguments(sub.choices[command], precision=False)
    for name, (_, help_text) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_in(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_in(argv)
    args = build_parser(command).parse_args(argv)
    try:
        if hasattr(args, "threads"):
            from facerig.runtime import configure_threads

            configure_threads(args.threads)
        return int(args.func(args) or 0)
    except (OSError, ValueError) as exc:  # bad input, unreadable or unwritable files: one line, not a traceback
        print(f"facerig {_full_command(args)}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: one line (a job's says where it stopped: facerig.training.loop)
        print(f"facerig {_full_command(args)}: {exc or 'interrupted'}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a job Ctrl-C stopped


def _full_command(args) -> str:
    """The command and its subcommand, e.g. "gan train" (subparsers store it in a ``*_command`` destination)."""
    sub = [v for k, v in vars(args).items() if k.endswith("_command") and isinstance(v, str)]
    return " ".join([args.command, *sub])


if __name__ == "__main__":
    sys.exit(main())
