"""The morphable-model interface: FaceParams -> posed vertices, 68 landmarks, per-vertex albedo.

Functional core: ``blend`` and ``pose_vertices`` are pure tensor functions; ``MorphableModel`` holds the
bases as buffers (so ``.to(device)`` moves them) and composes them. Backends (ICT-FaceKit, FLAME) build one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from facerig.face3d.params import FaceParams
from facerig.face3d.rotation import axis_angle_to_matrix

# Default skin albedo where a model has none: a mid skin tone; capture refines it per face.
DEFAULT_SKIN_ALBEDO = (0.62, 0.45, 0.36)
TINT_STEP = 0.1  # albedo change per unit coefficient of the default RGB-tint basis


def tint_albedo_basis(n_vertices: int) -> torch.Tensor:
    """The default albedo basis where a model ships none: one uniform mode per colour channel (3,V,3), so
    capture can fit skin tone; a basis learned from photos can replace it (``set_albedo_model``)."""
    basis = torch.zeros(3, n_vertices, 3)
    for c in range(3):
        basis[c, :, c] = TINT_STEP
    return basis


@dataclass
class FaceGeometry:
    vertices: torch.Tensor  # (B, V, 3) rotated by the head pose, model units (metres), not yet translated
    landmarks: torch.Tensor  # (B, 68, 3) 3D landmarks in the same frame, iBUG order
    albedo: torch.Tensor  # (B, V, 3) per-vertex albedo in [0, 1]


def blend(template: torch.Tensor, basis: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """template (V,3) + sum_k coeffs (B,K) * basis (K,V,3) -> (B,V,3)."""
    if basis.shape[0] == 0:
        return template.expand(coeffs.shape[0], -1, -1)
    return template + torch.einsum("bk,kvc->bvc", coeffs, basis)


def rotate_vertices(vertices: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Global head rotation about the model origin (translation belongs to the camera, see ``render``)."""
    return vertices @ axis_angle_to_matrix(rotation).transpose(-1, -2)


