"""``facerig personalize ALBUM --out RUN``: a personal DiffusionRig from about 20 photos of one person.

The album is captured with one shared identity shape (``RUN/data``, as ``facerig capture --album``), then a
generic model is fine-tuned on it (stage 2: encoder frozen, lr 1e-5) into ``RUN/model``. Both halves
resume: a rerun skips the photos already captured and continues training from the latest checkpoint.
Edit with it by ``facerig edit PHOTO --model RUN/model --album RUN/data``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facerig.runtime import PRECISIONS
from facerig.training import LATEST_FILE, option


@dataclass
class PersonalizeConfig:
    album: str = field(metadata={"help": "folder of photos of one person", "positional": True})
    out: str = field(metadata={"help": "run folder: data/ (the captured album) and model/ (the personal model)"})
    init: str | None = option(None, "generic model to start from (default: the shipped model in models/)")
    steps: int = option(3000, "stage-2 steps; about 18 min for the tiny model on a 2-core AMX CPU (a resumed run continues up to it)")
    batch_size: int = option(8, "items per step")
    capture_size: int = option(128, "aligned crop size of the captured album (>= the model's size)")
    holdout: int = option(2, "album photos kept out of training for the preview grid")
    ckpt_every: int = option(250, "steps between checkpoints (what a killed run loses at most)")
    precision: str = option("auto", "auto: bf16 where the CPU or GPU computes it natively, else fp32",
                            choices=PRECISIONS)
    threads: int | None = option(None, "CPU threads (default: OMP_NUM_THREADS, else the idle cores)")
    seed: int = option(0, "seed of the data order, noise and dropout")
    device: str | None = option(None, "device (default: cuda if available)")


def personalize(cfg: PersonalizeConfig) -> Path:
    """Capture (or finish capturing) the album, then train (or resume) the personal model; its checkpoint."""
    import torch

    from facerig.capture.pipeline import Capture, CaptureConfig, assign_albums, collect_sources
    from facerig.dataset import CaptureDataset
    from facerig.diffusion.train import TrainConfig, train
    from facerig.paths import shipped_model

    out = Path(cfg.out)
    data, run = out / "data", out / "model"
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ignored: dict[str, str] = {}
    sources, _ = assign_albums(collect_sources([cfg.album], out, ignored), None, album=True)
    if not sources:
        raise ValueError(f"{cfg.album}: no photos found")
    summary = Capture(data, CaptureConfig(size=cfg.capture_size, device=device)).run(sources)
    n = len(CaptureDataset(data))
    if n <= cfg.holdout + 1:
        raise ValueError(f"{cfg.album}: only {n} photos captured ({summary.failed} failed); a personal model needs more")
    print(f"facerig personalize: {n} album photos captured in {data}")
    return train(TrainConfig(
        data=str(data), out=str(run), stage=2, init=str(cfg.init or shipped_model()), steps=cfg.steps,
        batch_size=min(cfg.batch_size, n - cfg.holdout), precision=cfg.precision, threads=cfg.threads,
        seed=cfg.seed, holdout=cfg.holdout, ckpt_every=cfg.ckpt_every, sample_every=cfg.steps,
        resume=(run / LATEST_FILE).exists(), device=cfg.device,
    ))
