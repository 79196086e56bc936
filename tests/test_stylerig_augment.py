import pytest
import torch

from facerig.stylerig.augment import diff_augment


def test_diff_augment_keeps_shape_and_is_differentiable():
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    y = diff_augment(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x, ""), x)
    with pytest.raises(ValueError, match="unknown"):
        diff_augment(x, "color,zoom")

