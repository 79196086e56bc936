"""``facerig stylerig train``, stage by stage, on a random 16 px generator. dlib finds no face in its images,
so a stand-in capture measures one thing in them, the brightness, as the light's ambient level: the DFR
must learn to read it, and a light RigNet to change it on request."""

import json

import numpy as np
import pytest
import torch
from helpers import shared_path

from facerig.face3d.ict import load_ict
from facerig.stylerig.generator_io import GENERATOR_FORMAT
from facerig.stylerig.model import StyleRigModel
from facerig.stylerig.recipe import recipe_from_dict
from facerig.stylerig.rig import principal_directions
from facerig.stylerig.rig_train import RigTrainConfig, train
from facerig.stylerig.stylegan2 import Generator
from facerig.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_thread")
CHANNELS = {4: 32, 8: 32, 16: 16}
GEN_CONFIG = {"size": 16, "style_dim": 32, "n_mlp": 2, "channels": CHANNELS}
RECIPE = {"data": {"samples": 128}, "dfr": {"kind": "image", "steps": 60, "batch_size": 16},
          "rignet": {"modes": ["light"], "steps": 30, "batch_size": 8}}


class BrightnessCapture:
    """Stands in for ``PhotoCapture``: the default face, lit with an ambient level raised by the image's mean
    brightness; with ``miss``, every ``miss``-th image of a batch has no face. Counts the images it sees."""

    size = 256

    def __init__(self, face, miss: int = 0):
        self.face, self.miss, self.images = face, miss, 0

    def many(self, images: np.ndarray):
        self.images += len(images)
        found = np.array([not self.miss or i % self.miss != 0 for i in range(len(images))], dtype=bool)
        kept = images[found]
        if not len(kept):
            return [], found, None
        params = self.face.default_params(len(kept))
        params.light = params.light.clone()
        params.light[:, 0] += torch.from_numpy(kept.reshape(len(kept), -1).mean(1) / 255).float()[:, None]
        fit = type("Fit", (), {"params": params, "landmark_error": torch.ones(len(kept))})()
        items = [type("Aligned", (), {"transform": np.eye(3)})() for _ in kept]
        return items, found, fit


@pytest.fixture(scope="module")
def face():
    return load_ict(shared_path("assets", "ict-facekit"))


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gan") / "g_ema.safetensors"
    save_weights(Generator(16, style_dim=32, n_mlp=2, channels=CHANNELS).state_dict(), path, GENERATOR_FORMAT, GEN_CONFIG)
    return path


def _train(face, generator_file, out, recipe=RECIPE, capture=None, **options):
    cfg = RigTrainConfig(generator=str(generator_file), out=str(out), **{"threads": 1, **options})
    capture = capture or BrightnessCapture(face)
    return train(cfg, recipe_from_dict(recipe, "test recipe"), face=face, capture=capture), capture


@pytest.fixture(scope="module")
def run(face, generator_file, tmp_path_factory):
    """One run with an image DFR and a light RigNet; every eighth face missed."""
    out = tmp_path_factory.mktemp("rig") / "run"
    folder, _ = _train(face, generator_file, out, capture=BrightnessCapture(face, miss=8))
    return out, StyleRigModel.from_pretrained(folder)


def _brightness(model, w):
    return ((model.generate(w) + 1) / 2).flatten(1).mean(1)


def _ambient(model, face, w):
    return model.face_params(w, face.default_params(1)).light[:, 0, 0] - face.default_params(1).light[0, 0, 0]


def test_captures_count_the_faces_found_and_give_the_framing(run):
    out, model = run
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["samples"], summary["faces_found"]) == (128, 112)  # every eighth missed
    assert summary["frame"] == pytest.approx([0.5, 0.5, 1.0]) and model.config.frame == pytest.approx([0.5, 0.5, 1.0])


