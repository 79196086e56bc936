"""facerig's DiffusionRig checkpoints: safetensors weights carrying their model config, and their loader.

A training run folder (``facerig train --out RUN``) looks like::

    RUN/latest.json                           {"checkpoint": "checkpoints/step_00005000", "step": 5000}
    RUN/checkpoints/step_NNNNNNNN/
        model.safetensors                     weights, official key names; metadata: format, config, step
        ema.safetensors                       EMA weights (when training with --ema)
        trainer.safetensors + trainer.json    optimizer tensors + everything else (step, epoch, data position)
        rng.rankR.safetensors                 each process's RNG states
    RUN/log.jsonl, RUN/samples/step_NNNNNNNN.png, RUN/config.json

``latest.json`` is rewritten (atomically) only after every file of a checkpoint is complete, so a run
killed at any moment resumes from a whole checkpoint. Nothing here is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from facerig import weights
from facerig.diffusion.model import DiffusionRig, ModelConfig, build_from_state, load_official
from facerig.weights import LATEST_FILE, latest_checkpoint, read_tensors

FORMAT = DiffusionRig.weights_format
MODEL_FILE = weights.WEIGHTS_FILE
EMA_FILE = "ema.safetensors"


def save_weights(state: dict[str, torch.Tensor], path: str | Path, config: ModelConfig, step: int) -> None:
    weights.save_weights(state, path, FORMAT, config.to_dict(), step)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig, int]:
    """(state dict, model config, step) of a facerig weights file; the config comes from the file's metadata,
    or from ``config.json`` beside it (a ``save_pretrained`` folder whose weights were rewritten by other tools)."""
    path = Path(path)
    state, meta = read_tensors(path)
    if meta.get("format") == FORMAT:
        config = weights.parse_config(ModelConfig, meta.get("config", ""), path)
    elif (path.parent / weights.CONFIG_FILE).exists():
        config = DiffusionRig.read_pretrained_config(path.parent)
    else:
        raise ValueError(f"{path}: not a facerig DiffusionRig weights file (format {meta.get('format')!r}, "
                         f"no {weights.CONFIG_FILE} beside it)")
    try:
        step = int(meta.get("step", 0))
    except ValueError:
        raise ValueError(f"{path}: bad step in metadata ({meta.get('step')!r})") from None
    return state, config, step


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint folder named by a run folder (its latest), a checkpoint folder or a file inside one."""
    path = Path(path)
    if path.is_file():
        return path.parent
    if (path / LATEST_FILE).exists():
        return latest_checkpoint(path)
    if (path / MODEL_FILE).exists():
        return path
    raise FileNotFoundError(f"{path}: no {LATEST_FILE} or {MODEL_FILE} (not a facerig run or checkpoint)")


def load_checkpoint(path: str | Path, prefer_ema: bool = True, config: ModelConfig | str = "paper",
                    device: str | torch.device = "cpu") -> tuple[DiffusionRig, ModelConfig]:
    """A trained model (eval mode) and its config, for inference and editing.

    ``path``: a run folder (its latest checkpoint), a checkpoint or ``save_pretrained`` folder, a
    ``.safetensors`` weights file, or an official DiffusionRig ``.pt`` (whose architecture is ``config``, the paper's by default). From a
    folder, the EMA weights are used when present and ``prefer_ema``.
    """
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        model = load_official(path, config)
        return model.to(device), model.config
    if path.suffix == ".safetensors":
        weights = path
    else:
        ckdir = checkpoint_dir(path)
        weights = ckdir / EMA_FILE if prefer_ema and (ckdir / EMA_FILE).exists() else ckdir / MODEL_FILE
    state, cfg, _ = read_weights(weights)
    return build_from_state(cfg, state, str(weights)).to(device).eval(), cfg
