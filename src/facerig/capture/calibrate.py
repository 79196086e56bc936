"""Landmark calibration: move a model's landmark vertices to match a 2D detector's convention.

A morphable model's 68 landmark vertices are one annotator's idea of where, say, the inner brow is; dlib's
(or any detector's) idea differs by a consistent offset. Given fits of many photos and the detector's
landmarks on them, each landmark moves to the nearby vertex whose projection lies closest to the detector's
point on average. Contour landmarks that slide to the silhouette during fitting are left alone.
"""

from __future__ import annotations

import torch

from facerig.face3d.camera import project
from facerig.face3d.landmarks import DYNAMIC_CONTOUR
from facerig.face3d.model import MorphableModel
from facerig.face3d.params import FaceParams


@torch.no_grad()
def calibrate_landmarks(model: MorphableModel, params: FaceParams, detected: torch.Tensor, size: int,
                        radius: float = 0.008) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """New landmark vertex indices for ``model`` (which must have one vertex per landmark).

    ``params`` (N faces) were fitted to photos of ``size`` px whose detector landmarks are ``detected``
    (N,68,2). Candidates are vertices of the fitting region within ``radius`` metres of the current landmark.
    Returns the indices and, per landmark, the mean pixel error before and after.
    """
    current = model.landmark_vertices[:, 0]
    pool = model.regions.get("narrow_face", torch.arange(model.n_vertices, device=current.device))
    chosen, before, after = current.clone(), torch.zeros(68), torch.zeros(68)
    for i in range(68):
        here = model.template[current[i]]
        cand = pool[(model.template[pool] - here).norm(dim=-1) < radius]
        cand = torch.unique(torch.cat([cand, current[i : i + 1]]))
        proj = project(model.points(params, cand), params, "orthographic", size)[..., :2]
        err = (proj - detected[:, i : i + 1]).norm(dim=-1).mean(0)
        before[i] = err[(cand == current[i]).nonzero()[0, 0]]
        if i in DYNAMIC_CONTOUR:
            after[i] = before[i]
            continue
        chosen[i], after[i] = cand[err.argmin()], err.min()
    return chosen.tolist(), before, after
