import csv
from collections import defaultdict

import numpy as np
import pytest
from helpers import require, shared_path, unavailable

from facerig.eval.frechet import frechet_distance, trace_sqrt_product
from facerig.eval.identity import analyze_face
from facerig.eval.items import read_rgb


def _features(n: int, d: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Correlated features with dlib-embedding-like scale (std ~0.05 per dimension).
    return rng.normal(size=(n, d)) @ (0.05 * rng.normal(size=(d, d)) / np.sqrt(d))


@pytest.mark.parametrize("n", [20, 400])  # singular (n < d) and full-rank covariances
def test_identical_sets_give_zero(n):
    x = _features(n)
    assert frechet_distance(x, x.copy()) < 1e-6


def test_mean_shift_adds_its_squared_length_and_grows():
    x = _features(300)
    direction = np.random.default_rng(1).normal(size=128)
    direction /= np.linalg.norm(direction)
    values = [frechet_distance(x, x + s * direction) for s in (0.1, 0.2, 0.4, 0.8)]
    # Same covariance: the trace terms cancel and only ||shift||^2 remains.
    np.testing.assert_allclose(values, [0.01, 0.04, 0.16, 0.64], rtol=1e-6, atol=1e-7)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_trace_sqrt_product_of_diagonal_covariances():
    a, b = np.diag([4.0, 1.0, 0.0]), np.diag([1.0, 9.0, 5.0])
    assert trace_sqrt_product(a, b) == pytest.approx(2 + 3 + 0, abs=1e-12)


def test_trace_sqrt_product_matches_pytorch_fid_sqrtm_route():
    # Well-conditioned covariances: scipy's sqrtm of the product (pytorch-fid) gives the same number.
    linalg = require("scipy.linalg")
    x, y = _features(500, 16, seed=2), _features(500, 16, seed=3)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = np.trace(linalg.sqrtm(s1 @ s2).real)
    assert trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-8)


def test_different_sets_with_singular_covariances_are_finite_and_positive():
    x, y = _features(15, seed=4), _features(12, seed=5) + 0.02
    fd = frechet_distance(x, y)
    # The covariance term is a squared (Bures) distance, never negative: FD >= the squared mean difference.
    mean_term = float(np.sum((x.mean(0) - y.mean(0)) ** 2))
    assert np.isfinite(fd) and fd > mean_term


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(_features(1), _features(5))
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(_features(5, 8), _features(5, 9))
    bad = _features(5)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(bad, _features(5))


def test_embedding_frechet_separates_people_on_celeba():
    """Two halves of one person's album are closer than that person is to someone else."""
    root = shared_path("data", "celeba-wild")
    files = defaultdict(list)
    with open(root / "identities.csv") as f:
        for row in csv.DictReader(f):
            files[int(row["identity"])].append(row["file"])
    albums = [i for i in sorted(files) if len(files[i]) >= 20][:2]

    def embeddings(identity: int, n: int) -> np.ndarray:
        out = []
        for name in sorted(files[identity]):
            face = analyze_face(read_rgb(root / name))
            if face.embedding is not None:
                out.append(face.embedding)
            if len(out) == n:
                return np.stack(out)
        unavailable(f"identity {identity}: fewer than {n} detectable faces")

    a, b = embeddings(albums[0], 16), embeddings(albums[1], 8)
    same, other = frechet_distance(a[:8], a[8:]), frechet_distance(a[:8], b)
    assert same < other, (same, other)
