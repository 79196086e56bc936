"""``facerig gan``: ``train`` (options are GanTrainConfig's fields) and ``export`` (a rosinality ``.pt``)."""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers: argparse._SubParsersAction) -> None:
    from facerig.training import add_dataclass_arguments
    from facerig.stylerig.gan_train import GanTrainConfig

    gan = subparsers.add_parser("gan", help="train a StyleGAN2 generator on aligned faces",
                                description="Train our own StyleGAN2 (facerig.stylerig.gan_train) and export it.")
    sub = gan.add_subparsers(dest="gan_command", required=True)
    p = sub.add_parser("train", help="train (or --resume) a StyleGAN2 run",
                       description="Train a StyleGAN2 on a capture dataset folder or a folder of face images.")
    add_dataclass_arguments(p, GanTrainConfig)
    p.set_defaults(func=_train)
    e = sub.add_parser("export", help="write a run's G_ema as a rosinality .pt (stylegan2.load_rosinality)")
    e.add_argument("weights", help="run folder (latest checkpoint), checkpoint folder or generator .safetensors")
    e.add_argument("out", help="the .pt file to write")
    e.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    from facerig.stylerig.gan_train import GanTrainConfig, train

    cfg = GanTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GanTrainConfig)})
    print(f"facerig gan train: checkpoint {train(cfg)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from facerig.stylerig.gan_train import export_rosinality

    print(f"facerig gan export: wrote {export_rosinality(args.weights, args.out)}")
    return 0
