"""Put an edited crop back into the photo it came from (``facerig edit --paste-back``).

The edit lives in the FFHQ-aligned crop; the capture stored the aligned <- original affine transform. The
crop is upsampled to the capture size (bicubic: a 64 px model output stays soft), warped back with
``capture.align.unalign`` and blended over the photo with a feathered square: the crop holds face, hair and
some background, and with ``--invert`` that background is the photo's own, so a soft edge hides the seam.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from facerig.capture.align import unalign
from facerig.capture.load import load_photo

FEATHER = 0.1  # fraction of the crop side over which the blend ramps from photo to edit


def feathered_square(size: int, feather: float = FEATHER) -> torch.Tensor:
    """(1,1,S,S) weights: 1 inside, ramping linearly to 0 at the border over ``feather * size`` pixels."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    ramp = (torch.minimum(centres, size - centres) / (feather * size)).clamp(0, 1)
    return (ramp[:, None] * ramp[None, :])[None, None]


def paste_back(photo: np.ndarray, edited: torch.Tensor, transform: torch.Tensor, capture_size: int,
               feather: float = FEATHER) -> np.ndarray:
    """(H,W,3) uint8 ``photo`` with the (3,s,s) [-1,1] ``edited`` crop blended in; ``transform`` (3,3) takes
    ``photo``'s pixels to the aligned crop's pixels at ``capture_size``."""
    crop = F.interpolate((edited.detach().float().cpu()[None] + 1) / 2, size=(capture_size,) * 2, mode="bicubic",
                         align_corners=False).clamp(0, 1)
    layers = unalign(torch.cat([crop, feathered_square(capture_size, feather)], 1), transform[None].cpu(),
                     photo.shape[:2])
    alpha = layers[0, 3:].permute(1, 2, 0).numpy()
    blended = layers[0, :3].permute(1, 2, 0).numpy() * 255 * alpha + photo.astype(np.float32) * (1 - alpha)
    return np.clip(blended.round(), 0, 255).astype(np.uint8)


def paste_into_file(path, edited: torch.Tensor, transform: torch.Tensor, capture_size: int) -> np.ndarray:
    """``paste_back`` into the photo at ``path`` as capture read it (EXIF-rotated; very large photos at the
    reduced size capture worked on, with the transform adjusted to it)."""
    photo = load_photo(path)
    to_working = transform.double() @ torch.from_numpy(photo.to_original())
    return paste_back(photo.image, edited, to_working.float(), capture_size)
