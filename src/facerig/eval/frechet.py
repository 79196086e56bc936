"""Frechet distance between two sets of feature vectors (the FID formula, on whatever features are given).

facerig has no Inception weights, so ``facerig eval`` feeds it dlib face embeddings: the number measures how
far generated faces drift from real ones in identity space, and is NOT comparable with published FID.
"""

from __future__ import annotations

import numpy as np


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; tiny negative eigenvalues from rounding are cut."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrtm(sigma1 @ sigma2)) for covariance matrices.

    pytorch-fid takes scipy's sqrtm of the non-symmetric product, drops its imaginary part and retries with
    ``eps * I`` added when the result is not finite. With fewer samples than dimensions (a 20-photo album
    against 128-D embeddings) the covariances are singular and sqrtm warns, goes complex and loses accuracy.
    The trace equals tr(sqrt(S1^1/2 S2 S1^1/2)), whose matrix is symmetric PSD, so ``eigh`` gives it
    directly: no imaginary part, no offset, singular covariances fine.
    """
    s1 = _psd_sqrt(sigma1)
    inner = s1 @ sigma2 @ s1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """||mu_x - mu_y||^2 + tr(S_x + S_y - 2 sqrt(S_x S_y)) between Gaussians fitted to rows of (N,D) ``x``
    and (M,D) ``y``; needs at least 2 rows each. Identical sets give 0 up to rounding."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two (N,D) feature sets of equal D, got {x.shape} and {y.shape}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"need at least 2 samples per set for a covariance, got {len(x)} and {len(y)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("feature sets contain NaN or inf")
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))
    # Rounding can leave identical sets a hair below zero.
    return max(fd, 0.0)
