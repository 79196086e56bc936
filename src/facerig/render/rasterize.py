"""A pure-PyTorch triangle rasterizer (CPU and CUDA, batched, no compiled extension).

Like nvdiffrast, visibility (which triangle covers a pixel) is computed without gradients; barycentric
coordinates are then recomputed differentiably from the screen-space vertices, so gradients reach vertex
positions, and through attribute interpolation albedo, light and camera.

Screen space: x to the right and y down in pixels, pixel (row i, col j) covering [j, j+1) x [i, i+1) and
sampled at its centre (j + 0.5, i + 0.5); depth grows away from the camera. Fragments are kept as a flat
list of covered pixels, so work and memory scale with the face's area, not the image's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Candidate (pixel, triangle) pairs tested at once; bounds peak memory for large triangles.
MAX_CANDIDATES = 1 << 22


@dataclass
class Fragments:
    batch_size: int
    height: int
    width: int
    pixel: torch.Tensor  # (N,) flat index b*H*W + i*W + j of each covered pixel
    face: torch.Tensor  # (N,) index of the visible triangle there
    bary: torch.Tensor  # (N,3) barycentric coordinates (perspective-correct when rasterized so), differentiable
    vertex_index: torch.Tensor  # (N,3) flat index b*V + v of the visible triangle's corners

    def to_image(self, values: torch.Tensor) -> torch.Tensor:
        """Per-fragment values (N,C) -> (B,C,H,W) image with 0 background (differentiable)."""
        b, h, w = self.batch_size, self.height, self.width
        out = values.new_zeros(b * h * w, values.shape[1])
        out = out.index_put((self.pixel,), values)
        return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def mask(self) -> torch.Tensor:
        m = torch.zeros(self.batch_size * self.height * self.width, device=self.pixel.device)
        m[self.pixel] = 1.0
        return m.reshape(self.batch_size, 1, self.height, self.width)

    def interpolate(self, vertex_values: torch.Tensor) -> torch.Tensor:
        """Per-vertex values (B,V,C) of the rasterized mesh -> per-fragment (N,C)."""
        c = vertex_values.shape[-1]
        corners = vertex_values.reshape(-1, c).index_select(0, self.vertex_index.reshape(-1)).reshape(-1, 3, c)
        return torch.einsum("nkc,nk->nc", corners, self.bary)

    def interpolate_corners(self, corner_values: torch.Tensor) -> torch.Tensor:
        """Per-triangle-corner values (F,3,C) shared by the batch (e.g. UVs) -> per-fragment (N,C)."""
        return (corner_values[self.face] * self.bary[..., None]).sum(1)


def _edge(ax, ay, bx, by, px, py):
    """Twice the signed area of (a, b, p); positive when p is left of a->b in a y-down frame."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def _visible_faces(screen: torch.Tensor, faces: torch.Tensor, height: int, width: int, perspective: bool, cull_backfaces: bool):
    """Z-buffer visibility without gradients: flat covered-pixel indices and their nearest triangle."""
    bsz = screen.shape[0]
    tri = screen.index_select(1, faces.reshape(-1)).reshape(bsz, -1, 3, 3)  # (B,F,3,3)
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area = _edge(x[..., 0], y[..., 0], x[..., 1], y[..., 1], x[..., 2], y[..., 2])
    # Counter-clockwise triangles in the y-up world are clockwise (area < 0) on the y-down screen.
    valid = area < 0 if cull_backfaces else area != 0
    if perspective:
        valid &= (z > 1e-6).all(-1)
    x0 = torch.ceil(x.amin(-1) - 0.5).clamp(min=0)
    x1 = torch.floor(x.amax(-1) - 0.5).clamp(max=width - 1)
    y0 = torch.ceil(y.amin(-1) - 0.5).clamp(min=0)
    y1 = torch.floor(y.amax(-1) - 0.5).clamp(max=height - 1)
    valid &= (x1 >= x0) & (y1 >= y0)
    bi, fi = valid.nonzero(as_tuple=True)
    empty = torch.zeros(0, dtype=torch.long, device=screen.device)
    if bi.numel() == 0:
        return empty, empty
    flat = bi * faces.shape[0] + fi
    X, Y, Z = (t.reshape(-1, 3)[flat] for t in (x, y, z))
    A = area.reshape(-1)[flat]
    # Barycentrics and depth are affine in screen space (1/depth for the pinhole): w = a*px + b*py + c.
    # Per triangle: w0 and w1 from the edges opposite vertices 0 and 1, and depth as z2 + w0 dz0 + w1 dz1.
    zz = 1 / Z if perspective else Z
    coef = torch.stack([
        -(Y[:, 2] - Y[:, 1]) / A, (X[:, 2] - X[:, 1]) / A, ((Y[:, 2] - Y[:, 1]) * X[:, 1] - (X[:, 2] - X[:, 1]) * Y[:, 1]) / A,
        -(Y[:, 0] - Y[:, 2]) / A, (X[:, 0] - X[:, 2]) / A, ((Y[:, 0] - Y[:, 2]) * X[:, 2] - (X[:, 0] - X[:, 2]) * Y[:, 2]) / A,
        zz[:, 2], zz[:, 0] - zz[:, 2], zz[:, 1] - zz[:, 2],
    ], 1)
    box = torch.stack([t.reshape(-1)[flat] for t in (x0, y0, x1, y1)], 1).long()
    bw = box[:, 2] - box[:, 0] + 1
    count = bw * (box[:, 3] - box[:, 1] + 1)
    # Per triangle, the integers the pixel loop needs, gathered together: x0, y0, width, image base, face.
    ints = torch.stack([box[:, 0], box[:, 1], bw, bi * (height * width), fi], 1)
    ends = torch.cumsum(count, 0)
    pix_all, key_all, face_all = [], [], []
    # Enumerate every pixel of every bounding box exactly, in chunks of at most MAX_CANDIDATES.
    lo = 0
    while lo < count.numel():
        base = ends[lo - 1] if lo else ends.new_zeros(())
        hi = max(int(torch.searchsorted(ends, base + MAX_CANDIDATES, right=True)), lo + 1)
        n = count[lo:hi]
        t = torch.repeat_interleave(torch.arange(lo, hi, device=screen.device), n)
        # index_select: much cheaper than advanced indexing for these row gathers on CPU
        local = torch.arange(int(n.sum()), device=screen.device) - ((ends - count).index_select(0, t) - base)
        tx0, ty0, tw, tbase, tface = ints.index_select(0, t).unbind(1)
        px = tx0 + local % tw
        py = ty0 + local // tw
        c = coef.index_select(0, t)
        cx, cy = px.to(screen.dtype) + 0.5, py.to(screen.dtype) + 0.5
        w0 = c[:, 0] * cx + c[:, 1] * cy + c[:, 2]
        w1 = c[:, 3] * cx + c[:, 4] * cy + c[:, 5]
        inside = (w0 >= 0) & (w1 >= 0) & (w0 + w1 <= 1)
        key = c[:, 6] + w0 * c[:, 7] + w1 * c[:, 8]
        if perspective:
            key = -key  # nearer = larger 1/depth
        pix_all.append((tbase + py * width + px)[inside])
        key_all.append(key[inside])
        face_all.append(tface[inside])
        lo = hi
    pix, key, face = torch.cat(pix_all), torch.cat(key_all), torch.cat(face_all)
    zbuf = torch.full((bsz * height * width,), float("inf"), dtype=key.dtype, device=key.device)
    zbuf.scatter_reduce_(0, pix, key, reduce="amin")
    nearest = key <= zbuf[pix]
    winner = torch.full((bsz * height * width,), -1, dtype=torch.long, device=key.device)
    winner.scatter_reduce_(0, pix[nearest], face[nearest], reduce="amax")  # ties: one deterministic pick
    covered = (winner >= 0).nonzero(as_tuple=True)[0]
    return covered, winner[covered]


