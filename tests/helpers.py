"""Close-comparison helpers shared by every test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-5, msg: str = "") -> None:
    """torch.testing.assert_close that also reports the worst element, for shape-aligned tensors."""
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected, dtype=actual.dtype, device=actual.device)
    assert actual.shape == expected.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs()
    if not torch.all(diff <= atol + rtol * expected.abs()):
        worst = int(diff.argmax())
        raise AssertionError(
            f"{msg} max abs diff {diff.max().item():.3e} at flat index {worst} "
            f"(actual {actual.flatten()[worst].item():.6g}, expected {expected.flatten()[worst].item():.6g}), "
            f"atol={atol} rtol={rtol}"
        )


def shared_path(*parts: str) -> Path:
    """A path under the shared data folder; skips the test when it is missing."""
    root = Path(os.environ.get("FACERIG_SHARED", "../shared")).expanduser().resolve()
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set FACERIG_SHARED)")
    return path
