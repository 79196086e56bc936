"""Rosinality StyleGAN2 checkpoints (``.pt``) as facerig ``Generator`` s: their config read off the state dict,
loaded without unpickling anything but tensors and an inert ``argparse.Namespace``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from facerig.stylerig.stylegan2 import Generator
from facerig.weights import load_state_dict_checked


def generator_config(state: dict[str, Tensor]) -> dict:
    """``Generator`` keyword arguments read off a rosinality generator state dict (lr_mlp and blur taps are
    not recorded in it: rosinality's defaults)."""
    style_dim = state["style.1.weight"].shape[0]
    n_mlp = sum(1 for k in state if k.startswith("style.") and k.endswith(".weight"))
    n_rgbs = sum(1 for k in state if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    channels = {4: state["input.input"].shape[1]}
    channels.update({2 ** (i + 3): state[f"to_rgbs.{i}.conv.weight"].shape[2] for i in range(n_rgbs)})
    return {"size": 2 ** (n_rgbs + 2), "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}


def load_rosinality(path: str | Path) -> tuple[Generator, Tensor | None]:
    """The ``g_ema`` generator (CPU, eval mode) and ``latent_avg`` (or None) of a rosinality ``.pt`` checkpoint.

    Loaded with ``weights_only=True`` (nothing arbitrary is unpickled); any problem with the file is a
    ValueError naming it. Training checkpoints (``g``, ``d``, optimizer states) load too: their ``args``
    is an ``argparse.Namespace``, inert data that is allowed through.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/format failure is a bad file
        raise ValueError(f"{path}: not a weights-only torch checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("g_ema"), dict):
        found = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a rosinality checkpoint (no 'g_ema' state dict; found {found})")
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["g_ema"].items()}
    try:
        config = generator_config(state)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"{path}: 'g_ema' is not a StyleGAN2 generator state dict (missing {exc})") from None
    # Built on the meta device, then given the file's tensors: no random initialisation of ~30M weights.
    with torch.device("meta"):
        generator = Generator(**config)
    load_state_dict_checked(generator, state, str(path), assign=True)
    latent_avg = ckpt.get("latent_avg")
    return generator.eval(), (latent_avg.float() if isinstance(latent_avg, Tensor) else None)
