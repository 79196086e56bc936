"""An edit at the photo's own resolution, for ``facerig edit`` and the UI: the rig's ``EditResult`` plus the
photo's pixels -> the edited FFHQ crop at the photo's scale (``facerig.edit.detail``), and that crop pasted
back into the whole photo at its own size.

    edit = at_photo_scale(photo, session, result, face)  # photo: the file or array the session captured
    edit.edited, edit.source                             # (3,F,F) in [0,1], F: the crop's side in the photo
    pasted = paste_full(edit)                            # (H,W,3) uint8: the photo with the edit in it

A client that edits one photo many times (the UI) cuts its ``photo_crop`` once and passes that instead.
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
class PhotoCrop:
    """A session's face cut from its photo at the photo's own scale, once, for its edits at that scale."""

    image: torch.Tensor  # (3,F,F) uint8
    transform: torch.Tensor  # (3,3) float64: crop pixel at F <- photo pixel (of ``photo_pixels``)
    pixels: np.ndarray | None = None  # (H,W,3) uint8 the photo, where kept for paste-back


def photo_crop(photo: str | Path | np.ndarray, session: Session, size: int | None = None,
               keep_pixels: bool = True) -> PhotoCrop:
    """The FFHQ crop of ``session``'s face (captured from ``photo``) at the photo's scale: the crop's side
    in the photo clamped to [256, 1024], or ``size``."""
    if session.transform is None:
        raise ValueError(f"{session.name}: the session has no transform to the photo; capture it from the photo")
    pixels, to_session = photo_pixels(photo)
    crop, to_full = full_crop(pixels, session.transform.detach().cpu().double().numpy() @ to_session, CAPTURE_SIZE, size)
    return PhotoCrop((crop * 255).round().to(torch.uint8), torch.from_numpy(to_full), pixels if keep_pixels else None)


@dataclass
class PhotoScaleEdit:
    source: torch.Tensor  # (3,F,F) the photo's crop at its own scale, [0,1]
    edited: torch.Tensor  # (3,F,F) the edit at that scale, [0,1]
    rig: torch.Tensor  # (3,F,F) the rig's output alone, upsampled to F, [0,1]
    confidence: torch.Tensor  # (1,F,F) how much of the photo the edit kept, per pixel
    masks: torch.Tensor  # (1,2,S,S) the source and edited faces' render masks in the crop, at the capture size
    crop: PhotoCrop
    seconds: float  # the detail step (correspondence, composition; and the cut when given a photo): wall clock
    cpu_seconds: float  # and this process's CPU time (on a shared machine the wall clock counts waits too)

    @property
    def size(self) -> int:
        return self.edited.shape[-1]


def at_photo_scale(photo: PhotoCrop | str | Path | np.ndarray, session: Session, result: EditResult,
                   face: MorphableModel) -> PhotoScaleEdit:
    """``result`` (an edit of ``session``) at the photo's own scale; ``photo`` is the file or array the
    session captured, or its ``photo_crop``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    crop = photo if isinstance(photo, PhotoCrop) else photo_crop(photo, session)
    device = face.template.device  # the editor's: the rig's outputs are there already
    corr = surface_correspondence(face, result.source_params.detach().to(device), result.target_params.detach().to(device),
                                  CAPTURE_SIZE)
    source = crop.image.to(device).float()[None] / 255
    out = compose(source, result.source.detach().float()[None], result.edited.detach().float()[None], corr, result.frame)
    out, corr = (type(x)(*(t.cpu() for t in vars(x).values())) for x in (out, corr))
    return PhotoScaleEdit(source[0].cpu(), out.image[0], out.rig[0], out.confidence[0], corr.masks, crop,
                          time.perf_counter() - start, time.process_time() - start_cpu)


def paste_full(edit: PhotoScaleEdit) -> np.ndarray:
    """The whole photo at its own size with ``edit`` blended in through the feathered head mask of the
    source and edited faces (``paste.head_mask``); the rest stays the photo's."""
    from facerig.edit.paste import head_mask, paste_back

    if edit.crop.pixels is None:
        raise ValueError("this edit's photo crop was made without the photo's pixels (keep_pixels=False)")
    mask = head_mask([edit.masks[:, :1], edit.masks[:, 1:]])
    return paste_back(edit.crop.pixels, edit.edited * 2 - 1, edit.crop.transform.float(), edit.size, mask=mask)
