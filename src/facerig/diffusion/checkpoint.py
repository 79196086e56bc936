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

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from facerig.diffusion.model import DiffusionRig, ModelConfig, build_from_state, load_official
from facerig.io import atomic_save_safetensors, atomic_write_json

FORMAT = "facerig-diffusionrig"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
LATEST_FILE = "latest.json"
CONFIG_FILE = "config.json"


def save_weights(state: dict[str, torch.Tensor], path: str | Path, config: ModelConfig, step: int) -> None:
    meta = {"format": FORMAT, "config": json.dumps(config.to_dict()), "step": str(step)}
    atomic_save_safetensors(state, path, metadata=meta)


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a safetensors file ({exc})") from exc


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig, int]:
    """(state dict, model config, step) of a facerig weights file; the config comes from the file's metadata,
    or from ``config.json`` beside it (a ``save_pretrained`` folder whose weights were rewritten by other tools)."""
    path = Path(path)
    state, meta = read_tensors(path)
    if meta.get("format") == FORMAT:
        config = _parse_config(meta.get("config", ""), path)
    elif (path.parent / CONFIG_FILE).exists():
        config = read_pretrained_config(path.parent)
    else:
        raise ValueError(f"{path}: not a facerig DiffusionRig weights file (format {meta.get('format')!r}, "
                         f"no {CONFIG_FILE} beside it)")
    try:
        step = int(meta.get("step", 0))
    except ValueError:
        raise ValueError(f"{path}: bad step in metadata ({meta.get('step')!r})") from None
    return state, config, step


def _parse_config(text: str, source: Path) -> ModelConfig:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: model config is not JSON ({exc})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{source}: model config is not a JSON object")
    try:
        return ModelConfig.from_dict(d)
    except TypeError as exc:  # missing or mistyped fields
        raise ValueError(f"{source}: bad model config ({exc})") from None


def read_pretrained_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    d = json.loads(path.read_text())
    if d.get("_class_name") != "DiffusionRig":
        raise ValueError(f"{path}: not a DiffusionRig config (_class_name {d.get('_class_name')!r})")
    return _parse_config(json.dumps({k: v for k, v in d.items() if not k.startswith("_")}), path)


def save_pretrained(model: DiffusionRig, folder: str | Path) -> Path:
    """diffusers' folder convention: ``config.json`` (with ``_class_name``) + ``model.safetensors``."""
    folder = Path(folder)
    save_weights(model.state_dict(), folder / MODEL_FILE, model.config, 0)
    atomic_write_json(folder / CONFIG_FILE, {"_class_name": "DiffusionRig", "_facerig_format": FORMAT,
                                             **model.config.to_dict()})
    return folder


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint folder named by a run folder (its latest), a checkpoint folder or a file inside one."""
    path = Path(path)
    if path.is_file():
        return path.parent
    if (path / LATEST_FILE).exists():
        return path / json.loads((path / LATEST_FILE).read_text())["checkpoint"]
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
