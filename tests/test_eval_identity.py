import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from helpers import shared_path, unavailable
from PIL import Image

from facerig.eval.identity import SAME_PERSON_THRESHOLD, FaceAnalysis, analyze_face, distances_to_set, embed_folder, embedding_distance
from facerig.eval.items import read_rgb

N_IDENTITIES = 4


@pytest.fixture(scope="module")
def celeba_faces() -> list[list[tuple[str, np.ndarray]]]:
    """For the first 4 CelebA identities (by number) with two detectable faces: their first two such photos."""
    root = shared_path("data", "celeba-wild")
    files = defaultdict(list)
    with open(root / "identities.csv") as f:
        for row in csv.DictReader(f):
            files[int(row["identity"])].append(row["file"])
    chosen = []
    for identity in sorted(files):
        faces = []
        for name in sorted(files[identity]):
            face = analyze_face(read_rgb(root / name), name)
            if face.embedding is not None:
                faces.append((name, face.embedding))
            if len(faces) == 2:
                chosen.append(faces)
                break
        if len(chosen) == N_IDENTITIES:
            return chosen
    unavailable("fewer than 4 celeba-wild identities with two detectable faces")


def test_same_identity_pairs_are_closer_than_threshold(celeba_faces):
    for (a, ea), (b, eb) in celeba_faces:
        d = embedding_distance(ea, eb)
        assert d < SAME_PERSON_THRESHOLD, f"{a} vs {b}: {d:.3f}"


def test_different_identity_pairs_are_farther_than_threshold(celeba_faces):
    for k in range(N_IDENTITIES):
        (a, ea), (b, eb) = celeba_faces[k][0], celeba_faces[(k + 1) % N_IDENTITIES][0]
        d = embedding_distance(ea, eb)
        assert d > SAME_PERSON_THRESHOLD, f"{a} vs {b}: {d:.3f}"


def test_identical_photo_has_distance_zero_and_faceless_photo_is_nan():
    image = read_rgb(shared_path("data", "ffhq-samples", "00000.png"))
    face = analyze_face(image, "source.png")
    assert face.embedding is not None and face.embedding.shape == (128,) and face.landmarks.shape == (68, 2)
    assert embedding_distance(face.embedding, analyze_face(image.copy()).embedding) == 0.0
    flat = np.full((256, 256, 3), 128, np.uint8)
    none = analyze_face(flat, "edited.png")
    assert none == FaceAnalysis(None, None, "no face detected in edited.png")
    assert math.isnan(embedding_distance(face.embedding, none.embedding))
    assert np.isnan(distances_to_set(None, np.zeros((3, 128)))).all()
    assert distances_to_set(face.embedding, face.embedding[None]).tolist() == [0.0]


def test_embed_folder_reports_faceless_and_corrupt_photos(tmp_path: Path):
    src = shared_path("data", "ffhq-samples")
    for name in ("00001.png", "00002.png"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "blank.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    emb = embed_folder(tmp_path)
    assert emb.names == ["00001.png", "00002.png"] and emb.embeddings.shape == (2, 128)
    reasons = dict(emb.failures)
    assert set(reasons) == {"blank.png", "broken.jpg"}
    assert "no face detected" in reasons["blank.png"] and "unreadable" in reasons["broken.jpg"]
    with pytest.raises(FileNotFoundError):
        embed_folder(tmp_path / "missing")


def test_small_images_are_analysed_upsampled_with_landmarks_in_their_own_pixels():
    big = np.asarray(Image.open(shared_path("data", "ffhq-samples", "00003.png")).convert("RGB").resize((256, 256)))
    small = np.asarray(Image.fromarray(big).resize((64, 64), Image.BICUBIC))
    a, b = analyze_face(big, "big"), analyze_face(small, "small")
    assert b.embedding is not None, b.reason
    assert np.abs(b.landmarks * 4 - a.landmarks).mean() < 8  # same face, in the small image's pixels
    assert embedding_distance(a.embedding, b.embedding) < 0.6
