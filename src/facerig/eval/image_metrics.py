"""PSNR and SSIM between a reference and a reconstruction, over the whole image or inside a (soft) mask.

Images are float tensors (B,C,H,W) or (C,H,W) in ``[0, data_range]``; masks (B,1,H,W), (1,H,W) or (H,W)
with weights in [0,1]. Results are float64 tensors (B,) (or scalars for unbatched input). Computation is
in float64 so identical images give exactly MSE 0 -> PSNR ``inf`` and SSIM 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Wang et al. 2004 constants, as in the reference MATLAB ssim_index.m.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() not in (3, 4):
        raise ValueError(f"expected (C,H,W) or (B,C,H,W) images, got shape {tuple(a.shape)}")
    unbatched = a.dim() == 3
    if unbatched:
        a, b = a[None], b[None]
    return a.double(), b.double(), unbatched


def _mask_weights(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A mask as (B,1,H,W) float64 weights broadcastable against ``like`` (B,C,H,W)."""
    m = mask.double()
    while m.dim() < 4:
        m = m[None]
    if m.shape[-2:] != like.shape[-2:] or m.shape[1] != 1 or m.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(like.shape)}")
    if torch.any(m < 0) or torch.any(m > 1):
        raise ValueError("mask weights must lie in [0, 1]")
    return m.expand(like.shape[0], 1, *like.shape[-2:])


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean of (B,C,H,W) ``values``, weighted by (B,1,H,W) ``weights`` shared by all channels."""
    if weights is None:
        return values.mean(dim=(1, 2, 3))
    total = weights.sum(dim=(1, 2, 3)) * values.shape[1]
    if torch.any(total == 0):
        raise ValueError("mask is empty (all weights zero) for at least one image")
    return (values * weights).sum(dim=(1, 2, 3)) / total


def psnr(reference: torch.Tensor, estimate: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(range^2 / MSE)``; ``inf`` where the images are identical."""
    a, b, unbatched = _pair(reference, estimate)
    weights = None if mask is None else _mask_weights(mask, a)
    mse = _weighted_mean((a - b) ** 2, weights)
    # Division by an exact zero MSE yields +inf, the honest PSNR of identical images.
    out = 10.0 * torch.log10(data_range**2 / mse)
    return out[0] if unbatched else out


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (float64); SSIM filters with its outer product, separably."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd number, got {size}")
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = taps.numel()
    x = F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim_map(reference: torch.Tensor, estimate: torch.Tensor, data_range: float = 1.0, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-pixel, per-channel SSIM (B,C,H-w+1,W-w+1): 'valid' filtering as the reference implementation does,
    so no padded border pulls the statistics."""
    a, b, _ = _pair(reference, estimate)
    if min(a.shape[-2:]) < window:
        raise ValueError(f"images of size {tuple(a.shape[-2:])} are smaller than the {window}x{window} SSIM window")
    taps = gaussian_window(window, sigma)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a**2
    var_b = _filter_valid(b * b, taps) - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(reference: torch.Tensor, estimate: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian 11x11, sigma 1.5), averaged over channels and valid pixels;
    with a mask, each window centre is weighted by the mask at that pixel."""
    unbatched = reference.dim() == 3
    smap = ssim_map(reference, estimate, data_range, window, sigma)
    weights = None
    if mask is not None:
        r = window // 2
        full = _mask_weights(mask, reference[None] if unbatched else reference)
        weights = full[..., r : full.shape[-2] - r, r : full.shape[-1] - r]
    out = _weighted_mean(smap, weights)
    return out[0] if unbatched else out

