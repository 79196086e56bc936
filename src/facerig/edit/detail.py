"""Edits at the photo's own resolution: the rig paints the change at its size, the photo keeps its detail.

    P    the photo's FFHQ crop at its own scale, F px (``full_crop``: capture's transform, rescaled)
    S, E what the rig saw and what it made, s px in its framing; up / down resample between the two
    X    c * r * warp(P) + (1 - c) * up(E): the photo carried to the edited face and re-shaded, where trusted
    out  X + up(E - S + down(P) - down(X)): X's detail above the rig's resolution, the rig's change below it

``warp`` follows the face: the rasteriser gives, per edited pixel, the triangle and barycentrics it sees,
which name the same surface point on the source mesh, hence where the photo saw it. ``r`` re-shades (edited
over source SH shading at that point). ``c`` fades the photo out where the correspondence does not hold:
surface the source did not see (turned towards the camera, behind the nose), background the source face
covered (behind a turned head, an opened mouth), background near a face that moved (hair moves with the
head); there the upsampled rig output stands alone. The detail is taken after warping (X - up(down(X))), so
a silhouette's edge stays at the silhouette instead of moving with the surface. A no-edit whose rig output
equals its input (E = S) returns P exactly. Rig-agnostic: the rig's framing of the crop
(``EditResult.frame``) is all it needs; outside that framing the photo is kept.

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
SOFT_EDGE = 0.01  # fraction of the side over which the confidence ramps (a tent)
HOLE_RADIUS = 0.06  # fraction of the side: the neighbourhood whose face flow a hole (eye, mouth) takes
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


def cubic_resampling(coords: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size) weights of bicubic interpolation (PyTorch's, A = -0.75, edge-clamped taps) of a ``size``
    px signal at ``coords`` (N,) in unit coordinates (0 and 1 are the outer pixel edges)."""
    a = -0.75
    x = coords.to(torch.float64) * size - 0.5
    i0 = x.floor()
    t = (x - i0)[:, None] - torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)  # distance to each tap
    d = t.abs()
    w = torch.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a)
    w = torch.where(d < 2, w, torch.zeros_like(w))
    taps = (i0[:, None] + torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)).clamp(0, size - 1).long()
    return torch.zeros(len(coords), size, dtype=torch.float64).scatter_add_(1, taps, w)


def box_resampling(coords: torch.Tensor, width: float, size: int) -> torch.Tensor:
    """(N, size) weights averaging a ``size`` px signal over N footprints centred at ``coords`` (N,) and
    ``width`` wide (unit coordinates): area resampling. A footprint off the signal takes its nearest pixel."""
    lo, hi = (coords.to(torch.float64)[:, None] + torch.tensor([-0.5, 0.5], dtype=torch.float64) * width).mul(size).unbind(1)
    j = torch.arange(size, dtype=torch.float64)
    w = (torch.minimum(hi[:, None], j + 1) - torch.maximum(lo[:, None], j)).clamp_min(0)
    empty = w.sum(1) == 0
    w[empty, ((lo[empty] + hi[empty]) / 2).floor().clamp(0, size - 1).long()] = 1.0
    return w / w.sum(1, keepdim=True)


@dataclass
class Framing:
    """Separable resampling between the crop at F px and the rig's framing of it at s px."""

    up_rows: torch.Tensor  # (F,s) bicubic
    up_cols: torch.Tensor  # (F,s)
    down_rows: torch.Tensor  # (s,F) area
    down_cols: torch.Tensor  # (s,F)
    cover: torch.Tensor  # (1,1,F,F) in [0,1]: 1 where the rig's frame covers the crop, ramping to 0 at its edge

    @classmethod
    def build(cls, frame: tuple[float, float, float], rig_size: int, size: int) -> "Framing":
        """``frame`` places the crop in the rig's image (centre x, centre y, side; units of its side): crop unit
        coordinate u sits at (u - 0.5) * side + centre there."""
        cx, cy, side = frame
        u = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        g = (torch.arange(rig_size, dtype=torch.float64) + 0.5) / rig_size
        gx, gy = (u - 0.5) * side + cx, (u - 0.5) * side + cy
        down = [box_resampling((g - c) / side + 0.5, 1 / (rig_size * side), size) for c in (cy, cx)]
        ramp = lambda v: (torch.minimum(v, 1 - v) / side / FRAME_FEATHER).clamp(0, 1)  # noqa: E731
        cover = ramp(gy)[:, None] * ramp(gx)[None, :] if tuple(frame) != FULL_FRAME else torch.ones(size, size, dtype=u.dtype)
        return cls(cubic_resampling(gy, rig_size), cubic_resampling(gx, rig_size), *down, cover[None, None])

    def up(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,s,s) rig-framed -> (B,C,F,F) crop; two matrix products (an order of magnitude faster than
        grid_sample at 1024 px)."""
        return self.up_rows.to(images) @ images @ self.up_cols.to(images).T

    def down(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,F,F) crop -> (B,C,s,s) rig-framed, averaging each rig pixel's footprint."""
        return self.down_rows.to(images) @ images @ self.down_cols.to(images).T


