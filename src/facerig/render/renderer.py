"""Physical buffers of DiffusionRig from face parameters: normal, albedo, shading, rendered, mask, depth.

Conventions (DiffusionRig/DECA): background 0 in every buffer; ``normal`` is the unit surface normal in
camera space (x right, y up, z towards the camera) in [-1, 1]; ``albedo`` in [0, 1]; ``shading`` is DECA's
SH irradiance (``render.sh``); ``rendered`` = albedo x shading, not clamped; ``depth`` is the distance along
the viewing axis in model units (metres); ``landmarks`` are the 68 model landmarks projected to pixel
coordinates (x right, y down, pixel centres at +0.5). Cameras: ``facerig.face3d.camera``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from facerig.face3d.camera import PROJECTIONS, project
from facerig.face3d.model import FaceGeometry, MorphableModel
from facerig.face3d.params import FaceParams
from facerig.render.rasterize import rasterize
from facerig.render.sh import sh_shading

# DiffusionRig's 9 conditioning channels, in order: the buffers stored per photo and fed to the denoiser.
BUFFER_NAMES = ("rendered", "normal", "albedo")


@dataclass
class RenderConfig:
    image_size: int = 256
    projection: str = "orthographic"
    cull_backfaces: bool = True

    def __post_init__(self):
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")


@dataclass
class Buffers:
    normal: torch.Tensor  # (B,3,S,S)
    albedo: torch.Tensor  # (B,3,S,S)
    shading: torch.Tensor  # (B,3,S,S)
    rendered: torch.Tensor  # (B,3,S,S)
    mask: torch.Tensor  # (B,1,S,S)
    depth: torch.Tensor  # (B,1,S,S)
    landmarks: torch.Tensor  # (B,68,2) pixels

    def condition(self) -> torch.Tensor:
        """DiffusionRig's 9 conditioning channels, in ``BUFFER_NAMES`` order."""
        return torch.cat([getattr(self, n) for n in BUFFER_NAMES], 1)

    def images(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "landmarks"}


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (B,V,3) for counter-clockwise triangles."""
    bsz, n_vertices = vertices.shape[:2]
    v0, v1, v2 = vertices.index_select(1, faces.reshape(-1)).reshape(bsz, -1, 3, 3).unbind(2)
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)  # (B,F,3), length = twice the area
    # One flat accumulation over (batch, corner) is much faster on CPU than three along dim 1.
    index = (torch.arange(bsz, device=faces.device)[:, None, None] * n_vertices + faces[None]).reshape(-1)
    n = vertices.new_zeros(bsz * n_vertices, 3).index_add_(0, index, fn[:, :, None].expand(-1, -1, 3, -1).reshape(-1, 3))
    return F.normalize(n.reshape(bsz, n_vertices, 3), dim=-1, eps=1e-12)


class Renderer(nn.Module):
    """FaceParams -> Buffers for one morphable model. Differentiable in every parameter but visibility."""

    def __init__(self, model: MorphableModel, config: RenderConfig | None = None):
        super().__init__()
        self.model = model
        self.config = config or RenderConfig()

    def forward(self, params: FaceParams, albedo_texture: torch.Tensor | None = None) -> Buffers:
        return self.render_geometry(self.model(params), params, albedo_texture)

    def render_geometry(self, geometry: FaceGeometry, params: FaceParams, albedo_texture: torch.Tensor | None = None) -> Buffers:
        """Buffers for given geometry; ``albedo_texture`` (B,3,T,T*tiles) replaces per-vertex albedo via the
        model's UVs."""
        cfg, faces = self.config, self.model.faces
        size = cfg.image_size
        screen = project(geometry.vertices, params, cfg.projection, size)
        frags = rasterize(screen, faces, size, size, cfg.projection == "perspective", cfg.cull_backfaces)
        item = frags.pixel // (size * size)
        # One gather for every per-vertex attribute: normal, depth (and albedo unless textured).
        per_vertex = [vertex_normals(geometry.vertices, faces), screen[..., 2:]]
        if albedo_texture is None:
            per_vertex.append(geometry.albedo)
        attrs = frags.interpolate(torch.cat(per_vertex, -1))
        normal = F.normalize(attrs[:, :3], dim=-1, eps=1e-12)
        depth = attrs[:, 3:4]
        # Fragments are in pixel order, so each batch item's are one contiguous run: shade run by run
        # rather than gathering a 9x3 light per fragment.
        runs = torch.bincount(item, minlength=params.light.shape[0]).tolist()
        shading = torch.cat([sh_shading(n, light) for n, light in zip(normal.split(runs), params.light)])
        mask = frags.mask()
        if albedo_texture is not None:
            if self.model.uv_faces.shape[0] != faces.shape[0]:
                raise ValueError(f"the {self.model.name} model has no UV layout for texture albedo")
            uv = frags.to_image(frags.interpolate_corners(self.model.uv_coords[self.model.uv_faces]))  # (B,2,S,S)
            # UDIM tiles (ICT's head is in u in [1, 2]) are laid side by side in the texture; v is up.
            tiles = max(1, math.ceil(float(self.model.uv_coords[:, 0].max())))
            grid = torch.stack([uv[:, 0] / tiles * 2 - 1, 1 - uv[:, 1] * 2], -1)
            albedo = F.grid_sample(albedo_texture, grid, mode="bilinear", padding_mode="border", align_corners=False) * mask
            normal, shading, depth = frags.to_image(torch.cat([normal, shading, depth], 1)).split([3, 3, 1], 1)
        else:
            normal, shading, depth, albedo = frags.to_image(torch.cat([normal, shading, depth, attrs[:, 4:]], 1)).split([3, 3, 1, 3], 1)
        return Buffers(
            normal=normal,
            albedo=albedo,
            shading=shading,
            rendered=albedo * shading,
            mask=mask,
            depth=depth,
            landmarks=project(geometry.landmarks, params, cfg.projection, size)[..., :2],
        )