@torch.no_grad()
def test_dfr_reads_what_capture_measured_on_unseen_faces(run, face):
    _, model = run
    w = torch.cat([model.latent(seed) for seed in range(1000, 1032)])
    read, measured = _ambient(model, face, w), _brightness(model, w)
    assert torch.corrcoef(torch.stack([read, measured]))[0, 1] > 0.9
    assert (read - measured).abs().mean() < 0.3 * measured.std()


@torch.no_grad()
def test_rignet_moves_the_dfr_read_out_the_way_it_is_asked(run, face):
    _, model = run
    w = torch.cat([model.latent(seed) for seed in range(2000, 2016)])
    source = model.face_params(w, face.default_params(1))
    for change in (0.1, -0.1):
        light = source.light.clone()
        light[:, 0] += change
        edited, mode = model.rig(w, source.replace(light=light), ("light",))
        moved = _ambient(model, face, edited) - _ambient(model, face, w)
        assert mode == "light" and (moved * change > 0).float().mean() >= 0.9
        assert (moved / change).median() > 0.5  # most of the way there


def test_a_finished_run_resumes_without_redoing_anything(run, face, generator_file):
    out, model = run
    stages = {p: p.read_bytes() for p in out.rglob("*.safetensors") if p.parent.name != "model"}
    again = BrightnessCapture(face, miss=8)
    with pytest.raises(ValueError, match="--resume"):
        _train(face, generator_file, out, capture=again)
    folder, again = _train(face, generator_file, out, capture=again, resume=True, threads=None)
    assert again.images == 0 and {p: p.read_bytes() for p in stages} == stages
    resumed = StyleRigModel.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), model.state_dict().values()))
    changed = {**RECIPE, "data": {"samples": 96}}
    with pytest.raises(ValueError, match=r"data\.samples: 128 -> 96"):
        _train(face, generator_file, out, changed, resume=True)
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        _train(face, generator_file, out, resume=True, seed=1)


def test_a_killed_capture_resumes_at_the_missing_chunk(face, generator_file, tmp_path):
    recipe = {**RECIPE, "dfr": {"kind": "mlp", "steps": 2}, "rignet": {"modes": ["light"], "steps": 1}}
    _, first = _train(face, generator_file, tmp_path / "run", recipe)
    chunks = sorted((tmp_path / "run" / "data").glob("chunk_*.safetensors"))
    saved = chunks[1].read_bytes()
    chunks[1].unlink()
    for stage in ("dfr_mlp.safetensors", "rignet_light.safetensors"):
        (tmp_path / "run" / stage).unlink()
    _, second = _train(face, generator_file, tmp_path / "run", recipe, resume=True)
    assert (first.images, second.images) == (128, 64) and chunks[1].read_bytes() == saved


def test_a_run_made_before_recipes_resumes(face, generator_file, tmp_path):
    """Its config.json holds the old command line's flat settings (removed options off)."""
    recipe = {"data": {"samples": 64}, "dfr": {"kind": "mlp", "steps": 2}, "rignet": {"modes": ["light"], "steps": 1}}
    out = tmp_path / "old"
    _train(face, generator_file, out, recipe)
    old = {"generator": str(generator_file), "out": str(out), "samples": 64, "truncation": 0.8, "mixing": 0.5,
           "dfr": "mlp", "dfr_steps": 2, "rig_steps": 1, "batch_size": 64, "rig_batch_size": 64, "lr": 1e-3,
           "modes": "light", "w_rec": 1.0, "w_edit": 1.0, "w_consist": 1.0, "w_real": 0.0, "mode_weights": "",
           "dfr_augment": False, "steered": 0, "edited": 0, "edited_by": None, "edit_targets": "0", "steering": False,
           "relative": False, "subspace": 0, "reuse": None, "threads": 2, "seed": 0}  # no w_identity yet: its default
    (out / "config.json").write_text(json.dumps(old))
    _train(face, generator_file, out, recipe, resume=True)
    (out / "config.json").write_text(json.dumps({**old, "rig_steps": 5}))
    with pytest.raises(ValueError, match=r"rignet\.steps: 5 -> 1"):
        _train(face, generator_file, out, recipe, resume=True)
    (out / "config.json").write_text(json.dumps({**old, "w_real": 50.0}))
    with pytest.raises(ValueError, match="w_real = 50.0, an option since removed"):
        _train(face, generator_file, out, recipe, resume=True)


