import math

import pytest
import torch
from helpers import assert_close, require, shared_path

from facerig.eval.image_metrics import gaussian_window, psnr, ssim, ssim_map
from facerig.eval.items import read_rgb


def _image(seed: int = 0, size: int = 64) -> torch.Tensor:
    """A smooth random image in [0.25, 0.75], so added noise of a few percent never clips."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64)
    return 0.25 + 0.5 * torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    a = _image()
    assert psnr(a, a.clone()).item() == math.inf
    assert_close(ssim(a, a.clone()), torch.ones(1, dtype=torch.float64), atol=1e-12)
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    assert psnr(a, a.clone(), mask=mask).item() == math.inf
    assert_close(ssim(a, a.clone(), mask=mask), torch.ones(1, dtype=torch.float64), atol=1e-12)


def test_psnr_of_a_known_error_matches_the_closed_form():
    a = _image()
    delta = 0.03
    # +-delta in a checkerboard: the squared error is delta^2 at every pixel, exactly.
    sign = (torch.arange(64)[:, None] + torch.arange(64)[None]) % 2 * 2 - 1
    b = a + delta * sign
    assert_close(psnr(a, b), torch.tensor([20 * math.log10(1 / delta)], dtype=torch.float64), atol=1e-9)
    # The same images in [0, 255] with data_range 255 give the same number.
    assert_close(psnr(a * 255, b * 255, data_range=255.0), psnr(a, b), atol=1e-9)


def test_psnr_of_gaussian_noise_matches_the_closed_form():
    a = _image(size=128)
    sigma = 0.05
    b = a + sigma * torch.randn(a.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # MSE -> sigma^2; with 49152 samples its relative spread is 0.6%, i.e. 0.03 dB.
    assert abs(psnr(a, b).item() - 10 * math.log10(1 / sigma**2)) < 0.1


def test_masked_psnr_only_sees_the_masked_error():
    a = _image()
    b = a.clone()
    b[..., :, :32] += 0.1  # error only in the left half
    left = torch.zeros(64, 64)
    left[:, :32] = 1
    assert_close(psnr(a, b, mask=left), torch.tensor([20.0], dtype=torch.float64), atol=1e-9)
    assert psnr(a, b, mask=1 - left).item() == math.inf
    # A soft mask weights pixels: half weight on the left, full on the right -> MSE = 0.01 * 0.5 / 1.5.
    soft = 1 - 0.5 * left
    assert_close(psnr(a, b, mask=soft), torch.tensor([10 * math.log10(1.5 / 0.005)], dtype=torch.float64), atol=1e-9)


def test_ssim_drops_as_noise_grows():
    a = _image(size=96)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(a.shape, generator=g, dtype=torch.float64)
    scores = [ssim(a, a + s * noise).item() for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(x > y for x, y in zip(scores, scores[1:])), scores
    assert scores[0] < 1 and scores[-1] < 0.5


def test_ssim_on_a_photo_drops_with_noise():
    im = read_rgb(shared_path("data", "ffhq-samples", "00000.png"))
    a = torch.from_numpy(im).permute(2, 0, 1).double() / 255
    noisy = (a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).clamp(0, 1)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-12)
    assert 0.3 < ssim(a, noisy).item() < 0.95


def test_ssim_matches_kornia_reference():
    kornia = require("kornia")
    a = _image(size=48)
    b = (a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).clamp(0, 1)
    ref = kornia.metrics.ssim(a, b, 11, max_val=1.0, eps=0.0, padding="valid")
    assert_close(ssim_map(a, b), ref, atol=1e-10)
    assert_close(ssim(a, b), ref.mean(dim=(1, 2, 3)), atol=1e-10)


def test_gaussian_window_is_normalised_and_symmetric():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11,) and abs(w.sum().item() - 1) < 1e-12
    assert_close(w, w.flip(0), atol=0)
    assert w.argmax().item() == 5


def test_unbatched_input_gives_scalars_and_bad_input_is_refused():
    a = _image()[0]
    assert psnr(a, a * 0.9).dim() == 0 and ssim(a, a * 0.9).dim() == 0
    with pytest.raises(ValueError, match="shape"):
        psnr(a, a[:, :32])
    with pytest.raises(ValueError, match="empty"):
        psnr(a, a * 0.9, mask=torch.zeros(64, 64))
    with pytest.raises(ValueError, match="smaller than"):
        ssim(a[:, :8, :8], a[:, :8, :8])
