"""Synthetic capture data: random faces rendered over random backgrounds, with their true parameters, and the
errors of a fit against them (pose, light direction, expression)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facerig.face3d.landmarks import project_landmarks
from facerig.face3d.light import dominant_direction
from facerig.face3d.model import random_params
from facerig.face3d.rotation import axis_angle_to_euler
from facerig.render import Renderer, RenderConfig


def synthetic_faces(model, n: int, size: int, noise_px: float, seed: int = 0):
    """Rendered random faces over smooth noise, their true params and noisy silhouette-aware landmarks."""
    g = torch.Generator().manual_seed(seed)
    params = random_params(model, n, g)
    params = params.replace(albedo=torch.rand(n, model.n_albedo, generator=g) * 2 - 1).to(model.template.device)
    with torch.no_grad():
        buf = Renderer(model, RenderConfig(size))(params)
        background = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(size, size), mode="bilinear").to(buf.mask.device)
        images = buf.rendered.clamp(0, 1) * buf.mask + background * (1 - buf.mask)
        landmarks, _ = project_landmarks(model, params, size)
    landmarks = landmarks + torch.randn(landmarks.shape, generator=g).to(landmarks.device) * noise_px * size / 256
    return images, landmarks, params


def errors(truth, fitted) -> dict:
    pose = (axis_angle_to_euler(truth.rotation) - axis_angle_to_euler(fitted.rotation)).abs()
    cos = (dominant_direction(truth.light) * dominant_direction(fitted.light)).sum(-1).clamp(-1, 1)
    light = torch.rad2deg(torch.acos(cos))
    expr = (truth.expression - fitted.expression).pow(2).mean(1).sqrt()
    med = lambda t: round(float(t.median()), 3)  # noqa: E731
    return {
        "median_yaw_err_deg": med(pose[:, 0]), "median_pitch_err_deg": med(pose[:, 1]), "median_roll_err_deg": med(pose[:, 2]),
        "p90_yaw_err_deg": round(float(pose[:, 0].quantile(0.9)), 3),
        "median_light_dir_err_deg": med(light), "p90_light_dir_err_deg": round(float(light.quantile(0.9)), 3),
        "expression_rmse": round(float(expr.mean()), 4),
        "expression_rmse_if_neutral": round(float(truth.expression.pow(2).mean(1).sqrt().mean()), 4),
    }