def test_a_variant_reuses_the_captures_and_dfr_and_keeps_its_rignet_form(run, face, generator_file, tmp_path):
    out, model = run
    recipe = {**RECIPE, "rignet": {"modes": ["light"], "steps": 2, "batch_size": 4, "form": "relative", "subspace": 4,
                                   "weights": {"consist": 0.0}}}
    seen = BrightnessCapture(face)
    folder, _ = _train(face, generator_file, tmp_path / "variant", recipe, capture=seen, reuse=str(out))
    assert seen.images == 0 and not (tmp_path / "variant" / "data").exists()
    assert not (tmp_path / "variant" / "dfr_image.safetensors").exists()  # the reused run's DFR
    variant = StyleRigModel.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(variant.dfr.state_dict().values(), model.dfr.state_dict().values()))
    assert variant.config.relative and variant.config.subspace == 4
    torch.testing.assert_close(variant.rignets["light"].basis, principal_directions(variant.generator, 4))
    # A variant of a variant finds the captures through it.
    _train(face, generator_file, tmp_path / "variant2", {**RECIPE, "rignet": {"modes": ["light"], "steps": 1}},
           reuse=str(tmp_path / "variant"))


def test_an_edited_round_captures_faces_edited_by_earlier_rigs(run, face, generator_file, tmp_path):
    out, _ = run
    recipe = {**RECIPE, "data": {"samples": 64, "edited": 24}, "dfr": {"kind": "mlp", "steps": 2},
              "rignet": {"modes": ["light"], "steps": 1}}
    rig = str(out / "model")
    _train(face, generator_file, tmp_path / "round", recipe, edited_by=f"{rig}, {rig}")
    summary = json.loads((tmp_path / "round" / "summary.json").read_text())
    assert (summary["samples"], summary["edited"], summary["edited_faces_found"]) == (64, 48, 48)
    report = json.loads((tmp_path / "round" / "dfr_mlp.json").read_text())
    assert report["train_samples"] + report["heldout_samples"] == 64 + 48  # the DFR learns from both
    for bad in ({}, {"reuse": str(out), "edited_by": rig}):
        with pytest.raises(ValueError, match="edited"):
            _train(face, generator_file, tmp_path / "bad", recipe, **bad)
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    save_weights(Generator(16, 32, 2, channels=CHANNELS).state_dict(), other, GENERATOR_FORMAT, GEN_CONFIG)
    with pytest.raises(ValueError, match="another generator"):
        _train(face, other, tmp_path / "other", recipe, edited_by=rig)


def test_too_few_faces_is_one_clear_error(face, generator_file, tmp_path):
    with pytest.raises(ValueError, match="found a face in only 0 of 64"):
        _train(face, generator_file, tmp_path / "none", {**RECIPE, "data": {"samples": 64}},
               capture=BrightnessCapture(face, miss=1))



def test_inference_imports_no_training_module():
    """The editor, the evaluation and generator loading never load the trainers (a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, facerig.stylerig.editor, facerig.stylerig.evaluate, facerig.stylerig.gan_eval; "
            "print([m for m in sys.modules if m.startswith(('facerig.training', 'facerig.diffusion.train')) "
            "or m.split('.')[-1] in ('rig_train', 'gan_train', 'rig_data', 'dfr_fit', 'rignet_fit')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from facerig.stylerig.generator_io import LATEST_FILE
    from facerig.training import LATEST_FILE as RUN_LATEST

    assert LATEST_FILE == RUN_LATEST  # the same run folders
