"""``facerig train`` and ``facerig edit``: thin wrappers around ``facerig.diffusion.train`` and ``.edit``.

Multi-GPU / multi-node: ``torchrun --nproc-per-node 8 -m facerig.cli train ...`` (the process group is
initialized from torchrun's environment variables).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from facerig.runtime import add_runtime_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    from facerig.diffusion.train import TrainConfig

    p = subparsers.add_parser(
        "train", help="train DiffusionRig (stage 1: generic prior; stage 2: fine-tune on one person's album)",
        description="Train DiffusionRig on a capture dataset folder. Runs on CPU, one GPU, or under torchrun.",
    )
    add_dataclass_arguments(p, TrainConfig)
    p.set_defaults(func=_run)
    register_edit(subparsers)


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One option per field of a config dataclass, its default and help taken from the field (one source)."""
    kinds = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(config_cls):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        help_text = meta.pop("help")
        required = f.default is dataclasses.MISSING
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            continue
        kind = kinds[str(f.type).split("|")[0].strip()]
        shown = "" if required or f.default is None else f" (default {f.default})"
        parser.add_argument(flag, dest=f.name, type=kind, required=required,
                            default=None if required else f.default, help=help_text + shown, **meta)


def register_edit(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "edit", help="relight, re-pose or change the expression of a portrait with a trained DiffusionRig",
        description="Capture PHOTO, edit its 3D face parameters, re-render the buffers and sample the edited photo. "
                    "Writes OUT/NAME/{source,edited,sheet}.png and edit.json (read by facerig eval).",
    )
    p.add_argument("photo", help="the portrait to edit")
    p.add_argument("--model", required=True, help="trained run folder, checkpoint or official .pt")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="sub-folder name (default: the photo's file stem)")
    p.add_argument("--album", help="the personal model's album dataset: its shared identity shape is used")
    p.add_argument("--light-from", help="photo whose SH light to use")
    p.add_argument("--pose-from", help="photo whose head rotation to use")
    p.add_argument("--expression-from", help="photo whose expression (and jaw) to use")
    p.add_argument("--latent-from", help="photo whose global latent to use (appearance mixing)")
    p.add_argument("--light-dir", help="light direction x,y,z in camera space (x right, y up, z to the camera); "
                   "write --light-dir=-1,0.3,0.6 when it starts with a minus")
    p.add_argument("--light-intensity", type=float, help="distant-light intensity (ambient is kept)")
    p.add_argument("--yaw", type=float, help="head yaw in degrees (positive turns the nose to image right)")
    p.add_argument("--pitch", type=float, help="head pitch in degrees (positive tilts the nose down)")
    p.add_argument("--roll", type=float, help="head roll in degrees")
    p.add_argument("--expr", default="", help="expression weights, e.g. mouthSmile_L=0.8,jawOpen=0.3")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--seed", type=int, default=0, help="noise seed: same seed, same output")
    p.add_argument("--invert", action="store_true", help="start from the source's DDIM inversion (keeps background)")
    p.add_argument("--device", default="cpu")
    add_runtime_arguments(p)
    p.set_defaults(func=_run_edit)


def _parse_vector(text: str | None, what: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        x, y, z = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be three comma-separated numbers, got {text!r}") from None
    return x, y, z


def _run_edit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facerig.diffusion.edit import EditSpec, Editor, album_shape, parse_expression, write_edit

    spec = EditSpec(
        light_from=args.light_from, pose_from=args.pose_from, expression_from=args.expression_from,
        latent_from=args.latent_from, light_dir=_parse_vector(args.light_dir, "--light-dir"),
        light_intensity=args.light_intensity, yaw=args.yaw, pitch=args.pitch, roll=args.roll,
        expression=parse_expression(args.expr),
    )
    editor = Editor(args.model, args.device, shape=album_shape(args.album) if args.album else None,
                    precision=args.precision)
    result = editor.edit(args.photo, spec, steps=args.steps, seed=args.seed, invert=args.invert)
    folder = Path(args.out) / (args.name or Path(args.photo).stem)
    write_edit(folder, result, spec, editor.face)
    print(f"facerig edit: wrote {folder / 'edited.png'} and {folder / 'sheet.png'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from facerig.diffusion.train import TrainConfig, train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    final = train(cfg)
    print(f"facerig train: checkpoint {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m facerig.diffusion.commands train ...``: the same command without the other subcommands."""
    parser = argparse.ArgumentParser(prog="facerig")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
