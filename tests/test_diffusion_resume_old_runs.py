"""A run folder written by the trainer from before the shared training core (facerig.training) resumes with
today's code and ends exactly where the old code, never interrupted, ends."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import unavailable
from test_diffusion_train import make_dataset

from facerig.diffusion.model import CONFIGS, ModelConfig
from facerig.diffusion.train import TrainConfig, train
from facerig.weights import read_tensors

REPO = Path(__file__).resolve().parents[1]
BEFORE_SHARED_CORE = "66cbde9"  # the last commit whose diffusion/train.py had its own run folder and loop
# The smallest model the config allows (its ResNet-18 encoder is most of it): fast steps.
FIXTURE_MODEL = dict(image_size=16, model_channels=32, channel_mult=[1], num_res_blocks=1, attention_resolutions=[],
                     latent_dim=8)
KILLED_IN_STEP = 6  # the old run dies inside step 6: its step-4 checkpoint is the latest, logs reach step 5

OLD_RUNS = """
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
import facerig
assert facerig.__file__.startswith(sys.argv[1]), facerig.__file__
torch.set_num_threads(1)
from facerig.diffusion.model import CONFIGS, ModelConfig
CONFIGS["fixture16"] = ModelConfig(**json.loads(sys.argv[2]))
import facerig.diffusion.train as old
settings = json.loads(sys.argv[3])
old.train(old.TrainConfig(out=sys.argv[4], **settings))
calls, real_loss = [0], old.training_loss
def dying_loss(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(sys.argv[6]):
        raise KeyboardInterrupt
    return real_loss(*args, **kwargs)
old.training_loss = dying_loss
try:
    old.train(old.TrainConfig(out=sys.argv[5], **settings))
except KeyboardInterrupt:
    pass
"""


def _old_package(tmp: Path) -> Path:
    """``src`` of the facerig package as it was at BEFORE_SHARED_CORE."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_SHARED_CORE, "src/facerig"],
                                 capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable(f"the code of commit {BEFORE_SHARED_CORE} is not in this checkout ({exc})")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "src"


def _lines(path: Path) -> list[dict]:
    """A log's lines without their wall-clock field."""
    return [{k: v for k, v in json.loads(ln).items() if k != "elapsed_s"} for ln in path.read_text().splitlines()]


def test_a_run_from_before_the_shared_core_resumes_bit_identically(tmp_path, monkeypatch, one_thread):
    data = make_dataset(tmp_path / "data", n=8, size=16)
    settings = dict(data=str(data), model="fixture16", steps=6, batch_size=2, holdout=2, ema=0.9, ckpt_every=4,
                    log_every=1, sample_every=3, sample_steps=2, seed=7, prediction="v", weighting="min-snr",
                    flip=True, heldout_data=str(data), eval_every=1)
    full, killed = tmp_path / "old_full", tmp_path / "old_killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", OLD_RUNS, str(_old_package(tmp_path / "old")), json.dumps(FIXTURE_MODEL),
                    json.dumps(settings), str(full), str(killed), str(KILLED_IN_STEP)],
                   check=True, env=env, timeout=600, capture_output=True)
    assert json.loads((killed / "latest.json").read_text())["step"] == 4
    assert [r["step"] for r in _lines(killed / "log.jsonl")] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in _lines(killed / "heldout.jsonl")] == [1, 2, 3, 4, 5]

    monkeypatch.setitem(CONFIGS, "fixture16", ModelConfig(**FIXTURE_MODEL))
    train(TrainConfig(out=str(killed), resume=True, **settings))

    assert (killed / "latest.json").read_text() == (full / "latest.json").read_text()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    a, b = full / "checkpoints" / "step_00000006", killed / "checkpoints" / "step_00000006"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for name in ("model.safetensors", "ema.safetensors", "trainer.safetensors", "rng.rank0.safetensors"):
        (old_tensors, old_meta), (new_tensors, new_meta) = read_tensors(a / name), read_tensors(b / name)
        assert old_tensors.keys() == new_tensors.keys() and old_meta == new_meta, name
        for key in old_tensors:
            assert torch.equal(old_tensors[key], new_tensors[key]), f"{name}: {key}"
    old_state, new_state = (json.loads((c / "trainer.json").read_text()) for c in (a, b))
    assert new_state["train_config"].pop("resume") and not old_state["train_config"].pop("resume")
    assert new_state["train_config"].pop("out") == str(killed) and old_state["train_config"].pop("out") == str(full)
    assert new_state == old_state  # every field, every TrainConfig option with its old default
    assert _lines(killed / "log.jsonl") == _lines(full / "log.jsonl")  # step 5 dropped, then trained again
    assert _lines(killed / "heldout.jsonl") == _lines(full / "heldout.jsonl")
    for png in ("step_00000003.png", "step_00000006.png"):
        assert (killed / "samples" / png).read_bytes() == (full / "samples" / png).read_bytes()
