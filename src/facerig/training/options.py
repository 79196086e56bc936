"""Config dataclasses that drive the command line, and the options every training command shares.

``RunOptions`` (out, seed, device, precision, threads, resume) is what any resumable run needs;
``StepOptions`` adds the step loop's length and cadence (``facerig.training.loop``). A trainer's config
subclasses one of them, so ``facerig train``, ``facerig gan train`` (and ``facerig stylerig train``) define
these options once; ``add_dataclass_arguments`` lists them in a group of their own after the trainer's.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from facerig.runtime import PRECISION_HELP, PRECISIONS, THREADS_HELP


def option(default, help: str, **extra):
    """A config dataclass field with its command-line help (``add_dataclass_arguments`` reads it)."""
    return field(default=default, metadata={"help": help, **extra})


def redefault(config_cls, name: str, default):
    """``config_cls``'s field ``name`` (same help) with another default: a subclass redeclares it with this,
    ``log_every: int = redefault(StepOptions, "log_every", 50)``, so the help is written once."""
    return field(default=default, metadata=config_cls.__dataclass_fields__[name].metadata, kw_only=True)


@dataclass(kw_only=True)
class RunOptions:
    """What every resumable run is given: its folder, seed and hardware."""

    out: str = field(metadata={"help": "run folder: checkpoints, logs, samples"})
    seed: int = option(0, "seed of the initial weights, the data order and every random draw of the run")
    device: str | None = option(None, "device (default: cuda if available; under torchrun each process's GPU)")
    precision: str = option("auto", PRECISION_HELP, choices=PRECISIONS)
    threads: int | None = option(None, THREADS_HELP)
    resume: bool = option(False, "continue the run in --out from its latest checkpoint")

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, not {self.threads}")


@dataclass(kw_only=True)
class StepOptions(RunOptions):
    """A run of ``steps`` optimizer steps with log, sample and checkpoint cadences (``loop.train_steps``)."""

    steps: int = option(10_000, "total optimizer steps of the run (a resumed run continues up to it)")
    log_every: int = option(25, "steps between host syncs: log lines and the NaN check")
    sample_every: int = option(1000, "steps between sample grids (fixed inputs)")
    ckpt_every: int = option(5000, "steps between checkpoints")
    keep_checkpoints: int = option(2, "checkpoints kept on disk")

    def __post_init__(self):
        super().__post_init__()
        for name in ("steps", "log_every", "sample_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


COMMON = tuple(f.name for f in dataclasses.fields(StepOptions))


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One option per field of a config dataclass, its default and help taken from the field (one source);
    the ``RunOptions`` / ``StepOptions`` fields in a group of their own, after the others."""
    kinds = {"int": int, "float": float, "str": str}
    shared = COMMON if issubclass(config_cls, RunOptions) else ()
    common = parser.add_argument_group("run options (shared by the training commands)") if shared else parser
    for f in sorted(dataclasses.fields(config_cls), key=lambda f: f.name in shared):
        target = common if f.name in shared else parser
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        help_text = meta.pop("help")
        required = f.default is dataclasses.MISSING
        if meta.pop("positional", False):
            target.add_argument(f.name, help=help_text, **meta)
            continue
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if type_name == "bool":
            target.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            continue
        kind = kinds[type_name.split("|")[0].strip()]
        shown = "" if required or f.default is None else f" (default {f.default})"
        target.add_argument(flag, dest=f.name, type=kind, required=required,
                            default=None if required else f.default, help=help_text + shown, **meta)


def config_from_args(config_cls, args: argparse.Namespace):
    """The config dataclass a parser made by ``add_dataclass_arguments`` parsed ``args`` into."""
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})
