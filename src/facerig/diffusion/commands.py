"""``facerig train``: a thin wrapper around ``facerig.diffusion.train``; its options are TrainConfig's fields.

Multi-GPU / multi-node: ``torchrun --nproc-per-node 8 -m facerig.cli train ...`` (the process group is
initialized from torchrun's environment variables).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from facerig.diffusion.train import TrainConfig
    from facerig.training import add_dataclass_arguments

    p = subparsers.add_parser(
        "train", help="train DiffusionRig (stage 1: generic prior; stage 2: fine-tune on one person's album)",
        description="Train DiffusionRig on a capture dataset folder. Runs on CPU, one GPU, or under torchrun.",
    )
    add_dataclass_arguments(p, TrainConfig)
    p.set_defaults(func=_run)
    from facerig.diffusion.personalize import PersonalizeConfig

    p = subparsers.add_parser(
        "personalize", help="a personal DiffusionRig from ~20 photos of one person (capture + stage 2)",
        description="Capture ALBUM with one shared identity into OUT/data, then fine-tune a generic model on it "
                    "into OUT/model. Rerun to resume either half.",
    )
    add_dataclass_arguments(p, PersonalizeConfig)
    p.set_defaults(func=_run_personalize)


def _run(args: argparse.Namespace) -> int:
    from facerig.diffusion.train import TrainConfig, train
    from facerig.training import config_from_args

    final = train(config_from_args(TrainConfig, args))
    print(f"facerig train: checkpoint {final}")
    return 0


def _run_personalize(args: argparse.Namespace) -> int:
    from facerig.diffusion.personalize import PersonalizeConfig, personalize
    from facerig.training import config_from_args

    final = personalize(config_from_args(PersonalizeConfig, args))
    out = args.out
    print(f"facerig personalize: checkpoint {final}; edit with: facerig edit PHOTO --model {out}/model --album {out}/data")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m facerig.diffusion.commands train ...``: the same command without the other subcommands."""
    parser = argparse.ArgumentParser(prog="facerig")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
