import math

import numpy as np
import pytest
import torch
from helpers import assert_close, require

from facerig.eval.edit_accuracy import edit_accuracy, geodesic_angle, param_errors
from facerig.face3d.rotation import axis_angle_to_matrix, matrix_to_euler


def _params(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "light": torch.randn(b, 9, 3, generator=g, dtype=torch.float64),
        "expression": torch.randn(b, 20, generator=g, dtype=torch.float64),
        "rotation": 0.3 * torch.randn(b, 3, generator=g, dtype=torch.float64),
    }


def test_identical_parameters_give_zero_error():
    p = _params()
    errs = param_errors(p, {k: v.clone() for k, v in p.items()})
    assert set(errs) == {"light_rmse", "expression_rmse", "pose_rmse_deg", "pose_geodesic_deg"}
    for name, e in errs.items():
        assert_close(e, torch.zeros(2, dtype=torch.float64), atol=1e-6, msg=name)


def test_known_offsets_give_known_rmse():
    target = _params(b=1)
    estimate = {
        "light": target["light"] + 0.1,
        "expression": target["expression"] + torch.tensor([3.0, 4.0] + [0.0] * 18, dtype=torch.float64),
        "rotation": torch.zeros(1, 3, dtype=torch.float64),
    }
    target["rotation"] = torch.tensor([[0.0, math.radians(10), 0.0]], dtype=torch.float64)  # 10 deg of yaw
    errs = param_errors(estimate, target)
    assert_close(errs["light_rmse"], torch.tensor([0.1], dtype=torch.float64), atol=1e-12)
    assert_close(errs["expression_rmse"], torch.tensor([5 / math.sqrt(20)], dtype=torch.float64), atol=1e-12)
    assert_close(errs["pose_rmse_deg"], torch.tensor([10 / math.sqrt(3)], dtype=torch.float64), atol=1e-9)
    assert_close(errs["pose_geodesic_deg"], torch.tensor([10.0], dtype=torch.float64), atol=1e-9)


def test_roll_difference_wraps_around_180_degrees():
    a = {"rotation": torch.tensor([[0.0, 0.0, math.radians(179)]], dtype=torch.float64)}
    b = {"rotation": torch.tensor([[0.0, 0.0, math.radians(-179)]], dtype=torch.float64)}
    errs = param_errors(a, b)
    assert_close(errs["pose_rmse_deg"], torch.tensor([2 / math.sqrt(3)], dtype=torch.float64), atol=1e-9)
    assert_close(errs["pose_geodesic_deg"], torch.tensor([2.0], dtype=torch.float64), atol=1e-9)


def test_pose_errors_agree_with_scipy():
    Rotation = require("scipy.spatial.transform").Rotation
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 3)) * 0.4, rng.normal(size=(6, 3)) * 0.4
    ra, rb = Rotation.from_rotvec(a), Rotation.from_rotvec(b)
    errs = param_errors({"rotation": torch.tensor(a)}, {"rotation": torch.tensor(b)})
    assert_close(errs["pose_geodesic_deg"], torch.tensor(np.degrees((ra.inv() * rb).magnitude())), atol=1e-9)
    # face3d's R = Ry(yaw) Rx(pitch) Rz(roll) is scipy's intrinsic "YXZ" sequence.
    d = ra.as_euler("YXZ", degrees=True) - rb.as_euler("YXZ", degrees=True)
    d = (d + 180) % 360 - 180
    assert_close(errs["pose_rmse_deg"], torch.tensor(np.sqrt((d**2).mean(-1))), atol=1e-9)
    assert_close(matrix_to_euler(axis_angle_to_matrix(torch.tensor(a))), torch.tensor(ra.as_euler("YXZ", degrees=True)), atol=1e-9)


def test_geodesic_angle_is_accurate_for_tiny_rotations():
    tiny = torch.tensor([[1e-7, 0.0, 0.0]], dtype=torch.float64)
    angle = geodesic_angle(torch.eye(3, dtype=torch.float64)[None], axis_angle_to_matrix(tiny))
    assert_close(angle, torch.tensor([1e-7], dtype=torch.float64), rtol=1e-6, atol=0)


def test_edit_accuracy_reports_source_baseline_and_gap_closed():
    source = {"light": torch.zeros(2, 9, 3, dtype=torch.float64), "expression": torch.zeros(2, 4, dtype=torch.float64)}
    target = {"light": torch.full((2, 9, 3), 0.2, dtype=torch.float64), "expression": torch.zeros(2, 4, dtype=torch.float64)}
    edited = {"light": torch.full((2, 9, 3), 0.15, dtype=torch.float64), "expression": torch.tensor([[0.1] * 4, [0.0] * 4], dtype=torch.float64)}
    acc = edit_accuracy(source, target, edited)
    assert_close(acc.source["light_rmse"], torch.full((2,), 0.2, dtype=torch.float64), atol=1e-12)
    assert_close(acc.edited["light_rmse"], torch.full((2,), 0.05, dtype=torch.float64), atol=1e-12)
    closed = acc.gap_closed()
    assert_close(closed["light_rmse"], torch.full((2,), 0.75, dtype=torch.float64), atol=1e-12)
    # Expression was not edited: no gap to close, the edited error (0.1) is leakage.
    assert torch.isnan(closed["expression_rmse"]).all()
    assert_close(acc.edited["expression_rmse"], torch.tensor([0.1, 0.0], dtype=torch.float64), atol=1e-12)
    assert "pose_rmse_deg" not in acc.source  # rotation was in none of the dicts


def test_mismatched_parameters_are_refused():
    p = _params(b=1)
    with pytest.raises(ValueError, match="expression"):
        param_errors({**p, "expression": p["expression"][:, :10]}, p)
    with pytest.raises(ValueError, match="axis-angle"):
        param_errors({"rotation": torch.zeros(1, 4)}, {"rotation": torch.zeros(1, 4)})
