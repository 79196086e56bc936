"""Stage 1 of ``facerig stylerig train``: generated faces captured as photos, the DFR's training data.

``data/chunk_NNNN.safetensors``: ``samples`` generated faces in chunks of ``CHUNK``, each with its W+ latent
(style mixing with probability ``mixing``, so the DFR also sees W+ that are not one repeated w), captured
exactly as a photo is (dlib landmarks, FFHQ alignment, the landmark + photometric fit): the fitted
parameters, the landmark error, and where the FFHQ crop lies in the generated image. Faces dlib misses are
counted (the face rate) and left out. With ``edited``, ``data/edited_NNNN`` (``edited2_NNNN`` ... for further
rigs) adds faces edited by other rigs over the same generator (``rig_edits``), for the DFR only: a round
against a DFR those rigs fooled. A chunk on disk is never captured again, so a killed run resumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from facerig.face3d import FaceParams, MorphableModel
from facerig.io import atomic_save_safetensors, to_uint8_image
from facerig.stylerig.recipe import DataRecipe
from facerig.stylerig.rig import MODES, FaceDistance, ParamSpace
from facerig.stylerig.stylegan2 import Generator, render_latents
from facerig.stylerig.targets import TargetSampler
from facerig.weights import read_tensors

CHUNK = 64
MIN_FACES = 32  # captured faces below which there is nothing to train a DFR on
DATA_SEED = 1_000_003  # chunk i of the natural samples draws from seed * DATA_SEED + i
EDITED_SEED, EDITED_RIG_SEED = 700_001, 10_007  # rig k's edited faces: + EDITED_SEED + k * EDITED_RIG_SEED


@dataclass
class RigSetup:
    """What every stage reads: the frozen generator, its truncation centre, and the face model with the
    parameter space (normalised by the DFR's captures once stage 2 has run) and render distance."""

    generator: Generator
    latent_avg: Tensor
    face: MorphableModel
    space: ParamSpace
    template: FaceParams  # batch-one defaults of the fields StyleRig does not predict
    distance: FaceDistance
    precision: str  # of the generator pass behind an image DFR


def sample_latents(generator: Generator, n: int, gen: torch.Generator, truncation: float, latent_avg: Tensor,
                   mixing: float = 0.0) -> Tensor:
    """(n, n_latent, style_dim) truncated W+ latents; with probability ``mixing`` two w split at a random layer."""
    w = generator.style(torch.randn(2 * n, generator.style_dim, generator=gen))
    w = latent_avg + truncation * (w - latent_avg)
    a, b = w[:n, None].repeat(1, generator.n_latent, 1), w[n:, None]
    cut = torch.randint(1, generator.n_latent, (n,), generator=gen)
    mixed = torch.rand(n, generator=gen) < mixing
    layer = torch.arange(generator.n_latent)
    take_b = (mixed[:, None] & (layer[None] >= cut[:, None]))[..., None]
    return torch.where(take_b, b.expand_as(a), a)


def crop_frame(transform: np.ndarray, image_size: int, upsampled: int) -> np.ndarray:
    """Where the FFHQ crop (unit square) lies in the generated image: (centre x, centre y, side), in units of
    the image side, from capture's aligned <- upsampled-image transform."""
    to_aligned = transform @ np.diag([upsampled / image_size, upsampled / image_size, 1.0])
    back = np.linalg.inv(to_aligned)
    centre = back[:2, :2] @ np.array([upsampled / 2, upsampled / 2]) + back[:2, 2]
    side = np.linalg.norm(back[:2, 0]) * upsampled
    return np.array([centre[0] / image_size, centre[1] / image_size, side / image_size])


def uint8_images(images: Tensor) -> np.ndarray:
    """(B,3,S,S) in [-1,1] -> (B,S,S,3) uint8, as photos are read."""
    return np.stack([to_uint8_image(image, (-1, 1)) for image in images])


def capture_chunks(folder: Path, prefix: str, total: int, seed: int, setup: RigSetup, data: DataRecipe, capture,
                   move: Callable[[Tensor, torch.Generator], Tensor] | None = None) -> dict[str, Tensor]:
    """``total`` generated faces (``move``d: edited, when given) captured into ``folder/PREFIX_NNNN``
    chunks, each drawn from ``seed`` + its index; merged: W+ of the faces found, ``found`` per face, and
    ``params.*``, ``landmark_error``, ``frame`` of the faces found."""
    n_chunks = math.ceil(total / CHUNK)
    for index in tqdm(range(n_chunks), desc=f"capturing generated faces ({prefix})"):
        path = folder / f"{prefix}_{index:04d}.safetensors"
        if path.exists():
            continue
        gen = torch.Generator().manual_seed(seed + index)
        n = min(CHUNK, total - index * CHUNK)
        with torch.no_grad():
            w_plus = sample_latents(setup.generator, n, gen, data.truncation, setup.latent_avg, data.mixing)
            w_plus = move(w_plus, gen) if move else w_plus
        images = uint8_images(render_latents(setup.generator, w_plus))
        items, found, fit = capture.many(images)
        found = torch.from_numpy(found)
        tensors = {"w_plus": w_plus[found].contiguous(), "found": found}
        if fit is not None:
            tensors.update({f"params.{k}": v.detach().float().contiguous() for k, v in fit.params.to_dict().items()})
            tensors["landmark_error"] = fit.landmark_error.detach()
            tensors["frame"] = torch.tensor(np.stack([crop_frame(it.transform, images.shape[1], capture.size)
                                                      for it in items]), dtype=torch.float32)
        atomic_save_safetensors(tensors, path)
    chunks = [read_tensors(folder / f"{prefix}_{i:04d}.safetensors")[0] for i in range(n_chunks)]
    keys = dict.fromkeys(k for c in chunks for k in c)  # a chunk where dlib found no face has no fit
    return {key: torch.cat([c[key] for c in chunks if key in c]) for key in keys}


def build_data(folder: Path, setup: RigSetup, data: DataRecipe, seed: int, capture, edit_rigs: list) -> dict[str, Tensor]:
    """The DFR's data: the natural samples, then each of ``edit_rigs``' ``data.edited`` edited faces
    appended to their W+ and parameters; the face rate (``found``), landmark error and framing stay the
    natural samples' and ``edited_found`` counts the edited ones."""
    folder.mkdir(exist_ok=True)
    out = capture_chunks(folder, "chunk", data.samples, seed * DATA_SEED, setup, data, capture)
    edited_found = []
    for k, rig in enumerate(edit_rigs):
        faces = capture_chunks(folder, "edited" if k == 0 else f"edited{k + 1}", data.edited,
                               seed * DATA_SEED + EDITED_SEED + EDITED_RIG_SEED * k, setup, data, capture,
                               rig_edits(rig, setup))
        for key in faces:
            if key == "w_plus" or key.startswith("params."):
                out[key] = torch.cat([out[key], faces[key]])
        edited_found.append(faces["found"])
    if edited_found:
        out["edited_found"] = torch.cat(edited_found)
    return out


def check_edit_rig(rig, model_dir: str, generator: Generator) -> None:
    """``rig`` (from ``model_dir``) can edit faces for this run: built over ``generator``, with a pose, light
    or expression RigNet."""
    mine, theirs = generator.state_dict(), rig.generator.state_dict()
    if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k].to(mine[k].dtype)) for k in mine):
        raise ValueError(f"{model_dir}: that rig was built over another generator than this run's")
    if not {"pose", "light", "expression"} & set(rig.rignets):
        raise ValueError(f"{model_dir}: that rig has no pose, light or expression RigNet")


def rig_edits(rig, setup: RigSetup) -> Callable[[Tensor, torch.Generator], Tensor]:
    """``(w_plus, gen) -> edited w_plus``: each latent edited by ``rig`` with one of its pose / light /
    expression RigNets, toward the DFR's parameters of it with a sampled edit of that mode's fields
    (``TargetSampler.sample_edits``)."""
    modes = [m for m in ("pose", "light", "expression") if m in rig.rignets]

    def edit(w_plus: Tensor, gen: torch.Generator) -> Tensor:
        which, out = torch.randint(len(modes), (len(w_plus),), generator=gen), w_plus.clone()
        for i, mode in enumerate(modes):
            index = torch.nonzero(which == i).flatten()
            if len(index):
                source = rig.face_params(w_plus[index], setup.template)
                sampler = TargetSampler(setup.face, rig.space, setup.template, mode, 1.0, generator=gen)
                out[index] = rig.rig(w_plus[index], sampler.sample_edits(source), MODES[mode])[0]
        return out

    return edit
