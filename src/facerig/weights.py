"""Weights files for facerig's networks, read and written without pickle.

- a weights file is a safetensors file whose metadata names its ``format`` and holds the model's config
  as JSON, so it rebuilds its network alone;
- ``PretrainedMixin`` gives a network diffusers' folder convention, ``save_pretrained(folder)`` /
  ``from_pretrained(folder)`` with ``config.json`` (carrying ``_class_name``) + ``model.safetensors``.

A network using the mixin has a dataclass ``config`` with ``to_dict`` / ``from_dict`` and a constructor
taking it; ``config_class`` and ``weights_format`` name them.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from facerig.io import atomic_save_safetensors, atomic_write_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LATEST_FILE = "latest.json"  # a training run folder's pointer to its newest complete checkpoint


def latest_checkpoint(run: str | Path) -> Path:
    """The checkpoint folder a training run folder's ``latest.json`` names (``facerig.training.run_folder``
    writes it), for whatever reads a run's weights: trainers resuming, editors and evaluations loading."""
    run = Path(run)
    return run / json.loads((run / LATEST_FILE).read_text())["checkpoint"]


def save_weights(state: dict[str, torch.Tensor], path: str | Path, fmt: str, config: dict, step: int = 0) -> None:
    atomic_save_safetensors(state, path, metadata={"format": fmt, "config": json.dumps(config), "step": str(step)})


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


def parse_config(config_class, text: str, source: str | Path):
    """``config_class.from_dict`` of a JSON text, as a ValueError naming ``source`` when it does not fit."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: model config is not JSON ({exc})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{source}: model config is not a JSON object")
    try:
        return config_class.from_dict({k: v for k, v in d.items() if not k.startswith("_")})
    except TypeError as exc:  # missing or mistyped fields
        raise ValueError(f"{source}: bad model config ({exc})") from None


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the first offending keys.

    ``assign=True`` adopts the given tensors (for a model built without initialising its weights).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source}: state dict does not fit the model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} shape mismatches); e.g. missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"shapes {wrong[:3]}"
        )
    model.load_state_dict(state, assign=assign)


@contextlib.contextmanager
def skip_init():
    """Build modules without running their weight initialisers (their tensors are overwritten next).

    The meta device would do the same, but its first use imports torch's decompositions (about 0.7 s),
    the largest part of loading a small model.
    """
    names = ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "zeros_", "ones_", "constant_")
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


class PretrainedMixin:
    config_class: type
    weights_format: str

    @classmethod
    def from_state(cls, config, state: dict[str, torch.Tensor], source: str):
        """A model holding ``state``'s tensors (CPU), built without initialising weights it would overwrite."""
        with skip_init():
            model = cls(config)
        own = model.state_dict()
        # Adopted tensors keep their dtype: bring e.g. half-precision exports to the model's float32.
        state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state.items()}
        load_state_dict_checked(model, state, source, assign=True)
        return model

    def save_pretrained(self, folder: str | Path) -> Path:
        """``folder/config.json`` + ``folder/model.safetensors`` (diffusers' layout); returns the folder."""
        folder = Path(folder)
        config = self.config.to_dict()
        save_weights(self.state_dict(), folder / WEIGHTS_FILE, self.weights_format, config)
        atomic_write_json(folder / CONFIG_FILE, {"_class_name": type(self).__name__, **config})
        return folder

    @classmethod
    def read_pretrained_config(cls, folder: str | Path):
        path = Path(folder) / CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file (not a save_pretrained folder)")
        text = path.read_text()
        name = json.loads(text).get("_class_name") if text.strip().startswith("{") else None
        if name != cls.__name__:
            raise ValueError(f"{path}: not a {cls.__name__} config (_class_name {name!r})")
        return parse_config(cls.config_class, text, path)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu"):
        """A model saved with ``save_pretrained``, in eval mode on ``device``."""
        config = cls.read_pretrained_config(folder)
        weights = Path(folder) / WEIGHTS_FILE
        state, _ = read_tensors(weights)
        return cls.from_state(config, state, str(weights)).to(device).eval()
