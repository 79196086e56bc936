"""Differentiable rendering of face parameters into DiffusionRig's physical buffers."""

from facerig.render.rasterize import Fragments, rasterize
from facerig.render.renderer import Buffers, Renderer, RenderConfig, project, vertex_normals
from facerig.render.sh import directional_light, dominant_direction, sh_shading

__all__ = [
    "Buffers", "Fragments", "RenderConfig", "Renderer", "directional_light", "dominant_direction",
    "project", "rasterize", "sh_shading", "vertex_normals",
]
