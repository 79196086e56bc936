"""The model's 68 landmarks as a 2D detector marks them: jaw-contour landmarks slide to the silhouette.

A detector puts the jaw line on the face's outline, which on a turned head is not the model's fixed contour
vertices ("dynamic contour"). Each dynamic contour landmark has candidate vertices at its height on its side;
the one projecting furthest outwards is the silhouette point.
"""

from __future__ import annotations

import torch

from facerig.face3d.camera import project
from facerig.face3d.model import MorphableModel
from facerig.face3d.params import FaceParams

# Contour landmarks that slide to the silhouette (the near-vertical parts of the jaw line; the chin stays).
DYNAMIC_CONTOUR = (0, 1, 2, 3, 4, 5, 11, 12, 13, 14, 15, 16)


def contour_candidates(model: MorphableModel, band: float = 0.004) -> tuple[torch.Tensor, torch.Tensor]:
    """For each dynamic contour landmark, the face vertices at its height on its side: (12,K) indices, mask.

    The silhouette point at a landmark's height is the candidate that projects furthest outwards.
    """
    pool = model.regions.get("narrow_face", torch.arange(model.n_vertices))
    pool = pool.to(model.template.device)
    verts = model.template[pool]
    lmk = (model.template[model.landmark_vertices] * model.landmark_bary[..., None]).sum(1)
    cands = []
    for i in DYNAMIC_CONTOUR:
        side = torch.sign(lmk[i, 0])
        ok = ((verts[:, 1] - lmk[i, 1]).abs() < band) & (torch.sign(verts[:, 0]) == side) & (verts[:, 0].abs() >= lmk[i, 0].abs() * 0.6)
        cands.append(pool[ok])
    k = max(len(c) for c in cands)
    idx = torch.zeros(len(cands), k, dtype=torch.long, device=pool.device)
    mask = torch.zeros(len(cands), k, dtype=torch.bool, device=pool.device)
    for j, c in enumerate(cands):
        idx[j, : len(c)] = c
        mask[j, : len(c)] = True
    return idx, mask


def landmark_point_index(model: MorphableModel, cand_idx: torch.Tensor) -> torch.Tensor:
    """The vertices ``project_landmarks`` evaluates: every landmark triple, then the contour candidates."""
    return torch.cat([model.landmark_vertices.reshape(-1), cand_idx.reshape(-1)])


def project_landmarks(model: MorphableModel, params: FaceParams, size: int, candidates: tuple[torch.Tensor, torch.Tensor] | None = None,
                      contour: torch.Tensor | None = None, vertices: torch.Tensor | None = None, dynamic_contour: bool = True,
                      evaluator=None):
    """The model's 68 landmarks in pixels as a 2D detector marks them: jaw landmarks on the silhouette.

    Returns the landmarks (B,68,2) and the chosen silhouette candidate per dynamic landmark (B,12), which
    can be passed back as ``contour`` to keep the choice fixed. Only the landmark and candidate vertices are
    evaluated (by ``evaluator``, ``model.point_evaluator(landmark_point_index(...))``, when given) unless the full mesh ``vertices`` is.
    """
    cand_idx, cand_mask = candidates if candidates is not None else contour_candidates(model)
    if vertices is not None:
        pts = vertices[:, landmark_point_index(model, cand_idx)]
    else:
        pts = (evaluator or model.point_evaluator(landmark_point_index(model, cand_idx)))(params)
    n_lmk = model.landmark_vertices.numel()
    lmk3d = (pts[:, :n_lmk].reshape(-1, 68, 3, 3) * model.landmark_bary[None, ..., None]).sum(2)
    lmk = project(lmk3d, params, "orthographic", size)[..., :2]
    if not dynamic_contour:
        return lmk, contour
    cand = project(pts[:, n_lmk:], params, "orthographic", size)[..., :2].reshape(pts.shape[0], *cand_idx.shape, 2)
    if contour is None:
        with torch.no_grad():
            # Landmarks 0-7 are the subject's right jaw, on image left: outwards is -x there.
            outward = torch.tensor([-1.0 if i < 8 else 1.0 for i in DYNAMIC_CONTOUR], device=cand.device)
            reach = (outward[None, :, None] * cand[..., 0]).masked_fill(~cand_mask[None], -float("inf"))
            contour = reach.argmax(-1)
    chosen = torch.gather(cand, 2, contour[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)
    lmk = lmk.clone()
    lmk[:, list(DYNAMIC_CONTOUR)] = chosen
    return lmk, contour
