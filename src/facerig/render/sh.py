"""Spherical-harmonics Lambertian shading with DECA's basis order and constants.

The light-code convention (basis polynomials p_k, DECA's constants c_k, and why band 0 omits pi) is
``facerig.face3d.light``'s; here a code shades a normal as shading = sum_k light[k] * c_k * p_k(n).
"""

from __future__ import annotations

import torch

from facerig.face3d.light import DECA_SH_CONSTANTS, sh_polynomials


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) DECA polynomial basis times DECA's constants."""
    return sh_polynomials(normals) * torch.tensor(DECA_SH_CONSTANTS, dtype=normals.dtype, device=normals.device)


def sh_shading(normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """normals (..., 3) and light (..., 9, 3), broadcastable -> RGB shading (..., 3)."""
    return (sh_basis(normals)[..., None] * light).sum(-2)