def rasterize(
    screen: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    perspective: bool = False,
    cull_backfaces: bool = True,
) -> Fragments:
    """Rasterize a batch of meshes sharing ``faces`` (F,3); ``screen`` (B,V,3) holds pixel x, y and depth."""
    with torch.no_grad():
        pixel, face = _visible_faces(screen.detach(), faces, height, width, perspective, cull_backfaces)
    b = pixel // (height * width)
    rest = pixel % (height * width)
    cx = (rest % width).to(screen.dtype) + 0.5
    cy = (rest // width).to(screen.dtype) + 0.5
    vertex_index = b[:, None] * screen.shape[1] + faces[face]
    tri = screen.reshape(-1, 3).index_select(0, vertex_index.reshape(-1)).reshape(-1, 3, 3)  # differentiable
    X, Y = tri[..., 0], tri[..., 1]
    area = _edge(X[:, 0], Y[:, 0], X[:, 1], Y[:, 1], X[:, 2], Y[:, 2])
    w0 = _edge(X[:, 1], Y[:, 1], X[:, 2], Y[:, 2], cx, cy) / area
    w1 = _edge(X[:, 2], Y[:, 2], X[:, 0], Y[:, 0], cx, cy) / area
    bary = torch.stack([w0, w1, 1 - w0 - w1], -1)
    if perspective:
        w = bary / tri[..., 2]
        bary = w / w.sum(-1, keepdim=True)
    return Fragments(screen.shape[0], height, width, pixel, face, bary, vertex_index)
