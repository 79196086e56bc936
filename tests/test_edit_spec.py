import math

import pytest
import torch
from helpers import assert_close, shared_path

from facerig.edit import EditSpec, apply_edit, crop_centre, parse_expression, parse_vector
from facerig.face3d.ict import load_ict
from facerig.face3d.light import directional_light, dominant_direction
from facerig.face3d.rotation import axis_angle_to_euler


@pytest.fixture(scope="module")
def ict():
    return load_ict(shared_path("assets", "ict-facekit"))


def test_parse_expression_and_vector():
    assert parse_expression("mouthSmile_L=0.8, jawOpen=0.3") == {"mouthSmile_L": 0.8, "jawOpen": 0.3}
    assert parse_expression("") == {}
    with pytest.raises(ValueError, match="not NAME=WEIGHT"):
        parse_expression("smile")
    with pytest.raises(ValueError, match="not a number"):
        parse_expression("jawOpen=wide")
    assert parse_vector("-1,0.3,0.6", "--light-dir") == (-1.0, 0.3, 0.6)
    assert parse_vector(None, "--light-dir") is None
    with pytest.raises(ValueError, match="--light-dir must be three"):
        parse_vector("1,2", "--light-dir")


@pytest.mark.parametrize("bad, message", [
    ({"yaw": math.nan}, "yaw must be a finite number"),
    ({"pitch": math.inf}, "pitch must be a finite number"),
    ({"roll": 200.0}, "roll 200 is outside"),
    ({"light_dir": (0.0, 0.0, 0.0)}, "light direction must not be zero"),
    ({"light_dir": (1.0, math.nan, 0.0)}, "three finite numbers"),
    ({"light_intensity": -1.0}, "light intensity -1 is outside"),
    ({"expression": {"jawOpen": 1e30}}, "expression weight jawOpen 1e\\+30 is outside"),
    ({"expression": {"jawOpen": math.nan}}, "expression weight jawOpen must be a finite number"),
])
def test_validate_refuses_values_that_cannot_make_a_picture(bad, message):
    with pytest.raises(ValueError, match=message):
        EditSpec(**bad).validate()


def test_validate_checks_expression_names_against_the_face_model(ict):
    EditSpec(expression={"mouthSmile_L": 0.8}).validate(ict)
    with pytest.raises(ValueError, match="unknown expression 'smile'"):
        EditSpec(expression={"smile": 0.8}).validate(ict)


def test_spec_dict_round_trip():
    spec = EditSpec(light_from="a.png", light_dir=(-1.0, 0.3, 0.6), yaw=20.0, expression={"jawOpen": 0.3})
    assert EditSpec.from_dict(spec.to_dict()) == spec
    assert spec.target_photos() == {"light": "a.png"}
    with pytest.raises(ValueError, match="unknown edit fields"):
        EditSpec.from_dict({"yaww": 3})


def test_apply_edit_explicit_values(ict):
    source = ict.default_params(1)
    spec = EditSpec(yaw=25.0, light_dir=(-1.0, 0.0, 1.0), expression={"jawOpen": 0.4})
    edited = apply_edit(ict, source, spec, {})
    assert axis_angle_to_euler(edited.rotation)[0, 0].item() == pytest.approx(25.0, abs=1e-3)
    assert_close(dominant_direction(edited.light), torch.nn.functional.normalize(torch.tensor([[-1.0, 0.0, 1.0]]), dim=-1), atol=1e-5)
    assert edited.expression[0, ict.expression_index("jawOpen")] == pytest.approx(0.4)
    assert torch.equal(edited.shape, source.shape)
    # the face stays where FFHQ alignment would put it, although the head turned about the neck
    assert_close(crop_centre(ict, edited), crop_centre(ict, source), atol=1e-3)
    unanchored = edited.replace(cam=source.cam)
    assert (crop_centre(ict, unanchored) - crop_centre(ict, source)).norm() > 1.0


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
