import numpy as np
import torch
from helpers import assert_close

from facerig.capture.align import ffhq_quad
from facerig.face3d.camera import ffhq_centre


def test_ffhq_centre_is_eye_midpoint_plus_a_tenth_of_eye_to_mouth():
    lm = torch.randn(2, 3, 68, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 50 + 128
    eyes = (lm[..., 36:42, :].mean(-2) + lm[..., 42:48, :].mean(-2)) / 2
    mouth = (lm[..., 48, :] + lm[..., 54, :]) / 2
    centre = ffhq_centre(lm)
    assert centre.shape == (2, 3, 2)
    assert_close(centre, eyes + 0.1 * (mouth - eyes))


def test_ffhq_centre_is_the_centre_of_the_ffhq_quad():
    lm = np.random.default_rng(1).normal(128, 40, (68, 2))
    assert np.allclose(ffhq_quad(lm).mean(0), ffhq_centre(lm))
