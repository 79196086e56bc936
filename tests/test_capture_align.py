"""FFHQ alignment: the quad math, the single-warp crop, and the way back into the photo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from facerig.capture.align import align_face, align_transform, ffhq_quad, quad_transform, transform_points, unalign, warp_affine
from facerig.capture.detect import detect_faces
from helpers import assert_close, shared_path


def ffhq(i: int) -> tuple[np.ndarray, np.ndarray]:
    """An FFHQ sample (256 px, already FFHQ-aligned) and its ground-truth landmarks in continuous coordinates."""
    root = shared_path("data", "ffhq-samples")
    image = np.array(Image.open(root / f"{i:05d}.png").convert("RGB"))
    return image, np.load(root / f"{i:05d}.landmarks.npy") + 0.5


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty], [0, 0, 1]])


def decompose(t: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(scale, rotation degrees, translation) of a 2D similarity."""
    return float(np.hypot(t[0, 0], t[1, 0])), math.degrees(math.atan2(t[1, 0], t[0, 0])), t[:2, 2]


def test_ffhq_samples_align_to_nearly_identity():
    """Re-detecting an FFHQ-aligned face must give back (about) the crop it came from: a real check of the quad."""
    scales, angles, shifts = [], [], []
    for i in range(10):
        image, _ = ffhq(i)
        faces = detect_faces(image)
        assert faces, f"no face found in FFHQ sample {i}"
        scale, angle, shift = decompose(align_transform(faces[0].landmarks + 0.5, 256))
        scales.append(scale)
        angles.append(angle)
        shifts.append(shift)
        assert 0.85 < scale < 1.15 and abs(angle) < 3.0 and np.abs(shift).max() < 0.15 * 256, (i, scale, angle, shift)
    assert abs(np.median(scales) - 1.0) < 0.02
    assert abs(np.median(angles)) < 1.0
    assert np.abs(np.median(shifts, 0)).max() < 3.0


def test_quad_follows_the_ffhq_recipe():
    _, lm = ffhq(0)
    quad = ffhq_quad(lm)
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = (lm[48] + lm[54]) / 2 - (eye_l + eye_r) / 2
    side = np.linalg.norm(quad[3] - quad[0])
    assert math.isclose(side, 2 * max(np.linalg.norm(eye_to_eye) * 2.0, np.linalg.norm(eye_to_mouth) * 1.8))
    assert np.allclose(quad.mean(0), (eye_l + eye_r) / 2 + 0.1 * eye_to_mouth)
    # a square: equal sides, right angles
    edges = np.roll(quad, -1, 0) - quad
    assert np.allclose(np.linalg.norm(edges, axis=1), side) and np.allclose((edges * np.roll(edges, -1, 0)).sum(1), 0, atol=1e-9)
    t = quad_transform(quad, 256)
    assert np.allclose(transform_points(t, quad), [[0, 0], [0, 256], [256, 256], [256, 0]])


def test_alignment_is_equivariant_to_similarities():
    """Moving the face by S must move the crop transform by S^-1: same crop, whatever the photo's framing."""
    _, lm = ffhq(3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = similarity(rng.uniform(-60, 60), rng.uniform(0.3, 5.0), *rng.uniform(-500, 500, 2))
        assert np.allclose(align_transform(transform_points(s, lm), 256), align_transform(lm, 256) @ np.linalg.inv(s), atol=1e-9)


def test_warp_affine_identity_and_integer_shift_are_exact():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 17, 23)
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    assert_close(warp_affine(x, eye, (17, 23)), x, atol=1e-6)
    shift = torch.tensor([[1.0, 0, -3], [0, 1.0, -2], [0, 0, 1]], dtype=torch.float64)[None].expand(2, 3, 3)
    assert_close(warp_affine(x, shift, (10, 12)), x[:, :, 2:12, 3:15], atol=1e-6)


