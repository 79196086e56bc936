"""FFHQ-style face alignment: the oriented square crop of FFHQ's ``recreate_aligned_images`` (also
DiffusionRig's ``scripts/align.py``), done as one affine warp with an exact, invertible transform.

Coordinates are continuous pixel coordinates: pixel (row i, col j) covers [j, j+1) x [i, i+1), so the
centre of the top-left pixel is (0.5, 0.5). dlib's integer landmark indices therefore need +0.5 (FFHQ's
``quad + 0.5`` before PIL's QUAD transform is the same shift). A transform is a 3x3 homogeneous matrix
``dst <- src`` acting on column vectors (x, y, 1).

Unlike FFHQ, photos are not shrunk-then-resized. Out-of-photo regions are padded as FFHQ pads them:
reflection, blended towards a blurred copy and then the median colour the further out it lies, so no
mirrored eye or face shows in the crop. A crop much smaller than its source region is box-reduced by an
integer factor first (folded into the transform), so bilinear sampling does not alias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from facerig.face3d.camera import ffhq_centre


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ crop quad (4,2) from 68 iBUG landmarks: corners top-left, bottom-left, bottom-right, top-right."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"ffhq_quad needs (68,2) landmarks, got {lm.shape}")
    eye_left = lm[36:42].mean(0)
    eye_right = lm[42:48].mean(0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    # x: rightward half-side, tilted by the average of the eye line and the perpendicular of eye->mouth
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = ffhq_centre(lm)
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def quad_transform(quad: np.ndarray, size: int) -> np.ndarray:
    """The similarity (3x3) taking ``quad``'s corners to the corners of a ``size`` x ``size`` crop."""
    tl, bl, _, tr = np.asarray(quad, dtype=np.float64)
    # source frame spanned by the quad's edges; the crop frame is size * identity
    src = np.array([[tr[0] - tl[0], bl[0] - tl[0], tl[0]], [tr[1] - tl[1], bl[1] - tl[1], tl[1]], [0.0, 0.0, 1.0]])
    return np.diag([size, size, 1.0]) @ np.linalg.inv(src)


def align_transform(landmarks: np.ndarray, size: int) -> np.ndarray:
    """aligned-pixel <- original-pixel 3x3 transform for continuous-coordinate ``landmarks`` (68,2)."""
    return quad_transform(ffhq_quad(landmarks), size)


def transform_points(transform: np.ndarray | torch.Tensor, points: np.ndarray | torch.Tensor):
    """Apply a 3x3 (or batched (B,3,3)) homogeneous transform to (...,N,2) points."""
    return points @ transform[..., :2, :2].swapaxes(-1, -2) + transform[..., None, :2, 2]


