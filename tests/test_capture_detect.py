"""dlib detection on a shrunk copy: landmarks still come from the full image, in its pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facerig.capture.detect import detect_faces
from helpers import shared_path


def test_detection_on_a_shrunk_copy_keeps_full_resolution_landmarks():
    small = Image.open(shared_path("data", "ffhq-samples", "00003.png")).convert("RGB")
    big = np.asarray(small.resize((1024, 1024), Image.Resampling.BICUBIC))
    full = detect_faces(big, upsample=0)
    shrunk = detect_faces(big, upsample=1, max_side=256)
    assert len(full) == len(shrunk) == 1
    box_full, box_shrunk = np.array(full[0].box), np.array(shrunk[0].box)
    assert np.abs(box_shrunk - box_full).max() < 0.15 * (box_full[2] - box_full[0]), (box_full, box_shrunk)
    # landmarks are predicted on the 1024 px image: close to the full-size detection's, at its scale
    assert np.abs(shrunk[0].landmarks - full[0].landmarks).mean() < 2.5
    assert shrunk[0].landmarks.max() > 256, "landmarks must be in the full image's pixels"


def test_detect_faces_rejects_non_rgb8():
    with pytest.raises(ValueError, match=r"\(H,W,3\) uint8"):
        detect_faces(np.zeros((64, 64), np.uint8))
