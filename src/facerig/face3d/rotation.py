"""Rotation helpers (pure tensor functions).

Convention: right-handed model space, x towards image right, y up, z towards the camera. Head pose is an
axis-angle vector in radians. Euler angles are in degrees, R = Ry(yaw) @ Rx(pitch) @ Rz(roll): positive yaw
turns the nose to image right, positive pitch tilts it down, positive roll turns the head counter-clockwise
as seen in the image.
"""

from __future__ import annotations

import math

import torch


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrix (Rodrigues), smooth and differentiable at zero."""
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]  # (...,1,1)
    theta = theta2.clamp_min(1e-12).sqrt()
    small = theta2 < 1e-8
    # sin(t)/t and (1-cos t)/t^2 with their Taylor series near 0, so gradients stay finite.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation -> (..., 3) axis-angle (not for differentiating at angle pi)."""
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    angle = torch.acos(cos)
    v = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = torch.sin(angle)
    scale = torch.where(sin.abs() < 1e-6, 0.5 + angle**2 / 12, angle / (2 * sin.clamp_min(1e-12)))
    aa = v * scale[..., None]
    # Near pi the antisymmetric part vanishes: take the axis from the symmetric part instead.
    near_pi = angle > math.pi - 1e-3
    if near_pi.any():
        S = (R + torch.eye(3, dtype=R.dtype, device=R.device)) / 2
        col = S.diagonal(dim1=-2, dim2=-1).argmax(-1)
        axis = torch.gather(S, -1, col[..., None, None].expand(*col.shape, 3, 1)).squeeze(-1)
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        aa = torch.where(near_pi[..., None], axis * angle[..., None], aa)
    return aa


def _axis_rotation(angle: torch.Tensor, axis: int) -> torch.Tensor:
    aa = torch.zeros(*angle.shape, 3, dtype=angle.dtype, device=angle.device)
    aa[..., axis] = angle
    return axis_angle_to_matrix(aa)


def euler_to_matrix(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees -> rotation matrix R = Ry(yaw) Rx(pitch) Rz(roll)."""
    rad = math.pi / 180
    return _axis_rotation(yaw * rad, 1) @ _axis_rotation(pitch * rad, 0) @ _axis_rotation(roll * rad, 2)


def euler_to_axis_angle(yaw, pitch, roll) -> torch.Tensor:
    """Degrees (floats or tensors) -> (..., 3) axis-angle."""
    yaw, pitch, roll = (torch.as_tensor(a, dtype=torch.float32) for a in (yaw, pitch, roll))
    yaw, pitch, roll = torch.broadcast_tensors(yaw, pitch, roll)
    return matrix_to_axis_angle(euler_to_matrix(yaw, pitch, roll))


def matrix_to_euler(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) degrees (yaw, pitch, roll), inverse of ``euler_to_matrix`` for |pitch| < 90."""
    # R = Ry Rx Rz: R[1,2] = -sin(pitch); R[0,2]/R[2,2] = tan(yaw); R[1,0]/R[1,1] = tan(roll).
    pitch = torch.asin((-R[..., 1, 2]).clamp(-1, 1))
    yaw = torch.atan2(R[..., 0, 2], R[..., 2, 2])
    roll = torch.atan2(R[..., 1, 0], R[..., 1, 1])
    return torch.stack([yaw, pitch, roll], -1) * (180 / math.pi)


def axis_angle_to_euler(aa: torch.Tensor) -> torch.Tensor:
    return matrix_to_euler(axis_angle_to_matrix(aa))
