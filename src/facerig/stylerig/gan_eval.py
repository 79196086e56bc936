"""How good a trained generator is, without Inception weights: ``facerig gan evaluate``.

- face rate: the share of ``n`` samples in which dlib finds a face (on the image upsampled to 256 px, as
  re-capture sees it);
- Frechet distance of dlib face embeddings (``facerig.eval.frechet``; NOT comparable with FID) between the
  samples and ``n`` real photos, next to the same distance between two disjoint sets of ``n`` real photos:
  the floor that sampling noise alone gives at this ``n``.

Real photos are resized to the generator's size first, so both sides are judged at the same resolution.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from facerig.io import to_uint8_image
from facerig.stylerig.generator_io import load_generator

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # the real photos drawn: those facerig gan train reads


def _embeddings(images, desc: str) -> tuple[np.ndarray, int]:
    from facerig.eval.identity import analyze_face

    found = [analyze_face(im).embedding for im in tqdm(images, desc=desc)]
    found = [e for e in found if e is not None]
    return (np.stack(found) if found else np.zeros((0, 128))), len(found)


def _real_images(folder: str | Path, count: int, size: int, seed: int) -> list[np.ndarray]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < count:
        raise ValueError(f"{folder}: {len(files)} images, need {count} (two disjoint sets)")
    files = random.Random(seed).sample(files, count)
    out = []
    for f in files:
        img = Image.open(f).convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        out.append(np.asarray(img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)))
    return out


@torch.no_grad()
def evaluate_generator(generator: str | Path, real: str | Path, n: int = 200, truncation: float = 1.0, seed: int = 0) -> dict:
    from facerig.eval.frechet import frechet_distance
    from facerig.stylerig.stylegan2 import render_latents

    if n < 2:
        raise ValueError(f"n must be >= 2, not {n}")
    g = load_generator(generator)
    gen = torch.Generator().manual_seed(seed)
    avg = g.style(torch.randn(4096, g.style_dim, generator=gen)).mean(0)
    samples = []
    for start in range(0, n, 50):
        w = g.style(torch.randn(min(50, n - start), g.style_dim, generator=gen))
        w = avg + truncation * (w - avg)
        samples.extend(to_uint8_image(image, (-1, 1)) for image in render_latents(g, w[:, None].repeat(1, g.n_latent, 1)))
    fake, n_fake = _embeddings(samples, "embedding samples")
    reals = _real_images(real, 2 * n, g.size, seed)
    real_a, n_a = _embeddings(reals[:n], "embedding real photos")
    real_b, n_b = _embeddings(reals[n:], "embedding more real photos")
    fd = lambda a, b: float(frechet_distance(a, b)) if min(len(a), len(b)) > 1 else float("nan")  # noqa: E731
    return {"generator": str(generator), "size": g.size, "n": n, "truncation": truncation,
            "face_rate": n_fake / n, "real_face_rate": (n_a + n_b) / (2 * n),
            "frechet_embedding_distance": fd(fake, real_a), "frechet_real_vs_real": fd(real_b, real_a),
            "features": "dlib 128-D face embeddings (not Inception: not comparable with FID)"}
