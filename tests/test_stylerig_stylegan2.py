"""StyleGAN2 (rosinality layout): outputs of a small reference model, checkpoint key layout, checkpoint loading."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from helpers import assert_close, shared_path

from facerig.stylerig.rosinality import load_rosinality
from facerig.stylerig.stylegan2 import Discriminator, Generator

SMALL_CHANNELS = {4: 32, 8: 32, 16: 32, 32: 16}


class NotWeights:
    """A pickled object that ``weights_only`` loading must refuse."""


@pytest.fixture(scope="module")
def small_reference():
    safetensors = pytest.importorskip("safetensors.torch")
    tensors = safetensors.load_file(str(shared_path("reference", "stylegan2_rosinality_small_reference.safetensors")))
    g = Generator(32, style_dim=64, n_mlp=2, channel_multiplier=1, lr_mlp=0.01, channels=SMALL_CHANNELS).eval()
    d = Discriminator(32, channel_multiplier=1, channels=SMALL_CHANNELS).eval()
    g.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("g.")}, strict=True)
    d.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("d.")}, strict=True)
    return g, d, tensors


@pytest.fixture(scope="module")
def layouts():
    return json.loads(shared_path("reference", "stylegan2_rosinality_state_dict.json").read_text())["configs"]


def test_small_reference(small_reference, one_thread):
    g, d, t = small_reference
    z, z2, mean = t["in.z"], t["in.z2"], t["in.mean_latent"]
    with torch.no_grad():
        img_z, lat_z = g([z], randomize_noise=False, return_latents=True)
        img_trunc, _ = g([z], truncation=0.7, truncation_latent=mean, randomize_noise=False)
        img_wplus, _ = g([t["in.wplus"]], input_is_latent=True, randomize_noise=False)
        img_mix, lat_mix = g([z, z2], inject_index=3, randomize_noise=False, return_latents=True)
        d_img_z = d(img_z)
    outputs = {"img_z": img_z, "latents_z": lat_z, "img_trunc": img_trunc, "img_wplus": img_wplus,
               "img_mix": img_mix, "latents_mix": lat_mix, "d_img_z": d_img_z}
    for name, value in outputs.items():
        assert_close(value, t[f"out.{name}"], atol=1e-4, msg=name)


def test_small_explicit_noise_latent_helpers(small_reference, one_thread):
    """Passing the stored noises explicitly equals ``randomize_noise=False``; ``get_latent`` is the mapping;
    ``mean_latent`` averages W."""
    g, _, t = small_reference
    noise = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
    with torch.no_grad():
        img, _ = g([g.get_latent(t["in.z"])], input_is_latent=True, noise=noise)
    assert_close(img, t["out.img_z"], atol=1e-4)
    assert g.mean_latent(16).shape == (1, 64)


@pytest.mark.parametrize("name", ["ffhq-256", "ffhq-1024"])
def test_checkpoint_layout(layouts, name):
    cfg = layouts[name]
    with torch.device("meta"):
        g = Generator(cfg["size"], cfg["style_dim"], cfg["n_mlp"], cfg["channel_multiplier"])
        d = Discriminator(cfg["size"], cfg["channel_multiplier"])
    for model, expected in ((g, cfg["g_ema"]), (d, cfg["d"])):
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == expected
    assert g.n_latent == cfg["n_latent"]
    assert sum(p.numel() for p in g.parameters()) == cfg["generator_parameters"]
    assert sum(p.numel() for p in d.parameters()) == cfg["discriminator_parameters"]


def random_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes as views of one shared buffer: torch.save stores it once (~9 MB for
    FFHQ-1024 instead of ~120 MB)."""
    buffer = torch.randn(max(math.prod(s) for s in shapes.values()))
    return {k: buffer[: math.prod(s)].view(s) for k, s in shapes.items()}


def test_load_rosinality_1024(layouts, tmp_path):
    cfg = layouts["ffhq-1024"]
    state = random_state(cfg["g_ema"])
    path = tmp_path / "ffhq-1024.pt"
    # A training checkpoint: 'args' is an argparse.Namespace, which must still load with weights_only.
    torch.save({"g_ema": state, "latent_avg": torch.randn(512), "args": argparse.Namespace(size=1024)}, path)
    g, latent_avg = load_rosinality(path)
    assert (g.size, g.style_dim, g.n_latent) == (1024, 512, cfg["n_latent"])
    loaded = g.state_dict()
    assert {k: list(v.shape) for k, v in loaded.items()} == cfg["g_ema"]
    assert all(v.device.type == "cpu" for v in loaded.values())
    assert torch.equal(loaded["convs.15.conv.weight"], state["convs.15.conv.weight"])
    assert latent_avg is not None and latent_avg.shape == (512,)


def test_load_rosinality_errors(layouts, tmp_path):
    shapes = layouts["ffhq-256"]["g_ema"]
    state = random_state(shapes)
    cases = {  # file name: (checkpoint, expected message fragment)
        "missing.pt": ({"g_ema": {k: v for k, v in state.items() if k != "conv1.noise.weight"}}, "1 missing"),
        "shape.pt": ({"g_ema": {**state, "conv1.activate.bias": torch.zeros(3)}}, "1 shape mismatches"),
        "unexpected.pt": ({"g_ema": {**state, "extra": torch.zeros(1)}}, "1 unexpected"),
        "no_g_ema.pt": ({"g": state}, "no 'g_ema'"),
        "pickle.pt": ({"g_ema": state, "extra": NotWeights()}, "not a weights-only"),
    }
    for name, (obj, fragment) in cases.items():
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(ValueError, match=f"{name}.*{fragment}"):
            load_rosinality(path)
    with pytest.raises(FileNotFoundError):
        load_rosinality(tmp_path / "absent.pt")


def test_generate_256(one_thread):
    torch.manual_seed(0)
    g = Generator(256).eval()  # rosinality's random initialisation
    with torch.no_grad():
        img, latent = g([torch.randn(1, 512)], return_latents=True, randomize_noise=False)
    assert img.shape == (1, 3, 256, 256) and latent.shape == (1, 14, 512)
    assert torch.isfinite(img).all() and img.std() > 0