def test_align_face_of_a_moved_photo_matches_and_maps_landmarks():
    """Put an FFHQ face into a bigger, rotated, rescaled 'photo'; aligning it must recover the same crop."""
    image, lm = ffhq(4)
    s = similarity(25.0, 1.6, 150.0, 40.0)  # photo <- sample
    photo = warp_affine(torch.from_numpy(image).permute(2, 0, 1)[None].float(), torch.from_numpy(s)[None], (600, 640), "border")
    photo = photo[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    direct = align_face(image, lm, 256)
    moved = align_face(photo, transform_points(s, lm), 256)
    assert np.allclose(moved.transform, direct.transform @ np.linalg.inv(s), atol=1e-9)
    assert np.allclose(moved.landmarks, direct.landmarks, atol=1e-9)
    assert np.allclose(transform_points(moved.transform, transform_points(s, lm)), moved.landmarks, atol=1e-9)
    # two bilinear resamplings differ a little; compare away from the border where padding differs
    diff = np.abs(moved.image.astype(int) - direct.image.astype(int))[32:-32, 32:-32]
    assert diff.mean() < 1.5, diff.mean()


def test_align_face_downscales_large_faces_without_aliasing():
    """A face 8x larger than the crop takes the box-reduce path and still gives the same crop."""
    image, lm = ffhq(5)
    big = np.asarray(Image.fromarray(image).resize((2048, 2048), Image.Resampling.BICUBIC))
    small = align_face(image, lm, 256)
    large = align_face(big, lm * 8, 256)
    assert np.allclose(large.transform, small.transform @ np.diag([1 / 8, 1 / 8, 1]), atol=1e-9)
    assert np.abs(large.image.astype(int) - small.image.astype(int))[16:-16, 16:-16].mean() < 1.5


def test_outside_the_photo_is_padded_as_ffhq_does():
    """A face cut by the photo's right edge: the crop continues it with a blurred, median-coloured fill
    (FFHQ's padding), not with a mirrored copy of the face."""
    image, lm = ffhq(8)
    cut = np.ascontiguousarray(image[:, :190])
    a = align_face(cut, lm, 256)
    mirrored = np.pad(cut, ((40, 40), (40, 120), (0, 0)), mode="symmetric")
    b = align_face(mirrored, lm + [40, 40], 256)  # the old behaviour: plain reflection
    assert np.allclose(a.transform, b.transform @ np.array([[1, 0, 40], [0, 1, 40], [0, 0, 1]]), atol=1e-9)
    inside, outside = (slice(40, 216), slice(40, 150)), (slice(None), slice(220, 256))  # inside: away from every photo edge
    assert np.abs(a.image[inside].astype(int) - b.image[inside]).max() <= 1, "the photo itself is untouched"
    detail = lambda im: np.abs(np.diff(im[outside].astype(float), axis=0)).mean()  # noqa: E731
    assert detail(a.image) < 0.3 * detail(b.image), "no mirrored features outside the photo"
    median = np.median(cut.reshape(-1, 3), 0)
    assert np.abs(a.image[:, 250:] - median).mean() < 0.5 * np.abs(b.image[:, 250:] - median).mean(), "far out it fades to the median"
    steps = np.abs(np.diff(a.image[40:216, 186:196].astype(float), axis=1)).mean(axis=(0, 2))
    assert steps.max() < 4, f"a seam at the photo edge: {steps.round(1)}"


def test_to_original_refers_results_to_the_full_size_photo():
    image, lm = ffhq(6)
    half = np.asarray(Image.fromarray(image).resize((128, 128), Image.Resampling.BILINEAR))
    to_original = np.diag([2.0, 2.0, 1.0])
    aligned = align_face(half, lm / 2, 256, to_original)
    assert np.allclose(aligned.transform, align_transform(lm, 256), atol=1e-9)
    assert np.allclose(transform_points(aligned.transform, lm), aligned.landmarks, atol=1e-9)


def test_unalign_round_trips():
    image, lm = ffhq(7)
    s = similarity(-15.0, 1.3, 60.0, 30.0)
    photo = warp_affine(torch.from_numpy(image).permute(2, 0, 1)[None].float(), torch.from_numpy(s)[None], (420, 400), "border")[0]
    photo_u8 = photo.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    aligned = align_face(photo_u8, transform_points(s, lm), 256)
    crop = torch.from_numpy(aligned.image).permute(2, 0, 1)[None].float()
    ones = torch.ones(1, 1, 256, 256)
    t = torch.from_numpy(aligned.transform)[None]
    back = unalign(torch.cat([crop, ones], 1), t, (420, 400))[0]
    covered = back[3] > 0.999  # fully inside the crop's footprint
    assert covered.float().mean() > 0.2 and (back[3] <= 1.0 + 1e-6).all()
    assert (back[:, ~(back[3] > 0)] == 0).all(), "outside the crop must stay 0"
    inner = covered.clone()  # within 0.1 quad sides of the photo's edges the crop fades into FFHQ's padding
    inner[:45], inner[-45:], inner[:, :45], inner[:, -45:] = False, False, False, False
    err = (back[:3] - torch.from_numpy(photo_u8).permute(2, 0, 1).float())[:, inner].abs()
    assert err.mean() < 2.5, err.mean()
    # points: original -> crop -> original is exact
    pts = transform_points(s, lm)
    assert np.allclose(transform_points(np.linalg.inv(aligned.transform), aligned.landmarks), pts, atol=1e-9)


def test_unalign_of_a_crop_outside_the_photo_is_empty():
    t = torch.tensor([[1.0, 0, 5000], [0, 1.0, 5000], [0, 0, 1]], dtype=torch.float64)[None]  # crop far from the photo
    out = unalign(torch.ones(1, 2, 64, 64), t, (100, 120))
    assert out.shape == (1, 2, 100, 120) and (out == 0).all()


def test_bad_landmarks_are_rejected():
    with pytest.raises(ValueError, match=r"\(68,2\)"):
        ffhq_quad(np.zeros((5, 2)))
