"""Single-photo capture: a photo file or an image array -> its FFHQ-aligned face and fitted 3D parameters.

    capture = PhotoCapture(face_model, device)     # the fitter (and its face model) is loaded once
    captured = capture("photo.jpg")                  # or an (H,W,3) uint8 array -> CapturedFace
    faces, found, fit = capture.many(images)         # generated images, one batched fit; faceless ones skipped

Edit sessions (``facerig.edit``), the UI, edit accuracy's re-capture and StyleRig's training data all
capture through this; the batch job (``facerig.capture.pipeline``) shares its detection and fitting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facerig.capture.align import AlignedFace, align_face
from facerig.capture.detect import Face, detect_faces
from facerig.capture.load import CaptureError, NoFaceFound, Photo, load_photo, upsample_small

CAPTURE_SIZE = 256
MIN_SIZE = 32  # smallest aligned crop: below it the 68 landmarks crowd into a few pixels
MAX_UPSAMPLE = 4  # dlib doubles the photo per step: 4 is 256x the pixels, already slower than useful
UPSAMPLE = 1  # dlib detector upsampling; 1 finds faces down to ~40 px
DETECT_MAX_SIDE = 1024  # the detector runs on a copy no larger than this
LOAD_MAX_SIDE = 4096  # photos are decoded/downscaled to this before anything else


def align_photo(photo: Photo, size: int, all_faces: bool = False, upsample: int = UPSAMPLE,
                detect_max_side: int = DETECT_MAX_SIDE) -> tuple[list[Face], list[AlignedFace]]:
    """A loaded photo's detected faces (largest first) and the aligned crops of the largest, or of every one
    with ``all_faces``. Transforms and landmarks refer to the original photo's pixels."""
    faces = detect_faces(photo.image, upsample=upsample, max_side=detect_max_side)
    if not faces:
        raise NoFaceFound(photo.path, "no face found")
    to_original = photo.to_original()
    # dlib gives integer pixel indices; +0.5 moves them to the pixel-centre convention
    return faces, [align_face(photo.image, face.landmarks + 0.5, size, to_original)
                   for face in (faces if all_faces else faces[:1])]


def align_image(image: np.ndarray, size: int, name: str = "image") -> AlignedFace:
    """Detect and align an in-memory (H,W,3) uint8 RGB image's largest face at ``size``.

    Small images (a 64 px model output, say) are upsampled first so the detector finds the face; the
    transform then maps the upsampled image's pixels."""
    image = upsample_small(image, size)
    faces = detect_faces(image)
    if not faces:
        raise NoFaceFound(name, "no face found")
    return align_face(image, faces[0].landmarks + 0.5, size)


def stack_faces(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Aligned crops (anything with ``image`` (S,S,3) uint8 and ``landmarks`` (68,2)) as uint8 (B,3,S,S)
    and float [0,1] tensors, and their landmarks (B,68,2)."""
    image_u8 = torch.from_numpy(np.stack([it.image for it in items])).permute(0, 3, 1, 2).contiguous()
    landmarks = torch.from_numpy(np.stack([it.landmarks for it in items])).float()
    return image_u8, image_u8.float().div(255.0), landmarks


class ModelFitter:
    """``facerig.capture.fit.fit`` with ``model``, or the default face model loaded on first use; one
    instance keeps its model across calls."""

    def __init__(self, size: int, device: str | torch.device, model=None):
        self.size = size
        self.device = torch.device(device)
        self.model = model.to(self.device) if model is not None else None

    def __call__(self, images: torch.Tensor, landmarks: torch.Tensor, album: bool):
        from facerig.capture.fit import FitConfig, fit
        from facerig.face3d import load_model

        if self.model is None:
            self.model = load_model().to(self.device)
        return fit(images, landmarks, self.model, FitConfig(image_size=self.size, album=album))

    def fit_items(self, items: list, album: bool = False):
        """One batched fit of aligned crops (see ``stack_faces``); one person's if ``album``."""
        _, images, landmarks = stack_faces(items)
        return self(images.to(self.device), landmarks.to(self.device), album)


@dataclass
class CapturedFace:
    name: str
    aligned: AlignedFace  # image (S,S,3) uint8, transform (3,3) aligned <- photo pixels, landmarks (68,2)
    fit: object  # facerig.capture.fit.FitResult, batch of one

    @property
    def params(self):
        """The fitted FaceParams (batch of one)."""
        return self.fit.params


class PhotoCapture:
    """Captures single photos with one face model and fitter (loaded once), as the batch job does."""

    def __init__(self, face=None, device: str | torch.device = "cpu", size: int = CAPTURE_SIZE):
        self.fitter = ModelFitter(size, device, face)

    @property
    def size(self) -> int:
        return self.fitter.size

    def __call__(self, photo: str | Path | np.ndarray, name: str | None = None) -> CapturedFace:
        """A photo file (its largest face; transform from the original photo's pixels) or an (H,W,3) uint8
        RGB array -> CapturedFace; a CaptureError (a ValueError naming the photo and the reason) when it
        cannot be read or has no face."""
        if isinstance(photo, np.ndarray):
            name = name or "image"
            aligned = align_image(photo, self.size, name)
        else:
            path = Path(photo)
            name = name or path.stem
            aligned = align_photo(load_photo(path, max_side=LOAD_MAX_SIDE), self.size)[1][0]
        return CapturedFace(name, aligned, self.fitter.fit_items([aligned]))

    def many(self, images: np.ndarray) -> tuple[list[AlignedFace], np.ndarray, object | None]:
        """(B,S,S,3) uint8 images (a generator's samples) -> the aligned faces, which images had one (dlib),
        and one batched fit of those (None when none had)."""
        items, found = [], np.zeros(len(images), dtype=bool)
        for i, image in enumerate(images):
            try:
                items.append(align_image(image, self.size, f"image {i}"))
                found[i] = True
            except CaptureError:
                pass
        return items, found, (self.fitter.fit_items(items) if items else None)
