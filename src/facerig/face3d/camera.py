"""Cameras: model-space points to pixels, and the FFHQ framing of a face.

DECA's orthographic camera ndc_xy = cam_scale * (xy + cam_t) (depth -(z + translation_z)), or a pinhole at
the origin looking down -z, p = xyz + translation, ndc_xy = focal * p_xy / -p_z; then
pixel = (ndc_x + 1) * S/2, (1 - ndc_y) * S/2 (x right, y down, pixel centres at +0.5).
"""

from __future__ import annotations

import torch

from facerig.face3d.params import FaceParams

PROJECTIONS = ("orthographic", "perspective")


def project(points: torch.Tensor, params: FaceParams, projection: str, image_size: int) -> torch.Tensor:
    """Head-frame points (B,P,3) -> screen (B,P,3): pixel x, pixel y, depth along the viewing axis."""
    if projection == "orthographic":
        ndc = params.cam[:, None, :1] * (points[..., :2] + params.cam[:, None, 1:])
        depth = -(points[..., 2] + params.translation[:, None, 2])
    else:
        cam_points = points + params.translation[:, None]
        depth = -cam_points[..., 2]
        ndc = params.focal[:, None] * cam_points[..., :2] / depth[..., None].clamp_min(1e-6)
    half = image_size / 2
    return torch.stack([(ndc[..., 0] + 1) * half, (1 - ndc[..., 1]) * half, depth], -1)


def ffhq_centre(landmarks: torch.Tensor) -> torch.Tensor:
    """FFHQ's crop centre (...,2) of 68 iBUG landmarks (...,68,2): the eye midpoint plus 0.1 x eye-to-mouth
    (the mouth being the midpoint of the mouth corners 48 and 54).

    Plain indexing and arithmetic, so a NumPy array works too; each eye's mean is summed in landmark order,
    as NumPy's ``mean(0)`` does, so both give the same bits as FFHQ's own code.
    """
    def mean(first: int, last: int):
        return sum(landmarks[..., i, :] for i in range(first, last)) / (last - first)

    eyes = (mean(36, 42) + mean(42, 48)) * 0.5
    mouth = (landmarks[..., 48, :] + landmarks[..., 54, :]) * 0.5
    return eyes + (mouth - eyes) * 0.1
