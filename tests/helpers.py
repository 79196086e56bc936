"""Close-comparison helpers shared by every test module."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

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


def unavailable(reason: str) -> None:
    """A check that cannot run: skipped locally, but a failure under CI (env var CI set), where every
    check must run: a silent skip there hides a missing test dependency or data set."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: checks may not be skipped)", pytrace=False)
    pytest.skip(reason)


def require(module: str) -> ModuleType:
    """Import a reference library (a ``test`` extra); ``unavailable`` when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        unavailable(f"{module} not installed ({exc}); pip install -e '.[test]'")


def shared_path(*parts: str) -> Path:
    """A path under the shared data folder (``shared_path()`` is the folder); ``unavailable`` when missing."""
    root = Path(os.environ.get("FACERIG_SHARED", "../shared")).expanduser().resolve()
    path = root.joinpath(*parts)
    if not path.exists():
        unavailable(f"shared data not found: {path} (set FACERIG_SHARED)")
    return path


def icosphere(subdivisions: int = 3, radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices (V,3) and counter-clockwise (outward) triangles (F,3) of a subdivided icosahedron."""
    t = (1 + 5**0.5) / 2
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6],
         [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10],
         [8, 6, 7], [9, 8, 1]]
    verts = [torch.tensor(p, dtype=torch.float64) for p in v]
    verts = [p / p.norm() for p in verts]
    faces = f
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / m.norm())
                cache[key] = len(verts) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = new
    return torch.stack(verts) * radius, torch.tensor(faces, dtype=torch.long)


def mesh_model(vertices: torch.Tensor, faces: torch.Tensor, albedo: torch.Tensor | None = None):
    """A MorphableModel with no bases around a fixed mesh; landmarks all on vertex 0."""
    from facerig.face3d.model import MorphableModel

    return MorphableModel(
        template=vertices, shape_basis=torch.zeros(0, *vertices.shape), expression_basis=torch.zeros(0, *vertices.shape),
        faces=faces, landmark_vertices=torch.zeros(68, 3, dtype=torch.long), landmark_bary=torch.tensor([1.0, 0, 0]).repeat(68, 1),
        albedo_mean=albedo,
    )
