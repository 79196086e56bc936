"""Stage 3 of ``facerig stylerig train``: one RigNet per mode, trained self-supervised through the frozen DFR
on fresh latent pairs (no images needed: the paper's losses, ``rig.rignet_losses``, live in parameter space
once the DFR exists). ``rignet_MODE.safetensors`` holds it, ``rignet_MODE.json`` its loss log.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from facerig import runtime
from facerig.io import atomic_save_safetensors, atomic_write_json
from facerig.stylerig.recipe import RigNetRecipe
from facerig.stylerig.rig import DFR, MODES, ImageDFR, RigNet, principal_directions, read_parameters, rignet_losses
from facerig.stylerig.rig_data import RigSetup, sample_latents
from facerig.stylerig.targets import TargetSampler
from facerig.weights import read_tensors

LOG_EVERY = 100
RIGNET_SEED = 1  # mode i's latent pairs draw from seed + RIGNET_SEED + i (i: its place in MODES)


def latent_reader(dfr: DFR | ImageDFR, setup: RigSetup) -> Callable[[Tensor], Tensor]:
    """W+ -> the DFR's normalised parameters, through which RigNet's gradient runs: the MLP itself, or the
    image DFR over the frozen generator (bf16 where the CPU computes it)."""
    if not isinstance(dfr, ImageDFR):
        return dfr

    def through_generator(w_plus: Tensor) -> Tensor:
        with runtime.autocast("cpu", setup.precision):
            return read_parameters(dfr, setup.generator, w_plus).float()

    return through_generator


def build_rignet(mode: str, setup: RigSetup, recipe: RigNetRecipe) -> RigNet:
    """An untrained RigNet of ``mode`` in the recipe's form (the identity map)."""
    g = setup.generator
    n_params = sum(s.stop - s.start for s in setup.space.slices(MODES[mode]))
    return RigNet(g.n_latent, g.style_dim, n_params, steering=recipe.form == "steering",
                  relative=recipe.form == "relative", subspace=recipe.subspace)


def train_rignet(path: Path, dfr: DFR | ImageDFR, mode: str, setup: RigSetup, recipe: RigNetRecipe, truncation: float,
                 mixing: float, seed: int) -> RigNet:
    """``mode``'s RigNet in ``path`` (trained first when the file does not exist yet), on latent pairs drawn
    as stage 1 draws them (``truncation``, ``mixing``)."""
    torch.manual_seed(seed)
    rignet = build_rignet(mode, setup, recipe)
    if path.exists():
        rignet.load_state_dict(read_tensors(path)[0])
        return rignet.eval()
    if recipe.subspace:
        rignet.basis.copy_(principal_directions(setup.generator, recipe.subspace))
    gen = torch.Generator().manual_seed(seed + RIGNET_SEED + list(MODES).index(mode))
    weights, edits = recipe.weights_for(mode), recipe.edit_targets_for(mode)
    targets = TargetSampler(setup.face, setup.space, setup.template, mode, edits, gen) if edits else None
    reader = latent_reader(dfr, setup)
    opt = torch.optim.Adam(rignet.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
    log, bar = [], tqdm(range(recipe.steps), desc=f"RigNet {mode}")
    for step in bar:
        with torch.no_grad():
            w, v = (sample_latents(setup.generator, recipe.batch_size, gen, truncation, setup.latent_avg, mixing)
                    for _ in range(2))
        losses = rignet_losses(rignet, reader, setup.space, setup.distance, setup.template, w, v, mode, weights, targets)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        sched.step()
        if step % LOG_EVERY == 0 or step == recipe.steps - 1:
            entry = {"step": step, **{k: float(v.detach()) for k, v in losses.items()}}
            if not math.isfinite(entry["total"]):
                raise FloatingPointError(f"RigNet {mode}: non-finite loss at step {step}")
            log.append(entry)
            bar.set_postfix(edit=f"{entry['edit']:.2f}", consist=f"{entry['consist']:.2f}", rec=f"{entry['rec']:.4f}")
    atomic_write_json(path.with_suffix(".json"), {"log": log})
    rignet.eval()
    atomic_save_safetensors(rignet.state_dict(), path)
    return rignet
