"""Differentiable image augmentations, each drawing its random numbers from ``generator`` (so a training run
can checkpoint and replay them). Images are in [-1, 1].

- DiffAugment (Zhao et al., NeurIPS 2020): applied to real AND fake images before the discriminator, so D
  cannot memorise a small training set and G still gets gradients through the augmentation. The operations
  and their ranges are those of the authors' ``DiffAugment_pytorch.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

POLICY = "color,translation,cutout"


def _rand(x: Tensor, generator: torch.Generator | None, *shape: int) -> Tensor:
    return torch.rand(x.shape[0], *shape, generator=generator, device=x.device, dtype=x.dtype)


def _randint(x: Tensor, low: int, high: int, generator: torch.Generator | None) -> Tensor:
    return torch.randint(low, high, (x.shape[0], 1, 1), generator=generator, device=x.device)


def color(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Brightness +-0.5, saturation x[0,2], contrast x[0.5,1.5], each per sample."""
    x = x + (_rand(x, generator, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, generator, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand(x, generator, 1, 1, 1) + 0.5) + mean


def translation(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.125) -> Tensor:
    """Shift by up to ``ratio`` of the size in each axis, zero (mid-grey) filling, by gathering from a 1-px padded copy."""
    b, _, h, w = x.shape
    sx, sy = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx, ty = _randint(x, -sx, sx + 1, generator), _randint(x, -sy, sy + 1, generator)
    gb, gx, gy = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    # Out-of-range positions clamp onto the zero border of the padded copy.
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2)


def cutout(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> Tensor:
    """Zero one square of ``ratio`` of the size per sample, anywhere (partly outside the image too)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox, oy = _randint(x, 0, h + (1 - ch % 2), generator), _randint(x, 0, w + (1 - cw % 2), generator)
    gb, gx, gy = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


OPS: dict[str, Callable[..., Tensor]] = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> list[str]:
    """The operation names of a comma-separated policy ("" = none), checked."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown DiffAugment operation(s) {unknown}; known: {sorted(OPS)}")
    return names


def diff_augment(x: Tensor, policy: str = POLICY, generator: torch.Generator | None = None) -> Tensor:
    """``x`` (B,C,H,W) through the policy's operations in order; same shape, differentiable in ``x``."""
    for name in parse_policy(policy):
        x = OPS[name](x, generator)
    return x

