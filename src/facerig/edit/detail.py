"""Edits at the photo's own resolution: the rig paints the change at its size, the photo keeps its detail.

    crop      the photo's FFHQ crop at its own scale, F px (``full_crop``: the capture's transform, rescaled)
    low       the rig's source image (what the rig saw), resampled into the crop at F
    detail    crop - low: what lies above the rig's resolution
    result    rig output resampled into the crop + confidence * ratio * warp(detail)

``warp`` carries the detail with the face: the rasteriser gives, per edited pixel, the triangle and
barycentrics it sees, which name the same surface point on the source mesh, hence where it lay in the photo.
``ratio`` re-shades the detail (edited over source SH shading at that point). ``confidence`` fades the detail
out where the correspondence does not hold: surface the source did not see (turned towards the camera, or
behind the nose), background the source face covered (behind a turned head, an opened mouth), background
near a face that moved (hair moves with the head); there the upsampled rig output stands alone. A no-edit
whose rig output equals its input returns the crop exactly. Rig-agnostic: the rig's framing of the crop
(``EditResult.frame``) is all it needs to know; outside that framing the photo is kept.

The correspondence is computed at the capture size (the parameters were fitted there) and its flow and
masks upsampled: within a triangle the flow is affine, so bilinear upsampling is exact there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from facerig.capture.align import cut_crop
from facerig.edit.editor import FULL_FRAME
from facerig.face3d import FaceParams, MorphableModel
from facerig.face3d.camera import project
from facerig.render.rasterize import rasterize
from facerig.render.renderer import vertex_normals
from facerig.render.sh import sh_shading

MIN_SIDE, MAX_SIDE = 256, 1024  # the full-resolution crop's side: at least a viewable size, at most FFHQ's
DEPTH_TOLERANCE = 0.01  # model units (m): a surface point this far behind the source's visible surface is hidden
SHADING_FLOOR = 0.05  # added to both shadings: a black source shading does not blow the ratio up
RATIO_LIMIT = 3.0  # the most the detail is brightened where light is added
SOFT_EDGE = 0.01  # fraction of the side over which the confidence ramps (two box blurs)
MOTION_BAND = 0.08  # fraction of the side: background this close to a moving face may move with it (hair)
MOTION_LIMIT = 0.01  # fraction of the side the face nearby may move before such background loses its detail
FRAME_FEATHER = 0.03  # fraction of the side over which a rig frame smaller than the crop blends into the photo


def full_crop_size(transform: np.ndarray | torch.Tensor, capture_size: int) -> int:
    """The side of the FFHQ crop at the photo's own scale: its quad's side in photo pixels, clamped to
    [MIN_SIDE, MAX_SIDE]. ``transform`` (3,3) maps photo pixels to the crop at ``capture_size``."""
    t = np.asarray(transform, dtype=np.float64)
    side = capture_size / float(np.hypot(t[0, 0], t[1, 0]))
    return int(min(max(round(side), MIN_SIDE), MAX_SIDE))


def full_crop(image: np.ndarray, transform: np.ndarray | torch.Tensor, capture_size: int,
              size: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The photo's FFHQ crop at its own scale: ((3,F,F) float [0,1], (3,3) crop-F pixel <- photo pixel).

    ``image`` (H,W,3) uint8 is the photo ``transform`` (3,3, crop pixel at ``capture_size`` <- photo pixel)
    refers to; cut from its pixels as capture cuts (``capture.align.cut_crop``), at ``size`` or
    ``full_crop_size``."""
    t = np.asarray(transform, dtype=np.float64)
    size = size or full_crop_size(t, capture_size)
    t_full = np.diag([size / capture_size, size / capture_size, 1.0]) @ t
    crop = cut_crop(image, t_full, size)
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0, t_full


