import pytest
import torch

from facerig.stylerig.augment import diff_augment, geometric_blur_noise


def test_diff_augment_keeps_shape_and_is_differentiable():
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    y = diff_augment(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x, ""), x)
    with pytest.raises(ValueError, match="unknown"):
        diff_augment(x, "color,zoom")


def test_geometric_blur_noise_is_identity_at_zero_strength_and_blurs_pixel_patterns():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    still = geometric_blur_noise(x, gen, shift=0.0, scale=0.0, blur=1e-6, noise=0.0)
    torch.testing.assert_close(still, x, atol=1e-5, rtol=0)
    # A flat image stays flat (border padding, normalised kernels); a 1-pixel checkerboard loses most of its
    # energy under the default ranges, which is what makes pixel-level adversarial patterns useless.
    flat = torch.full((8, 3, 32, 32), 0.3)
    torch.testing.assert_close(geometric_blur_noise(flat, gen, noise=0.0), flat, atol=1e-5, rtol=0)
    board = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 2 - 1).float().expand(8, 3, 32, 32)
    out = geometric_blur_noise(board, gen, noise=0.0)
    assert out[..., 4:-4, 4:-4].abs().mean() < 0.6
    x.requires_grad_(True)
    y = geometric_blur_noise(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    replay = geometric_blur_noise(x.detach(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(replay, y.detach())
