"""Spherical-harmonics light codes in DECA's basis order and constants, and distant-light construction.

DECA (and so DiffusionRig) shades a normal n = (x, y, z) with 9 coefficients per colour as
    shading = sum_k light[k] * c_k * p_k(n),  p = [1, x, y, z, xy, xz, yz, x^2 - y^2, 3 z^2 - 1]
where c_k = A_l * N_k (the clamped-cosine convolution weight A_1 = 2 pi / 3, A_2 = pi / 4 times the real
SH normalisation) for bands 1 and 2; band 0 uses N_0 = 1 / sqrt(4 pi) *without* A_0 = pi. So a DECA light
code means the same here, and for bands 1-2 the result is the exact irradiance of the environment
L(w) = sum_k light[k] N_k p_k(w); the ambient term is that irradiance divided by pi. The shading itself is
``facerig.render.sh``.
"""

from __future__ import annotations

import math

import torch

_PI = math.pi
DECA_SH_CONSTANTS = (
    1 / math.sqrt(4 * _PI),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (3 / 2) * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (1 / 2) * math.sqrt(5 / (4 * _PI)),
)
# Real spherical-harmonics normalisation N_k of each DECA basis polynomial p_k (Y_k = N_k p_k).
SH_NORMALISATION = (
    1 / math.sqrt(4 * _PI),
    *[math.sqrt(3 / (4 * _PI))] * 3,
    *[math.sqrt(15 / (4 * _PI))] * 3,
    0.5 * math.sqrt(15 / (4 * _PI)),
    math.sqrt(5 / (16 * _PI)),
)


def sh_polynomials(directions: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit directions -> (..., 9) DECA basis polynomials p_k, without constants."""
    x, y, z = directions.unbind(-1)
    return torch.stack([torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], -1)


def directional_light(direction: torch.Tensor, intensity: float | torch.Tensor = 1.0, ambient: float | torch.Tensor = 0.0) -> torch.Tensor:
    """SH code (B,9,3) of a distant light from ``direction`` (B,3) plus ambient light.

    ``intensity`` and ``ambient`` are scalars, (B,) or per colour (B,3). The clamped-cosine lobe
    max(0, n.d) projected to bands 0-2 (Ramamoorthi & Hanrahan), in DECA's convention, so ``sh_shading``
    returns ~ ambient + intensity * max(0, n.d).
    """
    d = torch.nn.functional.normalize(direction, dim=-1)
    # A delta light projects to L_k = I Y_k(d) = I N_k p_k(d); shading multiplies by c_k = A_l N_k, which is
    # the irradiance for bands 1-2. Band 0's constant lacks A_0 = pi, so its code carries the pi, and a
    # constant irradiance a needs code a / N_0.
    p = sh_polynomials(d)
    norms = torch.tensor(SH_NORMALISATION, dtype=d.dtype, device=d.device)

    def per_colour(v):
        v = torch.as_tensor(v, dtype=d.dtype, device=d.device)
        return (v[..., None] if v.dim() == 1 else v).expand(d.shape[0], 3) if v.dim() else v.expand(d.shape[0], 3)

    lobe = (norms * p)[:, :, None] * per_colour(intensity)[:, None, :]  # (B,9,3)
    dc = lobe[:, :1] * _PI + per_colour(ambient)[:, None, :] * math.sqrt(4 * _PI)
    return torch.cat([dc, lobe[:, 1:]], 1)


def split_light(light: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direction (B,3), intensity (B,) and per-colour ambient (B,3) of the ambient + distant light that has
    the same band 0-1 coefficients as ``light``: the inverse of ``directional_light`` (exact for its codes)."""
    n0, n1 = SH_NORMALISATION[0], SH_NORMALISATION[1]
    intensity = light[:, 1:4].mean(-1).norm(dim=-1) / n1
    ambient = (light[:, 0] - intensity[:, None] * _PI * n0) * n0  # code a / N_0 <=> irradiance a
    return dominant_direction(light), intensity, ambient


def dominant_direction(light: torch.Tensor) -> torch.Tensor:
    """Unit direction of the band-1 (linear) part of an SH light, averaged over colour: (B,9,3) -> (B,3)."""
    return torch.nn.functional.normalize(light[:, 1:4].mean(-1), dim=-1)
