"""``facerig train`` and ``facerig edit``: thin wrappers around ``facerig.diffusion.train`` and ``.edit``.

Multi-GPU / multi-node: ``torchrun --nproc-per-node 8 -m facerig.cli train ...`` (the process group is
initialized from torchrun's environment variables).
"""

from __future__ import annotations

import argparse
import sys

from facerig.diffusion.model import CONFIGS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train DiffusionRig (stage 1: generic prior; stage 2: fine-tune on one person's album)",
        description="Train DiffusionRig on a capture dataset folder. Runs on CPU, one GPU, or under torchrun.",
    )
    p.add_argument("--data", required=True, help="capture dataset folder (facerig capture output)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, sample grids")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None,
                   help="model config (default: the --init checkpoint's, else paper)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=1)
    p.add_argument("--steps", type=int, default=50_000, help="total optimizer steps of the run (default 50000)")
    p.add_argument("--batch-size", type=int, default=4, help="items per process per step (default 4)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4 stage 1, 1e-5 stage 2)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (default 1.0)")
    p.add_argument("--p2-gamma", type=float, default=1.0, help="P2 loss weighting gamma; 0 = plain MSE (default 1)")
    p.add_argument("--p2-k", type=float, default=1.0, help="P2 loss weighting k (default 1)")
    p.add_argument("--init", default=None,
                   help="start from these weights: a facerig run/checkpoint or an official .pt (stage 2 needs it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY", help="keep EMA weights, e.g. 0.9999")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (for CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-every", type=int, default=1000, help="steps between preview grids (default 1000)")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of a preview (default 20)")
    p.add_argument("--ckpt-every", type=int, default=5000, help="steps between checkpoints (default 5000)")
    p.add_argument("--holdout", type=int, default=4, help="last N dataset items held out for previews (default 4)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept on disk (default 2)")
    p.add_argument("--num-workers", type=int, default=0, help="data loader worker processes (default 0)")
    p.add_argument("--device", default=None, help="device without torchrun (default: cuda if available)")
    p.set_defaults(func=_run)
    register_edit(subparsers)


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
    editor = Editor(args.model, args.device, shape=album_shape(args.album) if args.album else None)
    result = editor.edit(args.photo, spec, steps=args.steps, seed=args.seed, invert=args.invert)
    folder = Path(args.out) / (args.name or Path(args.photo).stem)
    write_edit(folder, result, spec, editor.face)
    print(f"facerig edit: wrote {folder / 'edited.png'} and {folder / 'sheet.png'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from facerig.diffusion.train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out, model=args.config, stage=args.stage, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        p2_gamma=args.p2_gamma, p2_k=args.p2_k, ema=args.ema, bf16=args.bf16, init=args.init, resume=args.resume,
        seed=args.seed, sample_every=args.sample_every, sample_steps=args.sample_steps, ckpt_every=args.ckpt_every,
        holdout=args.holdout, keep_checkpoints=args.keep_checkpoints, num_workers=args.num_workers, device=args.device,
    )
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
