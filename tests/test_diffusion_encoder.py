import json

import pytest
import torch

from facerig.diffusion.encoder import ResNet18Encoder
from facerig.paths import shared_dir
from helpers import shared_path


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
