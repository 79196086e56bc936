import json

import pytest
import torch
from helpers import assert_close, shared_path

from facerig.diffusion.checkpoint import save_weights
from facerig.diffusion.edit import EditSpec, Editor, alignment_centre, apply_edit, parse_expression, write_edit
from facerig.diffusion.model import DiffusionRig
from facerig.face3d.ict import load_ict
from facerig.face3d.rotation import axis_angle_to_euler
from facerig.render import directional_light, dominant_direction


@pytest.fixture(scope="module")
def ict():
    return load_ict(shared_path("assets", "ict-facekit"))


def test_parse_expression():
    assert parse_expression("mouthSmile_L=0.8, jawOpen=0.3") == {"mouthSmile_L": 0.8, "jawOpen": 0.3}
    assert parse_expression("") == {}
    with pytest.raises(ValueError, match="not NAME=WEIGHT"):
        parse_expression("smile")
    with pytest.raises(ValueError, match="not a number"):
        parse_expression("jawOpen=wide")


def test_apply_edit_explicit_values(ict):
    source = ict.default_params(1)
    spec = EditSpec(yaw=25.0, light_dir=(-1.0, 0.0, 1.0), expression={"jawOpen": 0.4})
    edited = apply_edit(ict, source, spec, {})
    assert axis_angle_to_euler(edited.rotation)[0, 0].item() == pytest.approx(25.0, abs=1e-3)
    assert_close(dominant_direction(edited.light), torch.nn.functional.normalize(torch.tensor([[-1.0, 0.0, 1.0]]), dim=-1), atol=1e-5)
    assert edited.expression[0, ict.expression_index("jawOpen")] == pytest.approx(0.4)
    assert torch.equal(edited.shape, source.shape)
    # the face stays where FFHQ alignment would put it, although the head turned about the neck
    assert_close(alignment_centre(ict, edited, 256), alignment_centre(ict, source, 256), atol=1e-3)
    unanchored = edited.replace(cam=source.cam)
    assert (alignment_centre(ict, unanchored, 256) - alignment_centre(ict, source, 256)).norm() > 1.0


def test_apply_edit_from_target_params(ict):
    source = ict.default_params(1)
    target = source.clone()
    target.light = directional_light(torch.tensor([[0.0, 1.0, 0.5]]), 0.7, 0.3)
    target.rotation = torch.tensor([[0.1, -0.3, 0.05]])
    target.expression[:, 3] = 0.7
    e = apply_edit(ict, source, EditSpec(light_from="x", pose_from="y", expression_from="z"),
                   {"light": target, "pose": target, "expression": target})
    assert torch.equal(e.light, target.light) and torch.equal(e.rotation, target.rotation)
    assert torch.equal(e.expression, target.expression)


def test_editor_end_to_end_is_seeded(tmp_path, ict):
    torch.manual_seed(0)
    net = DiffusionRig("tiny")
    save_weights(net.state_dict(), tmp_path / "model.safetensors", net.config, 0)
    editor = Editor(tmp_path / "model.safetensors", face_model=ict)
    photo = str(shared_path("data", "ffhq-samples", "00001.png"))
    spec = EditSpec(yaw=-20.0, expression={"mouthSmile_L": 0.8})
    a = editor.edit(photo, spec, steps=2, seed=3)
    b = editor.edit(photo, spec, steps=2, seed=3)
    c = editor.edit(photo, spec, steps=2, seed=4)
    assert torch.equal(a.edited, b.edited) and not torch.equal(a.edited, c.edited)
    assert a.edited.shape == (3, 64, 64)
    assert not torch.equal(a.source_buffers.normal, a.target_buffers.normal)
    write_edit(tmp_path / "out", a, spec, ict)
    record = json.loads((tmp_path / "out" / "edit.json").read_text())
    assert record["edit"]["yaw"] == -20.0 and len(record["target_params"]["light"]) == 9
    for name in ("source.png", "edited.png", "sheet.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
