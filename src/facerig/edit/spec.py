"""What an edit asks for (``EditSpec``), its parsing and validation, and how it changes FaceParams.

Rig-agnostic: DiffusionRig and StyleRig editors both take an ``EditSpec`` and the source's fitted
parameters, and render or generate from ``apply_edit``'s result. Parts can come from target photos (the
official DiffusionRig modes: ``light_from`` takes the SH light, ``pose_from`` the head rotation,
``expression_from`` expression and jaw, ``latent_from`` the appearance) or from explicit values (light
direction and intensity, yaw/pitch/roll in degrees, ARKit expression weights by name); explicit values
are applied on top of target photos' parts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch

from facerig.face3d import FaceParams, MorphableModel
from facerig.face3d.camera import ffhq_centre, project
from facerig.face3d.light import directional_light, split_light
from facerig.face3d.rotation import axis_angle_to_euler, euler_to_axis_angle

CAPTURE_SIZE = 256  # photos are fitted at this size; pose re-anchoring is measured at it
ROLES = ("light", "pose", "expression", "latent")
# Accepted ranges of explicit values: past them a photo-realistic result is impossible anyway.
ANGLE_LIMIT = 90.0  # degrees, each of yaw, pitch, roll
EXPRESSION_RANGE = (-0.5, 1.5)  # ARKit blendshape weights are designed for [0, 1]
INTENSITY_RANGE = (0.0, 5.0)


@dataclass
class EditSpec:
    light_from: str | None = None
    pose_from: str | None = None
    expression_from: str | None = None
    latent_from: str | None = None
    light_dir: tuple[float, float, float] | None = None  # camera space: x right, y up, z towards the camera
    light_intensity: float | None = None
    yaw: float | None = None  # degrees, absolute head pose
    pitch: float | None = None
    roll: float | None = None
    expression: dict[str, float] = field(default_factory=dict)  # ARKit blendshape name -> weight

    def target_photos(self) -> dict[str, str]:
        """Role ("light", "pose", "expression", "latent") -> target photo path, for the roles given."""
        return {role: getattr(self, f"{role}_from") for role in ROLES if getattr(self, f"{role}_from")}

    def validate(self, model: MorphableModel | None = None) -> "EditSpec":
        """Raise one ValueError naming the first bad value; expression names are checked against ``model``."""
        if self.light_dir is not None:
            if len(self.light_dir) != 3 or not all(math.isfinite(v) for v in self.light_dir):
                raise ValueError(f"light direction must be three finite numbers, not {self.light_dir}")
            if math.hypot(*self.light_dir) < 1e-6:
                raise ValueError("light direction must not be zero")
        _check_range("light intensity", self.light_intensity, *INTENSITY_RANGE)
        for name in ("yaw", "pitch", "roll"):
            _check_range(name, getattr(self, name), -ANGLE_LIMIT, ANGLE_LIMIT)
        for name, weight in self.expression.items():
            _check_range(f"expression weight {name}", weight, *EXPRESSION_RANGE)
            if model is not None and name not in model.expression_names:
                raise ValueError(f"unknown expression {name!r} for the {model.name} face model; "
                                 f"it has e.g. {', '.join(model.expression_names[:6])}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EditSpec":
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown edit fields: {sorted(set(d) - known)}")
        d = dict(d)
        if d.get("light_dir") is not None:
            d["light_dir"] = tuple(float(v) for v in d["light_dir"])
        return cls(**d)


def _check_range(what: str, value: float | None, low: float, high: float) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} {value:g} is outside [{low:g}, {high:g}]")


def parse_expression(text: str) -> dict[str, float]:
    """'mouthSmile_L=0.8,jawOpen=0.3' -> {'mouthSmile_L': 0.8, 'jawOpen': 0.3}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expression {item!r} is not NAME=WEIGHT")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"expression weight {value!r} for {name!r} is not a number") from None
    return out


def parse_vector(text: str | None, what: str) -> tuple[float, float, float] | None:
    """'x,y,z' -> (x, y, z); None stays None."""
    if text is None:
        return None
    try:
        x, y, z = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be three comma-separated numbers, got {text!r}") from None
    return x, y, z


def crop_centre(model: MorphableModel, params: FaceParams, size: int = CAPTURE_SIZE) -> torch.Tensor:
    """(B,2) pixel position of FFHQ's crop centre for the model's projected landmarks."""
    return ffhq_centre(project(model(params).landmarks, params, "orthographic", size)[..., :2])


def apply_edit(model: MorphableModel, source: FaceParams, spec: EditSpec, targets: dict[str, FaceParams]) -> FaceParams:
    """The edited parameters: target photos' parts (``targets`` by role) first, then explicit values on top."""
    p = source.clone()
    if "light" in targets:
        p.light = targets["light"].light.clone()
    if spec.light_dir is not None or spec.light_intensity is not None:
        direction, intensity, ambient = split_light(p.light)
        if spec.light_dir is not None:
            direction = torch.tensor([spec.light_dir], dtype=p.light.dtype, device=p.light.device).expand_as(direction)
        if spec.light_intensity is not None:
            intensity = torch.full_like(intensity, spec.light_intensity)
        p.light = directional_light(direction, intensity, ambient)
    if "pose" in targets:
        p.rotation = targets["pose"].rotation.clone()
    if any(a is not None for a in (spec.yaw, spec.pitch, spec.roll)):
        euler = axis_angle_to_euler(p.rotation)
        for i, value in enumerate((spec.yaw, spec.pitch, spec.roll)):
            if value is not None:
                euler[:, i] = value
        p.rotation = euler_to_axis_angle(euler[:, 0], euler[:, 1], euler[:, 2]).to(p.rotation)
    if "expression" in targets:
        p.expression = targets["expression"].expression.clone()
        p.jaw = targets["expression"].jaw.clone()
    for name, weight in spec.expression.items():
        p.expression[:, model.expression_index(name)] = weight
    if not torch.equal(p.rotation, source.rotation):
        # Keep the face where FFHQ alignment would put it: turning the head about the model origin (the
        # neck) would otherwise slide the face across the crop.
        scale = p.cam[:, :1]
        shift_px = crop_centre(model, source) - crop_centre(model, p)
        shift_ndc = torch.stack([shift_px[:, 0], -shift_px[:, 1]], -1) / (CAPTURE_SIZE / 2)
        p.cam = torch.cat([scale, p.cam[:, 1:] + shift_ndc / scale], 1)
    return p