def warp_affine(images: torch.Tensor, transform: torch.Tensor, size: tuple[int, int], padding_mode: str = "reflection") -> torch.Tensor:
    """Warp (B,C,H,W) float ``images`` into (B,C,h,w) by the (B,3,3) ``dst <- src`` affine ``transform``.

    Bilinear; ``padding_mode`` is grid_sample's ("zeros", "border" for edge, "reflection").
    """
    b, _, h_src, w_src = images.shape
    h, w = size
    inv = torch.linalg.inv(transform.to(torch.float64))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    dst = torch.stack([xs, ys], -1).reshape(1, -1, 2).to(inv.device)
    src = transform_points(inv, dst)  # (B,h*w,2) continuous source coordinates
    # grid_sample with align_corners=False puts -1 and +1 on the outer pixel edges, i.e. at 0 and W
    grid = src / torch.tensor([w_src, h_src], dtype=torch.float64, device=inv.device) * 2.0 - 1.0
    grid = grid.reshape(b, h, w, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def soften_padding(region: np.ndarray, region_to_image: np.ndarray, photo_size: tuple[int, int], corners: np.ndarray) -> np.ndarray:
    """FFHQ's ``recreate_aligned_images`` treatment of a reflection-padded (H,W,3) uint8 ``region``: blend
    towards a Gaussian-blurred copy (sigma 0.02 quad sides) from just inside each photo edge, then towards
    the median colour, fully at FFHQ's padded border (the quad's overhang plus 0.1, at least 0.3 quad sides).

    ``region_to_image`` (3x3, scale and shift) maps region pixels to photo pixels; ``corners`` (4,2) are the
    crop quad's corners in the photo (top-left, bottom-left, bottom-right, top-right); ``photo_size`` (W,H).
    """
    w, h = photo_size
    k, (x0, y0) = region_to_image[0, 0], region_to_image[:2, 2]
    qsize = float(np.hypot(*(corners[3] - corners[0])))
    lo, hi = corners.min(0), corners.max(0)
    ramp = np.maximum(np.maximum([-lo[0], -lo[1], hi[0] - w, hi[1] - h], 0) + 0.1 * qsize, 0.3 * qsize)  # left, top, right, bottom
    x = (np.arange(region.shape[1]) + 0.5) * k + x0
    y = (np.arange(region.shape[0]) + 0.5) * k + y0
    # distance outside the nearest-violated photo edge in ramp widths: 0 on the edge, 1 at the padded border
    mask = np.maximum(np.maximum(-x / ramp[0], (x - w) / ramp[2])[None, :], np.maximum(-y / ramp[1], (y - h) / ramp[3])[:, None])[..., None]
    img = region.astype(np.float32)
    blurred = np.asarray(Image.fromarray(region).filter(ImageFilter.GaussianBlur(float(0.02 * qsize / k))), np.float32)
    img += (blurred - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@dataclass
class AlignedFace:
    image: np.ndarray  # (S,S,3) uint8 crop
    transform: np.ndarray  # (3,3) aligned-pixel <- original-pixel
    landmarks: np.ndarray  # (68,2) continuous coordinates in the crop


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 256, to_original: np.ndarray | None = None) -> AlignedFace:
    """Cut the FFHQ crop of the face with ``landmarks`` out of an (H,W,3) uint8 ``image``.

    ``landmarks`` are continuous coordinates in ``image``. ``to_original`` (3x3) maps ``image`` pixels to
    the original photo's, when ``image`` is a downscaled copy; the returned transform and landmarks then
    refer to the original photo, as the pipeline stores them.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    crop_from_image = align_transform(landmarks, size)
    crop_u8 = cut_crop(image, crop_from_image, size)
    transform = crop_from_image if to_original is None else crop_from_image @ np.linalg.inv(to_original)
    return AlignedFace(crop_u8, transform, transform_points(crop_from_image, landmarks))


def cut_crop(image: np.ndarray, crop_from_image: np.ndarray, size: int) -> np.ndarray:
    """The (size,size,3) uint8 crop of an (H,W,3) uint8 ``image`` through the 3x3 similarity
    ``crop_from_image`` (crop pixel <- image pixel): box-reduced first where it shrinks, padded as FFHQ pads
    where it leaves the photo. ``align_face`` cuts with it, and so does an edit at the photo's own scale."""
    image_from_crop = np.linalg.inv(crop_from_image)
    # source pixels per crop pixel, rounded down: box-reducing by it leaves >= 1 so bilinear does not alias
    k = max(1, int(np.linalg.norm(image_from_crop[:2, 0])))
    h, w = image.shape[:2]
    corners = transform_points(image_from_crop, np.array([[0.0, 0.0], [0.0, size], [size, size], [size, 0.0]]))
    # only the photo under the crop (plus a bilinear margin) is touched; what lies outside it is padded
    x0, y0 = np.floor(corners.min(0)).astype(int) - 2 * k
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2 * k
    (cx0, cx1), (cy0, cy1) = np.clip([x0, x1], 0, w), np.clip([y0, y1], 0, h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"the face's crop ({x0},{y0})-({x1},{y1}) lies outside the {w}x{h} image")
    region = image[cy0:cy1, cx0:cx1]
    pad = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0))
    padded = any(p for p in pad[0] + pad[1])
    if padded:
        region = np.pad(region, pad, mode="symmetric")
    if k > 1:
        region = np.asarray(Image.fromarray(region).reduce(k))
    region_to_image = np.array([[k, 0, x0], [0, k, y0], [0, 0, 1]], dtype=np.float64)
    if padded:
        region = soften_padding(region, region_to_image, (w, h), corners)
    # PIL's AFFINE takes the crop -> source map in the same continuous convention (it samples at pixel
    # centres, +0.5); single-threaded C, which beats torch's threads on these small images
    region_from_crop = np.linalg.inv(crop_from_image @ region_to_image)
    crop = Image.fromarray(np.ascontiguousarray(region)).transform((size, size), Image.Transform.AFFINE, tuple(region_from_crop[:2].reshape(-1)), Image.Resampling.BILINEAR)
    return np.array(crop)


def unalign(buffers: torch.Tensor, transform: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Warp (B,C,S,S) buffers rendered in the aligned crop back into (B,C,H,W) original-photo pixels.

    ``transform`` (B,3,3) is the stored aligned <- original transform; outside the crop is 0, so warping a
    mask of ones alongside gives the region the crop covers. Only the window under the crops is sampled,
    so a small face in a large photo costs little.
    """
    b, c, s, _ = buffers.shape
    h, w = size
    transform = transform.to(torch.float64).cpu()
    inv = torch.linalg.inv(transform)
    square = torch.tensor([[0.0, 0.0], [0.0, s], [s, s], [s, 0.0]], dtype=torch.float64)
    corners = transform_points(inv, square).reshape(-1, 2)
    x0, y0 = (corners.min(0).values.floor().long() - 1).clamp(min=0).tolist()
    x1, y1 = (corners.max(0).values.ceil().long() + 1).tolist()
    x1, y1 = min(max(x1, x0 + 1), w), min(max(y1, y0 + 1), h)
    out = buffers.new_zeros(b, c, h, w)
    if x0 >= w or y0 >= h:
        return out
    window_from_crop = torch.tensor([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1.0]], dtype=torch.float64) @ inv
    out[:, :, y0:y1, x0:x1] = warp_affine(buffers, window_from_crop.to(buffers.device), (y1 - y0, x1 - x0), "zeros")
    return out
