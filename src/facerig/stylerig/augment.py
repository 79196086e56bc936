"""Differentiable image augmentations, each drawing its random numbers from ``generator`` (so a training run
can checkpoint and replay them). Images are in [-1, 1].

- DiffAugment (Zhao et al., NeurIPS 2020): applied to real AND fake images before the discriminator, so D
  cannot memorise a small training set and G still gets gradients through the augmentation. The operations
  and their ranges are those of the authors' ``DiffAugment_pytorch.py``.
- ``geometric_blur_noise``: expectation over transformation (Athalye et al., 2018) for an image DFR that RigNet
  trains against: sub-pixel shift and scale, Gaussian blur and noise, never colour (colour is the light).
  Pixel patterns that fool the DFR at one exact placement do not survive them; a face change does.
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


def geometric_blur_noise(x: Tensor, generator: torch.Generator | None = None, shift: float = 1.5,
                         scale: float = 0.03, blur: float = 1.0, noise: float = 0.03) -> Tensor:
    """Per sample: shift by up to ``shift`` pixels and scale by up to ``scale`` (bilinear, border padding),
    Gaussian blur of sigma up to ``blur`` pixels (5 taps), Gaussian noise of std up to ``noise``."""
    b, c, h, w = x.shape

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(b, generator=generator, device=x.device)

    theta = torch.zeros(b, 2, 3, device=x.device)
    zoom = uniform(1 - scale, 1 + scale)
    theta[:, 0, 0], theta[:, 1, 1] = zoom, zoom
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-shift, shift) * 2 / w, uniform(-shift, shift) * 2 / h
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False).to(x.dtype)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Separable blur, one kernel per sample: a grouped convolution over (1, B*C, H, W).
    sigma = uniform(1e-3, blur)
    taps = torch.arange(-2, 3, device=x.device, dtype=torch.float32)
    kernel = torch.softmax(-taps.pow(2) / (2 * sigma[:, None].pow(2)), 1).repeat_interleave(c, 0).to(x.dtype)
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, [2, 2, 0, 0], mode="replicate"), kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, [0, 0, 2, 2], mode="replicate"), kernel[:, None, :, None], groups=b * c)
    x = flat.reshape(b, c, h, w)
    std = uniform(0, noise).to(x.dtype)[:, None, None, None]
    return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
