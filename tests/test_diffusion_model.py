import json

import pytest
import torch

from facerig.diffusion.model import (
    CONFIGS, DiffusionRig, ModelConfig, count_parameters, global_latent, load_official, official_state_dict,
    read_official_state_dict, save_official,
)
from facerig.paths import shared_dir
from facerig.render.renderer import BUFFER_NAMES
from helpers import shared_path


pytestmark = pytest.mark.usefixtures("one_thread")


OFFICIAL_PARAMETERS = 144_610_179


@pytest.fixture(scope="module")
def reference() -> dict:
    shared_path("reference", "diffusionrig_official_state_dict.json")
    return json.loads((shared_dir() / "reference" / "diffusionrig_official_state_dict.json").read_text())


def test_paper_parameter_count_is_official():
    assert count_parameters("paper") == OFFICIAL_PARAMETERS


def test_paper_matches_official_config_keys_and_shapes(reference):
    assert reference["parameters"] == OFFICIAL_PARAMETERS
    assert ModelConfig.from_official(reference["config"]) == CONFIGS["paper"]
    with torch.device("meta"):
        model = DiffusionRig("paper")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == reference["state_dict"]


def test_buffer_order_is_the_official_concatenation_order():
    # Official: physic_cond = th.cat([rendered, normal, albedo], dim=1).
    assert BUFFER_NAMES == ("rendered", "normal", "albedo")


def test_from_official_rejects_unsupported_architecture(reference):
    with pytest.raises(ValueError, match="resblock_updown"):
        ModelConfig.from_official({**reference["config"], "resblock_updown": False})


def test_configs_build_and_run():
    assert CONFIGS["small"].channel_mult == (1, 1, 2, 3, 4)
    assert CONFIGS["tiny"].channel_mult == (1, 2, 3, 4)
    torch.manual_seed(0)
    model = DiffusionRig("tiny")
    for m in model.modules():  # undo ADM's zero init so the output is not trivially zero
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.05)
    x, buf = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 9, 64, 64)
    x_t, t = torch.randn(2, 3, 64, 64), torch.tensor([1, 900])
    z = global_latent(model, x)
    assert z.shape == (2, 64)
    assert model.training and model.encoder.training  # global_latent restores the mode
    model.eval()
    assert torch.equal(model(x_t, t, buf, latent=z), model(x_t, t, buf, image=x))
    assert model.denoiser is model.denoisingUNet
    with pytest.raises(ValueError, match="image or latent"):
        model(x, t, buf)


def test_config_dict_round_trip_and_errors():
    cfg = CONFIGS["small"]
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="channel_mult"):
        ModelConfig(image_size=96)


def test_absurd_configs_are_refused_before_building(tmp_path):
    from facerig.diffusion.checkpoint import load_checkpoint, save_weights

    for bad in ({"num_res_blocks": 3000}, {"model_channels": 100_000}, {"channel_mult": (1,) * 40},
                {"latent_dim": 10**9}, {"dropout": 1.0}):
        with pytest.raises(ValueError, match="outside"):
            ModelConfig.from_dict({**CONFIGS["tiny"].to_dict(), **bad})
    # A weights file whose metadata asks for 3,000 res blocks is refused by its config, not after building it.
    path = tmp_path / "hostile.safetensors"
    save_weights({"x": torch.zeros(1)}, path, CONFIGS["tiny"], 0)
    from safetensors.torch import load_file, save_file
    save_file(load_file(path), path, metadata={"format": "facerig-diffusionrig", "step": "0", "config": json.dumps(
        {**CONFIGS["tiny"].to_dict(), "num_res_blocks": 3000})})
    with pytest.raises(ValueError, match="num_res_blocks=3000 is outside"):
        load_checkpoint(path)


def test_fast_path_is_within_documented_tolerance_of_fp32():
    """bf16 autocast + channels_last against fp32 on the shipped model (docs/diffusion.md, "Precision")."""
    from pathlib import Path

    from facerig import runtime
    from facerig.diffusion.checkpoint import load_checkpoint
    from facerig.diffusion.process import DEFAULT_SCHEDULE, ddim_sample, denoiser_fn, training_loss

    model, _ = load_checkpoint(Path(__file__).parents[1] / "models" / "diffusionrig-tiny-celeba64.safetensors")
    g = torch.Generator().manual_seed(0)
    image, buffers = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, torch.rand(2, 9, 64, 64, generator=g)
    x, t = torch.randn(2, 3, 64, 64, generator=g), torch.tensor([100, 800])

    def run(precision):
        model.use_memory_format(runtime.memory_format(precision))
        with torch.no_grad(), runtime.autocast("cpu", precision):
            cond = {"buffers": buffers, "latent": model.encode(image).float()}
            eps = denoiser_fn(model)(x, t, cond).float()
            traj = ddim_sample(denoiser_fn(model), x, cond, 10)
        model.train()
        with runtime.autocast("cpu", precision):
            loss = training_loss(model, {"image": image, "buffers": buffers}, DEFAULT_SCHEDULE, 1.0, 1.0,
                                 torch.Generator().manual_seed(3))["loss"].item()
        model.eval()
        return eps, traj, loss

    torch.manual_seed(0)
    eps32, traj32, loss32 = run("fp32")
    torch.manual_seed(0)  # same dropout draws
    eps16, traj16, loss16 = run("bf16")
    assert (eps16 - eps32).pow(2).mean().sqrt() <= 0.01 * eps32.pow(2).mean().sqrt()
    assert abs(loss16 - loss32) <= 0.02 * loss32
    assert (traj16 - traj32).abs().mean() <= 0.01 and (traj16 - traj32).abs().max() <= 0.15


def test_official_checkpoint_load_and_export_round_trip(reference, tmp_path):
    """A random state dict with exactly the official keys and shapes, saved as the official code would."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in reference["state_dict"].items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.randint(0, 1000, shape, generator=g, dtype=torch.long)
        else:
            state[k] = torch.randn(shape, generator=g)
    path = tmp_path / "model050000.pt"
    torch.save({"model": state}, path)  # nested under a key, as some exports are
    model = load_official(path)
    assert not model.training
    exported = official_state_dict(model)
    assert list(exported) == list(reference["state_dict"])
    for k, v in state.items():
        assert torch.equal(exported[k], v), k
    # facerig's export is a plain tensor dict that plain torch loads weights-only, with the official keys.
    out = tmp_path / "export.pt"
    save_official(model, out)
    del model
    again = torch.load(out, weights_only=True)
    assert list(again) == list(reference["state_dict"])
    assert all(torch.equal(again[k], v) for k, v in state.items())


def test_official_io_variants_and_errors(tmp_path):
    torch.manual_seed(0)
    model = DiffusionRig("tiny")
    sd = official_state_dict(model)
    plain, ddp = tmp_path / "plain.pt", tmp_path / "ddp.pt"
    save_official(model, plain)
    torch.save({f"module.{k}": v for k, v in sd.items()}, ddp)
    for path in (plain, ddp):
        loaded = read_official_state_dict(path)
        assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert torch.equal(load_official(plain, "tiny").encoder.fc.weight, model.encoder.fc.weight)
    # A paper-architecture file into the tiny model: a clear error naming the file.
    with pytest.raises(ValueError, match="plain.pt.*shape"):
        load_official(plain, "small")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        read_official_state_dict(bad)
    with pytest.raises(FileNotFoundError):
        read_official_state_dict(tmp_path / "missing.pt")
