"""Identity preservation with dlib's 128-D face embedding: Euclidean distance, same person below 0.6.

A photo without a detectable face gets no embedding and a reason; distances involving it are NaN, so a
batch reports it instead of crashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facerig.capture.detect import detect_faces, face_embedding
from facerig.capture.load import upsample_small
from facerig.eval.items import IMAGE_SUFFIXES, read_rgb

# dlib's convention for its face recognition model (99.38% on LFW at this threshold).
SAME_PERSON_THRESHOLD = 0.6


@dataclass
class FaceAnalysis:
    """The largest face of a photo: its embedding and 68 landmarks, or ``reason`` when there is none."""

    embedding: np.ndarray | None  # (128,) float64
    landmarks: np.ndarray | None  # (68,2) pixel coordinates
    reason: str = ""


# Small images are upsampled to this side before detection, as re-capture does (dlib misses 64 px faces).
DETECT_MIN_SIDE = 256


def analyze_face(image: np.ndarray, what: str = "image") -> FaceAnalysis:
    """Detect the largest face of an (H,W,3) uint8 RGB image and embed it; ``what`` names it in the reason.
    Landmarks are in ``image``'s pixels."""
    big = upsample_small(image, DETECT_MIN_SIDE)
    faces = detect_faces(big)
    if not faces:
        return FaceAnalysis(None, None, f"no face detected in {what}")
    face = faces[0]
    scale = np.array([image.shape[1] / big.shape[1], image.shape[0] / big.shape[0]])
    return FaceAnalysis(face_embedding(big, face), (face.landmarks + 0.5) * scale - 0.5, "")


def embedding_distance(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Euclidean distance between two embeddings; NaN when either photo had no face."""
    if a is None or b is None:
        return float("nan")
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def distances_to_set(embedding: np.ndarray | None, others: np.ndarray) -> np.ndarray:
    """(N,) distances from one embedding to the rows of (N,128) ``others``; all NaN without an embedding."""
    if embedding is None:
        return np.full(len(others), np.nan)
    return np.linalg.norm(others - embedding[None], axis=1)


@dataclass
class FolderEmbeddings:
    """Embeddings of every photo of a folder with a detectable face, and the photos that had none or failed."""

    folder: Path
    names: list[str]
    embeddings: np.ndarray  # (N,128)
    failures: list[tuple[str, str]]  # (file name, reason)


def embed_folder(folder: str | Path, desc: str = "embedding") -> FolderEmbeddings:
    """Embed the largest face of each image in ``folder`` (sorted by name, not recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    names, embeddings, failures = [], [], []
    for path in tqdm(files, desc=desc, unit="photo", leave=False):
        try:
            image = read_rgb(path)
        except ValueError as exc:
            failures.append((path.name, str(exc)))
            continue
        face = analyze_face(image, path.name)
        if face.embedding is None:
            failures.append((path.name, face.reason))
        else:
            names.append(path.name)
            embeddings.append(face.embedding)
    return FolderEmbeddings(folder, names, np.array(embeddings).reshape(len(embeddings), 128), failures)