def barycentric_points(vertices: torch.Tensor, tri: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """Points given as barycentric coordinates (P,3) in vertex triples (P,3) -> (B,P,3)."""
    return (vertices[:, tri] * bary[None, :, :, None]).sum(2)


class MorphableModel(nn.Module):
    """A linear morphable model (identity + expression bases) with per-vertex albedo and 68 landmarks.

    Backends with articulated parts (FLAME's jaw) override ``articulate``.
    """

    def __init__(
        self,
        template: torch.Tensor,  # (V,3)
        shape_basis: torch.Tensor,  # (S,V,3)
        expression_basis: torch.Tensor,  # (E,V,3)
        faces: torch.Tensor,  # (F,3) long
        landmark_vertices: torch.Tensor,  # (68,3) long: vertex triple per landmark
        landmark_bary: torch.Tensor,  # (68,3) barycentric weights in that triple
        albedo_mean: torch.Tensor | None = None,  # (V,3)
        albedo_basis: torch.Tensor | None = None,  # (A,V,3); default: an RGB tint of the mean
        expression_names: list[str] | None = None,
        regions: dict[str, torch.Tensor] | None = None,
        uv_coords: torch.Tensor | None = None,  # (T,2) in [0,1]
        uv_faces: torch.Tensor | None = None,  # (F,3) indices into uv_coords
        name: str = "morphable",
    ):
        super().__init__()
        n_vertices = template.shape[0]
        self.name = name
        self.register_buffer("template", template.float())
        self.register_buffer("shape_basis", shape_basis.float())
        self.register_buffer("expression_basis", expression_basis.float())
        self.register_buffer("faces", faces.long())
        self.register_buffer("landmark_vertices", landmark_vertices.long())
        self.register_buffer("landmark_bary", landmark_bary.float())
        if albedo_mean is None:
            albedo_mean = torch.tensor(DEFAULT_SKIN_ALBEDO).expand(n_vertices, 3).clone()
        self.register_buffer("albedo_mean", albedo_mean.float())
        self.register_buffer("albedo_basis", (albedo_basis if albedo_basis is not None else tint_albedo_basis(n_vertices)).float())
        self.expression_names = list(expression_names or [f"expr{i:03d}" for i in range(expression_basis.shape[0])])
        self.regions = {k: v.long() for k, v in (regions or {}).items()}
        self.register_buffer("uv_coords", uv_coords.float() if uv_coords is not None else torch.zeros(0, 2))
        self.register_buffer("uv_faces", uv_faces.long() if uv_faces is not None else torch.zeros(0, 3, dtype=torch.long))

    @property
    def n_vertices(self) -> int:
        return self.template.shape[0]

    @property
    def n_shape(self) -> int:
        return self.shape_basis.shape[0]

    @property
    def n_expression(self) -> int:
        return self.expression_basis.shape[0]

    @property
    def n_albedo(self) -> int:
        return self.albedo_basis.shape[0]

    def expression_index(self, name: str) -> int:
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise ValueError(f"unknown expression {name!r} for the {self.name} model; known: {', '.join(self.expression_names)}") from None

    def set_albedo_model(self, mean: torch.Tensor, basis: torch.Tensor) -> None:
        """Install a learned albedo space (mean (V,3), basis (A,V,3)), e.g. one capture estimated from photos."""
        if mean.shape != self.template.shape or basis.shape[1:] != self.template.shape:
            raise ValueError(f"albedo model shapes {tuple(mean.shape)}/{tuple(basis.shape)} do not fit {self.n_vertices} vertices")
        self.albedo_mean = mean.float().to(self.template.device)
        self.albedo_basis = basis.float().to(self.template.device)

    def default_params(self, batch_size: int = 1, distance: float = 1.2) -> FaceParams:
        """Neutral frontal face under soft frontal light, framed as FFHQ alignment frames a face.

        FFHQ's crop puts the eye midpoint at the image centre minus 0.1 eye-to-mouth, with the eyes a quarter
        of the image apart; the orthographic camera and the pinhole ``distance`` metres away both do that.
        (The upright form of ``facerig.face3d.camera.ffhq_centre``: the eye-to-mouth offset is taken as vertical.)
        """
        dev = self.template.device
        lmk = barycentric_points(self.template[None], self.landmark_vertices, self.landmark_bary)[0]
        eyes = (lmk[36:42].mean(0) + lmk[42:48].mean(0)) / 2
        eye_dist = (lmk[36:42].mean(0) - lmk[42:48].mean(0)).norm()
        eye_to_mouth = ((lmk[48] + lmk[54]) / 2 - eyes)[:2].norm()
        scale = 0.5 / eye_dist
        shift = torch.stack([-eyes[0], 0.1 * eye_to_mouth - eyes[1]])
        z = lambda *s: torch.zeros(batch_size, *s, device=dev)  # noqa: E731
        light = z(9, 3)
        light[:, 0] = 3.0  # DECA-scale ambient (its band-0 factor is 1/sqrt(4 pi))
        light[:, 3] = 0.5  # +z: light from the camera side
        return FaceParams(
            shape=z(self.n_shape), expression=z(self.n_expression), rotation=z(3),
            translation=torch.cat([shift, shift.new_tensor([-distance])]).expand(batch_size, 3).clone(),
            jaw=z(3), albedo=z(self.n_albedo), light=light,
            cam=torch.cat([scale[None], shift]).expand(batch_size, 3).clone(),
            focal=(scale * distance).reshape(1, 1).expand(batch_size, 1).clone(),
        )

    def articulate(self, vertices: torch.Tensor, params: FaceParams) -> torch.Tensor:
        """Hook for joints below the global pose; linear models have none."""
        return vertices

    def points(self, params: FaceParams, index: torch.Tensor) -> torch.Tensor:
        """Posed positions (B,len(index),3) of a few vertices, without building the whole mesh."""
        return self.point_evaluator(index)(params)

    def point_evaluator(self, index: torch.Tensor):
        """A function params -> posed positions of the ``index`` vertices, with the bases sliced once (fitting
        landmarks needs ~10^2 of ~10^4 vertices, hundreds of times); models with joints build the mesh."""
        if type(self).articulate is not MorphableModel.articulate:
            return lambda params: self(params).vertices[:, index]
        template, shape_basis = self.template[index], self.shape_basis[:, index]
        expression_basis = self.expression_basis[:, index]

        def evaluate(params: FaceParams) -> torch.Tensor:
            v = blend(template, shape_basis, params.shape)
            if expression_basis.shape[0]:
                v = v + torch.einsum("bk,kvc->bvc", params.expression, expression_basis)
            return rotate_vertices(v, params.rotation)

        return evaluate

    def forward(self, params: FaceParams) -> FaceGeometry:
        v = blend(self.template, self.shape_basis, params.shape)
        if self.n_expression:
            v = v + torch.einsum("bk,kvc->bvc", params.expression, self.expression_basis)
        v = self.articulate(v, params)
        v = rotate_vertices(v, params.rotation)
        albedo = blend(self.albedo_mean, self.albedo_basis, params.albedo).clamp(0, 1)
        landmarks = barycentric_points(v, self.landmark_vertices, self.landmark_bary)
        return FaceGeometry(vertices=v, landmarks=landmarks, albedo=albedo)


def random_params(model: MorphableModel, batch_size: int, generator: torch.Generator | None = None,
                  max_yaw: float = 40.0, max_pitch: float = 15.0, max_roll: float = 10.0) -> FaceParams:
    """Plausible random faces: identity ~ N(0, 1) per mode, sparse expressions, head pose within the given
    degrees, a random directional light from the camera's hemisphere plus ambient."""
    from facerig.face3d.light import directional_light
    from facerig.face3d.rotation import euler_to_axis_angle

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(batch_size, *shape, generator=generator)

    p = model.default_params(batch_size).to("cpu")
    shape = torch.randn(batch_size, model.n_shape, generator=generator).clamp(-2.5, 2.5)
    active = torch.rand(batch_size, model.n_expression, generator=generator) < 0.15
    expression = uniform(0.0, 0.7, model.n_expression) * active
    euler = torch.stack([uniform(-a, a) for a in (max_yaw, max_pitch, max_roll)], -1)
    rotation = euler_to_axis_angle(euler[:, 0], euler[:, 1], euler[:, 2])
    direction = torch.randn(batch_size, 3, generator=generator)
    direction[:, 2] = direction[:, 2].abs() + 0.3  # from the camera's side, so the face is lit
    light = directional_light(direction, uniform(0.4, 1.0), uniform(0.3, 0.7))
    albedo = torch.randn(batch_size, model.n_albedo, generator=generator)
    out = p.replace(shape=shape, expression=expression, rotation=rotation, light=light, albedo=albedo)
    return out.to(model.template.device)
