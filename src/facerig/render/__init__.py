"""Differentiable rendering of face parameters into DiffusionRig's physical buffers."""

from facerig.render.rasterize import Fragments, rasterize
from facerig.render.renderer import Buffers, Renderer, RenderConfig, vertex_normals
from facerig.render.sh import sh_shading

__all__ = ["Buffers", "Fragments", "RenderConfig", "Renderer", "rasterize", "sh_shading", "vertex_normals"]
