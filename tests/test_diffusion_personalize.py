import json
import os

import pytest
import torch
from helpers import shared_path

from facerig.dataset import CaptureDataset
from facerig.diffusion.checkpoint import load_checkpoint
from facerig.diffusion.personalize import PersonalizeConfig, personalize
from facerig.paths import shipped_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_personalize_captures_the_album_trains_stage_2_and_resumes(tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    for i in range(6):
        os.symlink(shared_path("data", "ffhq-samples", f"{i:05d}.png"), album / f"{i:05d}.png")
    out = tmp_path / "me"
    cfg = PersonalizeConfig(album=str(album), out=str(out), steps=2, batch_size=2, ckpt_every=1, holdout=2,
                            precision="fp32")
    personalize(cfg)
    records = [json.loads(line) for line in (out / "data").glob("manifest*.jsonl").__next__().read_text().splitlines()]
    assert sum(r["status"] == "ok" for r in records) >= 5
    data = CaptureDataset(out / "data")
    shapes = [data.get(i).params["shape"] for i in range(len(data))]
    assert all(torch.equal(s, shapes[0]) for s in shapes)  # one identity for the whole album
    assert load_checkpoint(out / "model")[1].image_size == 64
    meta = json.loads((out / "model" / "checkpoints" / "step_00000002" / "trainer.json").read_text())
    assert meta["stage"] == 2 and meta["train_config"]["init"] == str(shipped_model())
    personalize(PersonalizeConfig(**{**cfg.__dict__, "steps": 3}))  # resumes both halves
    steps = [json.loads(line)["step"] for line in (out / "model" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_personalize_refuses_an_album_without_photos(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos found"):
        personalize(PersonalizeConfig(album=str(tmp_path / "empty"), out=str(tmp_path / "out")))