def flow_grid(flow: torch.Tensor, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
    """(B,h,w,2) grid_sample coordinates (align_corners=False) of the source positions of the pixels in
    ``rows`` x ``cols`` (all by default) of a (B,2,S,S) ``flow`` (source position minus pixel centre, in
    units of the side)."""
    size = flow.shape[-1]
    u = (torch.arange(size, dtype=flow.dtype, device=flow.device) + 0.5) / size
    centres = torch.stack(torch.meshgrid(u[rows], u[cols], indexing="ij")[::-1], 0)[None]  # (1,2,h,w) x, y
    return ((centres + flow[..., rows, cols]) * 2 - 1).permute(0, 2, 3, 1)


def warp(images: torch.Tensor, flow: torch.Tensor, mode: str = "bicubic") -> torch.Tensor:
    """(B,C,S,S) source-crop images carried along a (B,2,S,S) ``flow`` to the edited geometry (bicubic:
    keeps the fine detail bilinear would halve)."""
    return F.grid_sample(images, flow_grid(flow).to(images), mode=mode, padding_mode="border", align_corners=False)


@dataclass
class Correspondence:
    """Where each edited-crop pixel's content lies in the source crop, and how far to trust it."""

    flow: torch.Tensor  # (B,2,S,S) source position minus pixel centre, in units of the side (x, y)
    confidence: torch.Tensor  # (B,1,S,S) in [0,1]: weight of the photo's detail
    ratio: torch.Tensor  # (B,3,S,S) edited over source shading at the same surface point (1 off the face)
    masks: torch.Tensor  # (B,2,S,S) where the source and the edited face are (their render masks)

    @property
    def size(self) -> int:
        return self.flow.shape[-1]

    def resized(self, size: int) -> "Correspondence":
        """The same correspondence at ``size`` (bilinear: the flow is affine within a triangle)."""
        if size == self.size:
            return self
        both = F.interpolate(torch.cat([self.flow, self.confidence, self.ratio, self.masks], 1), size=(size, size),
                             mode="bilinear", align_corners=False)
        flow, confidence, ratio, masks = both.split([2, 1, 3, 2], 1)
        return Correspondence(flow, confidence.clamp(0, 1), ratio, masks)

    def grid(self, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        return flow_grid(self.flow, rows, cols)

    def moving_window(self, size: int) -> tuple[slice, slice] | None:
        """Rows and columns (at ``size``) bounding the pixels whose content moved; None when none did."""
        moving = (self.flow.abs().amax(1) * self.size > 1e-3).any(0)
        if not moving.any():
            return None
        k = size / self.size
        (r0, r1), (c0, c1) = ((int(i.min()), int(i.max()) + 1) for i in torch.nonzero(moving, as_tuple=True))
        bounds = [min(max(int(v), 0), size) for v in (r0 * k - 2 * k, r1 * k + 2 * k, c0 * k - 2 * k, c1 * k + 2 * k)]
        return slice(bounds[0], bounds[1]), slice(bounds[2], bounds[3])


def _box_sum_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sums over windows of 2 radius + 1 along ``dim`` (zero outside), from one cumulative sum."""
    n = x.shape[dim]
    c = torch.cumsum(x, dim)
    c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim)  # c[i] = sum of x[:i]
    hi = torch.arange(n, device=x.device).add(radius + 1).clamp(max=n)
    lo = torch.arange(n, device=x.device).sub(radius).clamp(min=0)
    return c.index_select(dim, hi) - c.index_select(dim, lo)


def _box_blur(x: torch.Tensor, radius: int, passes: int = 1) -> torch.Tensor:
    """Separable box mean over (2 radius + 1)^2 pixels, ``passes`` times (two: a tent); at the edges, the
    mean of what lies inside the image. Cumulative sums: the cost does not grow with the radius."""
    count = _box_sum_1d(_box_sum_1d(torch.ones_like(x[:1, :1]), radius, -1), radius, -2)
    for _ in range(passes):
        x = _box_sum_1d(_box_sum_1d(x, radius, -1), radius, -2) / count
    return x


def _max_filter(x: torch.Tensor, radius: int, cell: int = 4) -> torch.Tensor:
    """Max over a square of about (2 radius + 1)^2 pixels, on ``cell`` x ``cell`` blocks and interpolated back
    (the bands it draws are soft anyway, and max pooling costs grow with the window): (B,C,S,S) -> same."""
    coarse = F.max_pool2d(x, cell, ceil_mode=True)
    r = max(1, -(-radius // cell))
    coarse = F.max_pool2d(coarse, (1, 2 * r + 1), stride=1, padding=(0, r))
    coarse = F.max_pool2d(coarse, (2 * r + 1, 1), stride=1, padding=(r, 0))
    return F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def surface_correspondence(face: MorphableModel, source: FaceParams, edited: FaceParams, size: int,
                           projection: str = "orthographic") -> Correspondence:
    """Dense correspondence edited-crop pixel -> source-crop pixel through the fitted faces, at ``size``.

    On the edited face, a pixel's triangle and barycentrics name a surface point; its position on the source
    mesh, projected, is where the photo saw it, if the source's z-buffer shows it there (within
    DEPTH_TOLERANCE) and the triangle faced the camera. Off the edited face, a hole in the mesh (eye,
    mouth) moves with the face around it and open background keeps its position; either is trusted where the
    source face did not cover what it shows, open background only where no face within MOTION_BAND of it
    moved more than MOTION_LIMIT. ``source`` and ``edited`` are batches of B parameters fitted in the crop.
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
    zbuf = torch.full((b * n_pix,), float("-inf"), dtype=screen_s.dtype, device=screen_s.device)
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
    on_e, on_s = frag_e.mask(), frag_s.mask()
    flow = frag_e.to_image(move)
    # Holes in the mesh (eyes, mouth) are enclosed by it: they move with the face around them (the mean
    # flow of the face nearby). Open background keeps its place: beside a straight silhouette half the
    # neighbourhood is face, in an eye most of it.
    density = _box_blur(on_e, max(1, round(HOLE_RADIUS * size)))
    enclosed = ((density - 0.5) / 0.2).clamp(0, 1) * (1 - on_e)
    flow = flow + enclosed * _box_blur(flow, max(1, round(HOLE_RADIUS * size))) / density.clamp_min(1e-6)
    # off the face, trusted where the source face did not cover what the pixel shows, and, for open
    # background, where no face near it moved (hair moves with the head)
    uncovered = 1 - warp(on_s, flow, "bilinear")
    moved = _max_filter(frag_e.to_image(move.norm(dim=-1, keepdim=True)), max(1, round(MOTION_BAND * size)))
    still = (1 - moved / MOTION_LIMIT).clamp(0, 1)
    off_face = (1 - on_e) * uncovered * (enclosed + (1 - enclosed) * still)
    confidence = frag_e.to_image(visible.to(flow.dtype)[:, None]) + off_face
    ratio_img = frag_e.to_image(ratio - 1) + 1
    radius = max(1, round(SOFT_EDGE * size / 2))
    return Correspondence(flow, _box_blur(confidence, radius, 2).clamp(0, 1), _box_blur(ratio_img, radius, 2),
                          torch.cat([on_s, on_e], 1))


@dataclass
class FullResolution:
    image: torch.Tensor  # (B,3,F,F) the edit at the photo's scale, [0,1]
    rig: torch.Tensor  # (B,3,F,F) the rig's output alone, resampled into the crop, [0,1]
    confidence: torch.Tensor  # (B,1,F,F) the weight the photo got (0 outside the rig's frame)


@torch.no_grad()
def compose(crop: torch.Tensor, rig_source: torch.Tensor, rig_edited: torch.Tensor, correspondence: Correspondence,
            frame: tuple[float, float, float] = FULL_FRAME) -> FullResolution:
    """The edit at the crop's resolution: the rig's change, with the photo carried to the edited face above
    the rig's resolution (the module's formula).

    ``crop`` (B,3,F,F) in [0,1] is the photo's crop at its own scale; ``rig_source`` and ``rig_edited``
    (B,3,s,s) in [-1,1] are what the rig saw and what it made, in its ``frame``; ``correspondence`` at any
    size (it is resized to F). Outside the rig's frame the crop is kept, through a soft edge."""
    size = crop.shape[-1]
    framing = Framing.build(frame, rig_edited.shape[-1], size)
    corr = correspondence.resized(size)
    seen, made = (x.to(crop) * 0.5 + 0.5 for x in (rig_source, rig_edited))
    rig = framing.up(made)
    carried = crop
    window = correspondence.moving_window(size)
    if window is not None:  # a relight moves nothing: no resampling of the photo
        rows, cols = window
        carried = crop.clone()
        carried[..., rows, cols] = F.grid_sample(crop, corr.grid(rows, cols).to(crop), mode="bicubic",
                                                 padding_mode="border", align_corners=False)
    x = rig + corr.confidence * (corr.ratio * carried - rig)
    out = x + framing.up(made - seen + framing.down(crop) - framing.down(x))
    cover = framing.cover.to(crop)
    if tuple(frame) != FULL_FRAME:  # the rig's frame does not cover the whole crop (StyleRig): the photo there
        out = cover * out + (1 - cover) * crop
    return FullResolution(out.clamp(0, 1), rig.clamp(0, 1), corr.confidence * cover)
