"""Face detection, 68 landmarks and the 128-D face embedding, all from dlib's pretrained models.

The model files ship in the ``face-recognition-models`` wheel; they are located without importing that
package, whose ``__init__`` needs ``pkg_resources`` (gone from recent setuptools).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image


def _model_file(name: str) -> str:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face-recognition-models is not installed (pip install face-recognition-models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: dlib model file missing from face-recognition-models")
    return str(path)


@lru_cache(maxsize=None)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=None)
def _predictor():
    import dlib

    return dlib.shape_predictor(_model_file("shape_predictor_68_face_landmarks.dat"))


@lru_cache(maxsize=None)
def _embedder():
    import dlib

    return dlib.face_recognition_model_v1(_model_file("dlib_face_recognition_resnet_model_v1.dat"))


@dataclass
class Face:
    box: tuple[int, int, int, int]  # left, top, right, bottom in pixels
    score: float
    landmarks: np.ndarray  # (68,2) float64 pixel coordinates, iBUG order
    _shape: object  # dlib.full_object_detection, kept for the embedding's face chip

    @property
    def area(self) -> int:
        l, t, r, b = self.box
        return max(0, r - l) * max(0, b - t)


def detect_faces(image: np.ndarray, upsample: int = 1, max_side: int | None = None) -> list[Face]:
    """All frontal faces in an (H,W,3) uint8 RGB image, largest first.

    ``upsample`` doubles the image that many times before detection (finds faces down to ~40 px at 1).
    ``max_side`` runs the (costly) detector on a copy shrunk to that longer side; the landmarks are still
    predicted on the full image, so they keep its precision.
    """
    import dlib

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"detect_faces needs an (H,W,3) uint8 RGB image, got {image.shape} {image.dtype}")
    image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    f = 1.0 if max_side is None or max(h, w) <= max_side else max_side / max(h, w)
    if f < 1.0:
        small = np.asarray(Image.fromarray(image).resize((round(w * f), round(h * f)), Image.Resampling.BILINEAR, reducing_gap=2.0))
        small_rects, scores, _ = _detector().run(small, upsample, 0.0)
        rects = [dlib.rectangle(round(r.left() / f), round(r.top() / f), round(r.right() / f), round(r.bottom() / f)) for r in small_rects]
    else:
        rects, scores, _ = _detector().run(image, upsample, 0.0)
    faces = []
    for rect, score in zip(rects, scores):
        shape = _predictor()(image, rect)
        pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        faces.append(Face((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score), pts, shape))
    return sorted(faces, key=lambda f: f.area, reverse=True)


def face_embedding(image: np.ndarray, face: Face, jitter: int = 0) -> np.ndarray:
    """dlib's 128-D face descriptor; two photos of one person are closer than 0.6 by dlib's convention."""
    return np.asarray(_embedder().compute_face_descriptor(np.ascontiguousarray(image), face._shape, jitter), dtype=np.float64)
