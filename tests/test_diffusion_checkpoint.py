import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from facerig.diffusion.checkpoint import (
    EMA_FILE, LATEST_FILE, MODEL_FILE, checkpoint_dir, load_checkpoint, read_weights, save_weights,
)
from facerig.diffusion.model import CONFIGS, DiffusionRig, save_official
from facerig.io import atomic_write_json


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder laid out as training writes it, with distinct model and EMA weights."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model, ema = DiffusionRig("tiny"), DiffusionRig("tiny")
    ck = root / "checkpoints" / "step_00000007"
    save_weights(model.state_dict(), ck / MODEL_FILE, CONFIGS["tiny"], 7)
    save_weights(ema.state_dict(), ck / EMA_FILE, CONFIGS["tiny"], 7)
    atomic_write_json(root / LATEST_FILE, {"checkpoint": "checkpoints/step_00000007", "step": 7})
    return root, model, ema


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_weights_round_trip_with_config(run_dir):
    root, model, _ = run_dir
    state, cfg, step = read_weights(root / "checkpoints" / "step_00000007" / MODEL_FILE)
    assert cfg == CONFIGS["tiny"] and step == 7
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_load_checkpoint_from_run_checkpoint_or_file(run_dir):
    root, model, ema = run_dir
    ck = root / "checkpoints" / "step_00000007"
    assert checkpoint_dir(root) == ck
    loaded, cfg = load_checkpoint(root)
    assert cfg == CONFIGS["tiny"] and not loaded.training
    assert _same_weights(loaded, ema)  # EMA preferred
    assert _same_weights(load_checkpoint(root, prefer_ema=False)[0], model)
    assert _same_weights(load_checkpoint(ck)[0], ema)
    assert _same_weights(load_checkpoint(ck / MODEL_FILE)[0], model)
    # A loaded model is trainable again.
    assert all(p.requires_grad for p in loaded.parameters())


def test_load_official_pt(tmp_path):
    torch.manual_seed(1)
    model = DiffusionRig("tiny")
    save_official(model, tmp_path / "model.pt")
    loaded, cfg = load_checkpoint(tmp_path / "model.pt", config="tiny")
    assert cfg == CONFIGS["tiny"] and _same_weights(loaded, model)


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a facerig run"):
        load_checkpoint(tmp_path)
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="x.safetensors"):
        load_checkpoint(bogus)
    save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors.*not a facerig"):
        read_weights(tmp_path / "other.safetensors")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "meta.safetensors"),
              metadata={"format": "facerig-diffusionrig", "config": "{not json", "step": "0"})
    with pytest.raises(ValueError, match="meta.safetensors: model config is not JSON"):
        read_weights(tmp_path / "meta.safetensors")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "meta2.safetensors"),
              metadata={"format": "facerig-diffusionrig", "config": '{"model_channels": 32}', "step": "x"})
    with pytest.raises(ValueError, match="meta2.safetensors: bad model config"):
        read_weights(tmp_path / "meta2.safetensors")


def test_save_pretrained_folder_round_trip(tmp_path):
    torch.manual_seed(2)
    model = DiffusionRig("tiny")
    folder = model.save_pretrained(tmp_path / "pretrained")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "DiffusionRig" and config["model_channels"] == 32
    loaded = DiffusionRig.from_pretrained(folder)
    assert loaded.config == CONFIGS["tiny"] and _same_weights(loaded, model) and not loaded.training
    # weights rewritten without facerig's metadata (e.g. by another tool) still load through config.json
    save_file(load_file(str(folder / "model.safetensors")), str(folder / "model.safetensors"))
    assert _same_weights(DiffusionRig.from_pretrained(folder), model)
