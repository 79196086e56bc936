"""RigNet's training targets beyond the paper's (the other face's parameters): the source's own parameters
with a sampled edit of the kind people make (``TargetSampler``)."""

from __future__ import annotations

import torch
from torch import Tensor

from facerig.face3d import FaceParams, MorphableModel
from facerig.face3d.light import directional_light, split_light
from facerig.face3d.rotation import axis_angle_to_euler, euler_to_axis_angle
from facerig.stylerig.rig import MODES, ParamSpace, mix

# Edits people make (facerig edit, the UI's sliders), sampled for RigNet training targets: absolute yaw and
# pitch (degrees), a light direction in front of the face, and one or two expression groups set to a weight.
EDIT_YAW = 35.0
EDIT_PITCH = 15.0
EDIT_EXPRESSIONS = (("mouthSmile_L", "mouthSmile_R"), ("mouthSmile_L",), ("mouthSmile_R",), ("jawOpen",),
                    ("browInnerUp_L", "browInnerUp_R"), ("browDown_L", "browDown_R"), ("eyeBlink_L", "eyeBlink_R"),
                    ("mouthPucker",), ("mouthFunnel",), ("noseSneer_L", "noseSneer_R"),
                    ("mouthFrown_L", "mouthFrown_R"))


class TargetSampler:
    """RigNet's training targets beyond the paper's (the other face's parameters), ``(p_a, p_b) -> target``.

    Generated faces span little of what users ask for (this project's 64 px generator: yaw within +-12
    degrees, smile and jaw opening below 0.5 in 99 % of its captured samples), so a RigNet trained only on
    pairs of them is never asked for a 30 degree turn or a full smile. A fraction ``edits`` of each batch
    gets instead the source's own parameters with a sampled edit of the mode's fields (each of them, or for
    ``all`` a random non-empty subset): yaw uniform in +-``EDIT_YAW``, half of them with a pitch in
    +-``EDIT_PITCH``; a light from a random direction in front of the face at the source's intensity and
    ambient (as ``facerig edit --light-dir`` sets it); one or two ``EDIT_EXPRESSIONS`` groups set to a
    weight uniform in [0, 1]."""

    def __init__(self, face: MorphableModel, space: ParamSpace, template: FaceParams, mode: str, edits: float = 0.0,
                 generator: torch.Generator | None = None):
        if not 0 <= edits <= 1:
            raise ValueError(f"edits must be in [0, 1], not {edits}")
        self.space, self.template, self.fields = space, template, MODES[mode]
        self.edits, self.gen = edits, generator
        names = set(face.expression_names)
        self.groups = [[face.expression_index(n) for n in group]
                       for group in EDIT_EXPRESSIONS if names.issuperset(group)]

    def _uniform(self, n: int, low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=self.gen)

    def sample_edits(self, p: FaceParams) -> FaceParams:
        """``p`` with a sampled edit of the mode's fields per item (see the class docstring)."""
        b, q = p.batch_size, p.clone()
        chosen = torch.zeros(b, len(self.fields), dtype=torch.bool)
        while not chosen.any(1).all():  # a non-empty subset per item
            redo = ~chosen.any(1)
            chosen[redo] = torch.rand(int(redo.sum()), len(self.fields), generator=self.gen) < 0.5 \
                if len(self.fields) > 1 else True
        pick = dict(zip(self.fields, chosen.unbind(1)))
        if "rotation" in pick:
            euler = axis_angle_to_euler(p.rotation)
            euler[:, 0] = self._uniform(b, -EDIT_YAW, EDIT_YAW)
            pitched = torch.rand(b, generator=self.gen) < 0.5
            euler[:, 1] = torch.where(pitched, self._uniform(b, -EDIT_PITCH, EDIT_PITCH), euler[:, 1])
            rotation = euler_to_axis_angle(euler[:, 0], euler[:, 1], euler[:, 2]).to(p.rotation)
            q.rotation = torch.where(pick["rotation"][:, None], rotation, p.rotation)
        if "light" in pick:
            _, intensity, ambient = split_light(p.light)
            direction = torch.stack([self._uniform(b, -1, 1), self._uniform(b, -0.5, 0.7), self._uniform(b, 0.2, 1)], 1)
            relit = directional_light(direction, intensity, ambient)
            q.light = torch.where(pick["light"][:, None, None], relit, p.light)
        if "expression" in pick:
            for i in torch.nonzero(pick["expression"]).flatten().tolist():
                n_groups = 1 + int(torch.rand((), generator=self.gen) < 0.4)
                for g in torch.randperm(len(self.groups), generator=self.gen)[:n_groups].tolist():
                    q.expression[i, self.groups[g]] = float(torch.rand((), generator=self.gen))
        return q

    def __call__(self, p_a: Tensor, p_b: Tensor) -> Tensor:
        b = p_a.shape[0]
        if self.edits:
            use = torch.rand(b, generator=self.gen) < self.edits
            if use.any():
                edited = self.space.encode(self.sample_edits(self.space.decode(p_a[use], self.template)))
                p_b = p_b.clone()
                p_b[use] = mix(p_a[use], edited, self.space, self.fields)
        return p_b
