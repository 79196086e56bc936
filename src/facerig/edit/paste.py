"""Put an edited crop back into the photo it came from (``facerig edit --paste-back``).

The edit lives in the rig's framing of the FFHQ-aligned crop (DiffusionRig: the crop itself; StyleRig: the
generator's framing, ``EditResult.frame``); the capture stored the aligned <- original affine transform. The
edit is upsampled to the capture size (bicubic: a 64 px model output stays soft), warped back with
``capture.align.unalign`` and blended over the photo through a feathered head mask: the union of the source
and edited renders' masks (ICT's head and neck, so the scalp too), grown to take in hair and ears and
feathered, inside a feathered square at the crop's edge. Everything outside that mask is the photo's own,
also where sampling from noise (no ``--invert``) painted another background.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from facerig.capture.align import unalign
from facerig.capture.load import load_photo
from facerig.edit.editor import FULL_FRAME

FEATHER = 0.1  # fraction of the crop side over which the blend ramps from photo to edit at the crop edge
MASK_GROW = 0.08  # fraction of the side the head mask grows by: hair and ears beyond the mesh
MASK_FEATHER = 0.05  # fraction of the side over which the head mask ramps down


def feathered_square(size: int, feather: float = FEATHER) -> torch.Tensor:
    """(1,1,S,S) weights: 1 inside, ramping linearly to 0 at the border over ``feather * size`` pixels."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    ramp = (torch.minimum(centres, size - centres) / (feather * size)).clamp(0, 1)
    return (ramp[:, None] * ramp[None, :])[None, None]


def head_mask(masks: list[torch.Tensor], grow: float = MASK_GROW, feather: float = MASK_FEATHER) -> torch.Tensor:
    """(1,1,S,S) blend weights from render masks (each (1,1,S,S)): their union, grown by ``grow * S`` pixels
    (max pooling) and feathered over about ``feather * S`` (two box blurs)."""
    union = torch.stack([m.detach().float().cpu().reshape(m.shape[-2:]) for m in masks]).amax(0)[None, None]
    size = union.shape[-1]
    r = max(1, round(grow * size))
    grown = F.max_pool2d(union, 2 * r + 1, stride=1, padding=r)
    k = max(1, round(feather * size / 2))
    for _ in range(2):
        grown = F.avg_pool2d(grown, 2 * k + 1, stride=1, padding=k, count_include_pad=False)
    return grown.clamp(0, 1)


def frame_transform(frame: tuple[float, float, float], size: int) -> torch.Tensor:
    """(3,3): aligned-crop pixels -> the framed output's pixels, both at ``size``; ``frame`` is where the
    crop lies in the output (centre x, centre y, side; units of the output's side)."""
    cx, cy, side = frame
    return torch.tensor([[side, 0.0, (cx - side / 2) * size], [0.0, side, (cy - side / 2) * size], [0.0, 0.0, 1.0]])


def paste_back(photo: np.ndarray, edited: torch.Tensor, transform: torch.Tensor, capture_size: int,
               feather: float = FEATHER, mask: torch.Tensor | None = None,
               frame: tuple[float, float, float] = FULL_FRAME) -> np.ndarray:
    """(H,W,3) uint8 ``photo`` with the (3,s,s) [-1,1] ``edited`` image blended in; ``transform`` (3,3) takes
    ``photo``'s pixels to the aligned crop's pixels at ``capture_size``, ``frame`` places the crop in
    ``edited``; ``mask`` (1,1,m,m) in ``edited``'s framing limits the blend (``head_mask``)."""
    def up(x: torch.Tensor, mode: str) -> torch.Tensor:
        return F.interpolate(x, size=(capture_size,) * 2, mode=mode, align_corners=False)

    crop = up((edited.detach().float().cpu()[None] + 1) / 2, "bicubic").clamp(0, 1)
    alpha = feathered_square(capture_size, feather)
    if mask is not None:
        alpha = alpha * up(mask.float().cpu(), "bilinear").clamp(0, 1)
    to_output = frame_transform(frame, capture_size) @ transform.float().cpu()
    layers = unalign(torch.cat([crop, alpha], 1), to_output[None], photo.shape[:2])
    alpha = layers[0, 3:].permute(1, 2, 0).numpy()
    blended = layers[0, :3].permute(1, 2, 0).numpy() * 255 * alpha + photo.astype(np.float32) * (1 - alpha)
    return np.clip(blended.round(), 0, 255).astype(np.uint8)


def paste_into_file(path, edited: torch.Tensor, transform: torch.Tensor, capture_size: int,
                    mask: torch.Tensor | None = None, frame: tuple[float, float, float] = FULL_FRAME) -> np.ndarray:
    """``paste_back`` into the photo at ``path`` as capture read it (EXIF-rotated; very large photos at the
    reduced size capture worked on, with the transform adjusted to it)."""
    photo = load_photo(path)
    to_working = transform.double() @ torch.from_numpy(photo.to_original())
    return paste_back(photo.image, edited, to_working.float(), capture_size, mask=mask, frame=frame)
