"""Every model in models/ loads and gives the outputs it gave when they were recorded (tests/shipped_outputs.json,
written by ``python3 tests/test_shipped_models.py --record`` before the StyleRig refactor of issue 24): refactors
of the loaders, the networks or the rig must leave the shipped weights' behaviour unchanged.

Each output is summarised by its mean, its RMS and 16 evenly strided values, compared to 1e-4 (relative to the
tensor's RMS): tight enough that any change of a computation shows, loose enough for float reordering."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
MODELS = ROOT / "models"
RECORD = Path(__file__).parent / "shipped_outputs.json"
SHIPPED = sorted(p.name for p in MODELS.iterdir() if p.name != "README.md")


def _summary(x: torch.Tensor) -> dict[str, list[float] | float]:
    flat = x.detach().double().flatten()
    index = torch.linspace(0, flat.numel() - 1, 16).round().long()
    return {"mean": float(flat.mean()), "rms": float(flat.pow(2).mean().sqrt()), "values": flat[index].tolist()}


@torch.no_grad()
def _stylerig_outputs(folder: Path) -> dict[str, dict]:
    from facerig.face3d import load_model
    from facerig.face3d.rotation import axis_angle_to_euler, euler_to_axis_angle
    from facerig.stylerig.model import StyleRigModel

    model = StyleRigModel.from_pretrained(folder).float().eval()
    face = load_model()
    template = face.default_params(4)
    w = torch.cat([model.latent(seed) for seed in (0, 1, 7, 123)])
    source = model.face_params(w, template)
    yaw, pitch, roll = axis_angle_to_euler(source.rotation).unbind(1)
    smile = source.expression.clone()
    smile[:, [face.expression_index(n) for n in ("mouthSmile_L", "mouthSmile_R")]] = 0.8
    light = source.light.flip(0)  # another face's light
    targets = {"pose": (source.replace(rotation=euler_to_axis_angle(yaw + 20, pitch, roll)), ("rotation",)),
               "expression": (source.replace(expression=smile), ("expression",)),
               "light": (source.replace(light=light), ("light",)),
               "all": (source.replace(rotation=euler_to_axis_angle(yaw - 15, pitch, roll), expression=smile,
                                      light=light), ("rotation", "expression", "light"))}
    out = {"latent": _summary(w), "image": _summary(model.generate(w)), "dfr": _summary(model.latent_vector(w))}
    for mode, (target, fields) in targets.items():
        edited, used = model.rig(w, target, fields)
        assert used == mode
        out[f"rig_{mode}"] = _summary(edited)
        out[f"rig_{mode}_image"] = _summary(model.generate(edited))
    return out


@torch.no_grad()
def _diffusion_outputs(file: Path) -> dict[str, dict]:
    from facerig.diffusion.checkpoint import load_checkpoint

    model, _ = load_checkpoint(file)
    g = torch.Generator().manual_seed(0)
    image, buffers = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, torch.rand(2, 9, 64, 64, generator=g)
    x, t = torch.randn(2, 3, 64, 64, generator=g), torch.tensor([100, 800])
    latent = model.encode(image)
    return {"latent": _summary(latent), "output": _summary(model(x, t, buffers, latent=latent))}


def shipped_outputs(name: str) -> dict[str, dict]:
    path = MODELS / name
    return _stylerig_outputs(path) if path.is_dir() else _diffusion_outputs(path)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_gives_its_recorded_outputs(name):
    recorded = json.loads(RECORD.read_text())
    assert name in recorded, f"{name}: no recorded outputs (run python3 tests/test_shipped_models.py --record)"
    now = shipped_outputs(name)
    assert now.keys() == recorded[name].keys()
    for key, want in recorded[name].items():
        got, scale = now[key], max(want["rms"], 1e-6)
        for stat in ("mean", "rms"):
            assert got[stat] == pytest.approx(want[stat], abs=1e-4 * scale), (name, key, stat)
        assert got["values"] == pytest.approx(want["values"], abs=1e-4 * scale), (name, key)


if __name__ == "__main__":  # python3 tests/test_shipped_models.py --record [NAME ...]: only models meant to change
    if sys.argv[1:2] != ["--record"]:
        sys.exit("usage: python3 tests/test_shipped_models.py --record [NAME ...]   (default: every model)")
    torch.set_num_threads(1)
    names = sys.argv[2:] or SHIPPED
    recorded = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    recorded.update({name: shipped_outputs(name) for name in names})
    RECORD.write_text(json.dumps(dict(sorted(recorded.items())), indent=1) + "\n")
    print(f"wrote {RECORD}: {', '.join(names)}")