def rig_to_crop(images: torch.Tensor, frame: tuple[float, float, float], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rig-framed (B,C,s,s) images -> the (B,C,F,F) aligned crop at ``size`` (bicubic) and how far the rig's
    frame covers it, (1,1,F,F) in [0,1]: 1 inside, ramping to 0 at its edge over FRAME_FEATHER of the side.
    ``frame`` places the crop in the rig's image (centre x, centre y, side; units of its side): crop unit
    coordinate u sits at (u - 0.5) * side + centre there."""
    cx, cy, side = frame
    u = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    gx, gy = (u - 0.5) * side + cx, (u - 0.5) * side + cy
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None] * 2 - 1
    out = F.grid_sample(images, grid.to(images).expand(images.shape[0], -1, -1, -1), mode="bicubic",
                        padding_mode="border", align_corners=False)
    # distance inside the frame's nearest edge, in crop sides
    ramp = lambda g: (torch.minimum(g, 1 - g) / side / FRAME_FEATHER).clamp(0, 1)  # noqa: E731
    cover = ramp(gy)[:, None] * ramp(gx)[None, :] if tuple(frame) != FULL_FRAME else torch.ones(size, size, dtype=u.dtype)
    return out, cover.to(images)[None, None]


@dataclass
class Correspondence:
    """Where each edited-crop pixel's content lies in the source crop, and how far to trust it."""

    flow: torch.Tensor  # (B,2,S,S) source position minus pixel centre, in units of the side (x, y)
    confidence: torch.Tensor  # (B,1,S,S) in [0,1]: weight of the photo's detail
    ratio: torch.Tensor  # (B,3,S,S) edited over source shading at the same surface point (1 off the face)

    @property
    def size(self) -> int:
        return self.flow.shape[-1]

    def resized(self, size: int) -> "Correspondence":
        """The same correspondence at ``size`` (bilinear: the flow is affine within a triangle)."""
        if size == self.size:
            return self
        up = lambda x: F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # noqa: E731
        return Correspondence(up(self.flow), up(self.confidence).clamp(0, 1), up(self.ratio))

    def grid(self) -> torch.Tensor:
        """(B,S,S,2) grid_sample coordinates (align_corners=False) of each pixel's source position."""
        u = (torch.arange(self.size, dtype=self.flow.dtype, device=self.flow.device) + 0.5) / self.size
        centres = torch.stack(torch.meshgrid(u, u, indexing="ij")[::-1], 0)[None]  # (1,2,S,S) x, y
        return ((centres + self.flow) * 2 - 1).permute(0, 2, 3, 1)


def _box_blur(x: torch.Tensor, radius: int, passes: int = 2) -> torch.Tensor:
    for _ in range(passes):
        x = F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    return x


def _max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Square max filter, separably (a 41 px square in two 41 px passes)."""
    x = F.max_pool2d(x, (1, 2 * radius + 1), stride=1, padding=(0, radius))
    return F.max_pool2d(x, (2 * radius + 1, 1), stride=1, padding=(radius, 0))


@torch.no_grad()
def surface_correspondence(face: MorphableModel, source: FaceParams, edited: FaceParams, size: int,
                           projection: str = "orthographic") -> Correspondence:
    """Dense correspondence edited-crop pixel -> source-crop pixel through the fitted faces, at ``size``.

    On the edited face, a pixel's triangle and barycentrics name a surface point; its position on the source
    mesh, projected, is where the photo saw it, if the source's z-buffer shows it there (within
    DEPTH_TOLERANCE) and the triangle faced the camera. Off the edited face, a pixel keeps its position; it
    is trusted where the source face did not cover it either and no face within MOTION_BAND of it moved
    more than MOTION_LIMIT. ``source`` and ``edited`` are batches of B parameters fitted in the crop.
    """
    faces = face.faces
    geo_s, geo_e = face(source), face(edited)
    screen_s = project(geo_s.vertices, source, projection, size)
    screen_e = project(geo_e.vertices, edited, projection, size)
    perspective = projection == "perspective"
    frag_e = rasterize(screen_e, faces, size, size, perspective)
    frag_s = rasterize(screen_s, faces, size, size, perspective)
    b, n_pix = source.batch_size, size * size
    item = frag_e.pixel // n_pix
    rest = frag_e.pixel % n_pix
    centre = torch.stack([rest % size, rest // size], -1).to(screen_e.dtype) + 0.5

    # the same surface point on the source mesh (3D barycentrics: right for the pinhole too), projected
    point_s = frag_e.interpolate(geo_s.vertices)
    runs = torch.bincount(item, minlength=b).tolist()  # fragments are in pixel order: one run per item
    at_s = torch.cat([project(p[None], source[i:i + 1], projection, size)[0] for i, p in enumerate(point_s.split(runs))])
    zbuf = torch.full((b * n_pix,), float("-inf"), dtype=screen_s.dtype)
    zbuf[frag_s.pixel] = frag_s.interpolate(screen_s[..., 2:])[:, 0]
    ix, iy = at_s[:, 0].floor().long(), at_s[:, 1].floor().long()
    inside = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size)
    seen = zbuf[item * n_pix + iy.clamp(0, size - 1) * size + ix.clamp(0, size - 1)]
    tri = screen_s.reshape(-1, 3)[frag_e.vertex_index]  # (N,3,3) the triangle on the source screen
    area = (tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1]) - (tri[:, 1, 1] - tri[:, 0, 1]) * (tri[:, 2, 0] - tri[:, 0, 0])
    visible = inside & (area < 0) & (at_s[:, 2] <= seen + DEPTH_TOLERANCE)  # area < 0: front-facing (y down)

    # shading of that point before and after: normals of each mesh, each face's own light
    n_s = F.normalize(frag_e.interpolate(vertex_normals(geo_s.vertices, faces)), dim=-1, eps=1e-12)
    n_e = F.normalize(frag_e.interpolate(vertex_normals(geo_e.vertices, faces)), dim=-1, eps=1e-12)
    shade_s = sh_shading(n_s, source.light[item]).clamp_min(0)
    shade_e = sh_shading(n_e, edited.light[item]).clamp_min(0)
    ratio = ((shade_e + SHADING_FLOOR) / (shade_s + SHADING_FLOOR)).clamp(0, RATIO_LIMIT)

    move = (at_s[:, :2] - centre) / size
    flow = frag_e.to_image(move)
    on_e, on_s = frag_e.mask(), frag_s.mask()
    ratio_img = frag_e.to_image(ratio - 1) + 1
    moved = _max_filter(frag_e.to_image(move.norm(dim=-1, keepdim=True)), max(1, round(MOTION_BAND * size)))
    still = (1 - moved / MOTION_LIMIT).clamp(0, 1)
    confidence = frag_e.to_image(visible.to(flow.dtype)[:, None]) + (1 - on_e) * (1 - on_s) * still
    radius = max(1, round(SOFT_EDGE * size / 2))
    return Correspondence(flow, _box_blur(confidence, radius).clamp(0, 1), _box_blur(ratio_img, radius))


def warp(images: torch.Tensor, correspondence: Correspondence) -> torch.Tensor:
    """(B,C,S,S) source-crop images carried to the edited geometry (bicubic: keeps the fine detail bilinear
    would halve), at the correspondence's size."""
    return F.grid_sample(images, correspondence.grid().to(images), mode="bicubic", padding_mode="border",
                         align_corners=False)


