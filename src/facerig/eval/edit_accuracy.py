"""Edit accuracy, DiffusionRig's Table 1 protocol: re-capture the edited photo and measure how far its
lighting, expression and pose lie from the requested target, next to the same distance for the unedited
source, so a reader sees how much of the gap the edit closed.

Parameter dicts map names to tensors with a leading batch dimension: ``light`` (B,9,3) spherical-harmonic
coefficients, ``expression`` (B,E), ``rotation`` (B,3) axis-angle in radians. Keys absent from any of the
compared dicts are not scored.

Pose is reported two ways, both in degrees:
- ``pose_rmse_deg``: RMSE over (yaw, pitch, roll) in ``facerig.face3d.rotation``'s convention,
  R = Ry(yaw) Rx(pitch) Rz(roll), each difference wrapped to (-180, 180];
- ``pose_geodesic_deg``: the angle of the relative rotation, which depends on no Euler convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from facerig.face3d.rotation import axis_angle_to_matrix, matrix_to_euler

LIGHT, EXPRESSION, ROTATION = "light", "expression", "rotation"
METRICS = ("light_rmse", "expression_rmse", "pose_rmse_deg", "pose_geodesic_deg")


def geodesic_angle(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Angle (radians) of r1^T r2; atan2 of sine and cosine stays accurate near 0, where acos does not."""
    rel = r1.transpose(-1, -2) @ r2
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    sin = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], -1).norm(dim=-1) / 2
    return torch.atan2(sin, cos)


def _flat(params: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    t = torch.as_tensor(params[key]).double()
    if t.dim() == 0:
        raise ValueError(f"parameter '{key}' has no batch dimension")
    return t.reshape(t.shape[0], -1)


def param_errors(estimate: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-item errors (B,) of ``estimate`` against ``target`` for every Table-1 key both dicts hold."""
    out: dict[str, torch.Tensor] = {}
    for key in (LIGHT, EXPRESSION, ROTATION):
        if key not in estimate or key not in target:
            continue
        e, t = _flat(estimate, key), _flat(target, key)
        if e.shape != t.shape:
            raise ValueError(f"parameter '{key}': estimate has shape {tuple(e.shape)}, target {tuple(t.shape)}")
        if key == ROTATION:
            if e.shape[1] != 3:
                raise ValueError(f"parameter '{key}' must hold 3 axis-angle values per item, got {e.shape[1]}")
            re, rt = axis_angle_to_matrix(e), axis_angle_to_matrix(t)
            d = torch.remainder(matrix_to_euler(re) - matrix_to_euler(rt) + 180, 360) - 180
            out["pose_rmse_deg"] = d.pow(2).mean(-1).sqrt()
            out["pose_geodesic_deg"] = torch.rad2deg(geodesic_angle(re, rt))
        else:
            out[f"{key}_rmse"] = (e - t).pow(2).mean(-1).sqrt()
    return out


@dataclass
class EditAccuracy:
    """Per-item errors (B,) against the target: ``source`` for the unedited photo, ``edited`` for the edit."""

    source: dict[str, torch.Tensor]
    edited: dict[str, torch.Tensor]

    def gap_closed(self) -> dict[str, torch.Tensor]:
        """1 - edited/source per item: 1 = target reached, 0 = no closer than the source, NaN where the
        source already sat on the target (that key was not edited; its edited error measures leakage)."""
        return {
            k: torch.where(self.source[k] > 0, 1 - self.edited[k] / self.source[k], torch.full_like(self.source[k], math.nan))
            for k in self.source
        }


def edit_accuracy(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], edited: dict[str, torch.Tensor]) -> EditAccuracy:
    """Errors of the source's and the re-captured edit's parameters against the requested target."""
    src, ed = param_errors(source, target), param_errors(edited, target)
    common = src.keys() & ed.keys()
    return EditAccuracy({k: src[k] for k in METRICS if k in common}, {k: ed[k] for k in METRICS if k in common})
