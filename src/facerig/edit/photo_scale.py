"""An edit at the photo's own resolution, for ``facerig edit`` and the UI: the rig's ``EditResult`` plus the
photo's pixels -> the edited FFHQ crop at the photo's scale (``facerig.edit.detail``), and that crop pasted
back into the whole photo at its own size.

    edit = at_photo_scale(photo, session, result, face)   # photo: the file or array the session captured
    edit.edited, edit.source                              # (3,F,F) in [0,1], F = the crop's side in the photo
    pasted = paste_full(edit)                             # (H,W,3) uint8, the photo with the edit in it
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facerig.capture.load import load_photo, upsample_small
from facerig.edit.detail import compose, full_crop, surface_correspondence
from facerig.edit.editor import EditResult, Session
from facerig.edit.spec import CAPTURE_SIZE
from facerig.face3d import MorphableModel


def photo_pixels(photo: str | Path | np.ndarray, capture_size: int = CAPTURE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The (H,W,3) uint8 pixels of ``photo`` as capture worked on them (a file: EXIF-rotated, very large ones
    reduced; an array: small ones upsampled as capture upsamples them) and the 3x3 map from them to the
    pixels a Session's transform starts from."""
    if isinstance(photo, np.ndarray):
        return upsample_small(photo, capture_size), np.eye(3)
    loaded = load_photo(photo)
    return loaded.image, loaded.to_original()


@dataclass
class PhotoScaleEdit:
    source: torch.Tensor  # (3,F,F) the photo's crop at its own scale, [0,1]
    edited: torch.Tensor  # (3,F,F) the edit at that scale, [0,1]
    rig: torch.Tensor  # (3,F,F) the rig's output alone, upsampled to F, [0,1]
    confidence: torch.Tensor  # (1,F,F) how much of the photo the edit kept, per pixel
    masks: torch.Tensor  # (1,2,S,S) the source and edited faces' render masks in the crop, at the capture size
    pixels: np.ndarray  # (H,W,3) uint8 the photo
    transform: np.ndarray  # (3,3) crop pixel at F <- ``pixels`` pixel
    seconds: float  # the detail step (cut, correspondence, composition): wall clock
    cpu_seconds: float  # and this process's CPU time (on a shared machine the wall clock counts waits too)

    @property
    def size(self) -> int:
        return self.edited.shape[-1]


def at_photo_scale(photo: str | Path | np.ndarray, session: Session, result: EditResult, face: MorphableModel,
                   size: int | None = None) -> PhotoScaleEdit:
    """``result`` (an edit of ``session``, which captured ``photo``) at the photo's own scale: the crop's
    side in the photo clamped to [256, 1024], or ``size``."""
    if session.transform is None:
        raise ValueError(f"{session.name}: the session has no transform to the photo; capture it from the photo")
    pixels, to_session = photo_pixels(photo)
    start, start_cpu = time.perf_counter(), time.process_time()
    to_crop = session.transform.detach().cpu().double().numpy() @ to_session
    crop, to_full = full_crop(pixels, to_crop, CAPTURE_SIZE, size)
    device = face.template.device  # the editor's: the rig's outputs are there already
    corr = surface_correspondence(face, result.source_params.detach().to(device), result.target_params.detach().to(device),
                                  CAPTURE_SIZE)
    out = compose(crop[None].to(device), result.source.detach().float()[None], result.edited.detach().float()[None],
                  corr, result.frame)
    out, corr = (type(x)(*(t.cpu() for t in vars(x).values())) for x in (out, corr))
    return PhotoScaleEdit(crop, out.image[0], out.rig[0], out.confidence[0], corr.masks, pixels, to_full,
                          time.perf_counter() - start, time.process_time() - start_cpu)


def paste_full(edit: PhotoScaleEdit) -> np.ndarray:
    """The whole photo at its own size with ``edit`` blended in through the feathered head mask of the
    source and edited faces (``paste.head_mask``); the rest stays the photo's."""
    from facerig.edit.paste import head_mask, paste_back

    mask = head_mask([edit.masks[:, :1], edit.masks[:, 1:]])
    return paste_back(edit.pixels, edit.edited * 2 - 1, torch.from_numpy(edit.transform).float(), edit.size, mask=mask)