@dataclass
class FullResolution:
    image: torch.Tensor  # (B,3,F,F) the edit at the photo's scale, [0,1]
    rig: torch.Tensor  # (B,3,F,F) the rig's output alone, resampled into the crop, [0,1]
    confidence: torch.Tensor  # (B,1,F,F) the weight the photo's detail got (0 outside the rig's frame)


@torch.no_grad()
def compose(crop: torch.Tensor, rig_source: torch.Tensor, rig_edited: torch.Tensor, correspondence: Correspondence,
            frame: tuple[float, float, float] = FULL_FRAME) -> FullResolution:
    """The edit at the crop's resolution: the rig's output plus the photo's detail, warped and re-shaded.

    ``crop`` (B,3,F,F) in [0,1] is the photo's crop at its own scale; ``rig_source`` and ``rig_edited``
    (B,3,s,s) in [-1,1] are what the rig saw and what it made, in its ``frame``; ``correspondence`` at any
    size (it is resized to F). Outside the rig's frame the crop is kept, through a soft edge."""
    size = crop.shape[-1]
    corr = correspondence.resized(size)
    rig, cover = rig_to_crop(torch.cat([rig_source, rig_edited], 1).to(crop) * 0.5 + 0.5, frame, size)
    low, high = rig.split(3, 1)
    detail = warp(crop - low, corr) * corr.ratio
    inside = high + corr.confidence * detail
    inside = cover * inside + (1 - cover) * crop  # the rig's frame may not cover the whole crop (StyleRig)
    return FullResolution(inside.clamp(0, 1), high.clamp(0, 1), corr.confidence * cover)
