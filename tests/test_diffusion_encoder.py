import json

import pytest
import torch

from facerig.diffusion.encoder import ResNet18Encoder
from facerig.paths import shared_dir
from helpers import assert_close, shared_path


pytestmark = pytest.mark.usefixtures("one_thread")


def test_latent_shape_at_any_resolution():
    torch.manual_seed(0)
    enc = ResNet18Encoder(64).eval()
    for size in (64, 96):
        z = enc(torch.rand(2, 3, size, size) * 2 - 1)
        assert z.shape == (2, 64)
        assert torch.isfinite(z).all()


def test_latent_depends_on_image():
    torch.manual_seed(0)
    enc = ResNet18Encoder(64).eval()
    a, b = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    assert (enc(a) - enc(b)).abs().max() > 1e-4


def test_keys_and_shapes_are_torchvision_resnet18_with_64d_head():
    shared_path("reference", "diffusionrig_official_state_dict.json")
    ref = json.loads((shared_dir() / "reference" / "diffusionrig_official_state_dict.json").read_text())["state_dict"]
    expected = {k.removeprefix("encoder."): v for k, v in ref.items() if k.startswith("encoder.")}
    got = {k: list(v.shape) for k, v in ResNet18Encoder(64).state_dict().items()}
    assert got == expected


def test_parameter_count_is_resnet18_minus_imagenet_head():
    n = sum(p.numel() for p in ResNet18Encoder(64).parameters())
    # torchvision resnet18 has 11,689,512 parameters with its 1000-way fc (513,000 of them).
    assert n == 11_689_512 - 513_000 + 512 * 64 + 64


def test_small_map_convolutions_under_bf16_autocast_match_the_convolution():
    from facerig.diffusion.encoder import Conv2d

    torch.manual_seed(0)
    for cin, cout, k, stride, size in ((64, 128, 3, 2, 8), (128, 128, 3, 1, 4), (64, 128, 1, 2, 8), (32, 32, 3, 1, 16)):
        conv = Conv2d(cin, cout, k, stride, k // 2, bias=True)
        x = torch.randn(3, cin, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        with torch.autocast("cpu", torch.bfloat16):
            got = conv(x)
            expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride, k // 2)
        assert got.shape == expected.shape
        assert_close(got.float(), expected.float(), atol=0.03, rtol=0.02)
        (grad_w,) = torch.autograd.grad(got.float().pow(2).sum(), conv.weight)
        (expected_w,) = torch.autograd.grad(expected.float().pow(2).sum(), conv.weight)
        assert (grad_w - expected_w).norm() / expected_w.norm() < 0.02
    with torch.no_grad():  # without autocast it is the plain convolution, bit for bit
        x = torch.randn(2, 32, 4, 4)
        assert torch.equal(conv(x), torch.nn.functional.conv2d(x, conv.weight, conv.bias, 1, 1))
