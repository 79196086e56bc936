"""Stage 2 of ``facerig stylerig train``: the DFR regressed onto the captures of stage 1.

The loss (``dfr_loss``) is the render distance (``FaceDistance``) between the predicted and the captured
parameters plus an L2 on the normalised vector. A few thousand captures for a 1M-parameter network: AdamW
with weight decay, and the weights that score best on ``HOLDOUT`` of the captures are kept
(``fit_keeping_best``). ``dfr_KIND.json`` reports the held-out error in ``facerig eval``'s units: the "DFR's
own error" that unedited parameters are compared against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from facerig.face3d import FaceParams
from facerig.io import atomic_save_safetensors, atomic_write_json
from facerig.stylerig.recipe import DFRRecipe
from facerig.stylerig.rig import DFR, FaceDistance, ImageDFR, ParamSpace, build_dfr
from facerig.stylerig.rig_data import RigSetup
from facerig.stylerig.stylegan2 import render_latents
from facerig.weights import read_tensors

HOLDOUT = 0.1  # fraction of captured samples the DFR never trains on
WEIGHT_DECAY = 1e-4
VALIDATE_EVERY = 250


def dfr_loss(pred: Tensor, target: Tensor, space: ParamSpace, distance: FaceDistance,
             template: FaceParams) -> tuple[Tensor, Tensor]:
    """(render distance, L2) of predicted normalised parameters (B, dim) against the captured ones (B, dim),
    each a batch mean."""
    rendered = distance(space.decode(pred, template), space.decode(target, template))
    return rendered.mean(), (pred - target).pow(2).mean()


def fit_keeping_best(net: torch.nn.Module, steps: int, lr: float, losses: Callable[[], dict[str, Tensor]],
                     heldout: Callable[[], float], heldout_key: str, desc: str) -> list[dict]:
    """AdamW with weight decay and a cosine schedule on the sum of ``losses()`` (a fresh batch per call),
    scored by ``heldout()`` every ``VALIDATE_EVERY`` steps; ``net`` ends frozen with the weights that
    scored best there. Returns the log (the losses and ``heldout_key`` per validation)."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    log, best, best_state = [], math.inf, None
    bar = tqdm(range(steps), desc=desc)
    for step in bar:
        terms = losses()
        opt.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        opt.step()
        sched.step()
        if step % VALIDATE_EVERY == 0 or step == steps - 1:
            with torch.no_grad():
                score = heldout()
            if not math.isfinite(score):
                raise FloatingPointError(f"{desc}: non-finite held-out score at step {step}")
            log.append({"step": step, **{k: float(v.detach()) for k, v in terms.items()}, heldout_key: score})
            if score < best:
                best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
            bar.set_postfix({k: f"{v:.3f}" for k, v in log[-1].items() if k != "step"})
    net.load_state_dict(best_state)
    net.eval().requires_grad_(False)
    return log


def dfr_error(predicted: FaceParams, captured: FaceParams) -> dict[str, float]:
    """Median held-out DFR error against capture, in ``facerig eval``'s units (light and expression RMSE,
    pose RMSE and geodesic degrees)."""
    from facerig.eval.edit_accuracy import param_errors

    errors = param_errors({k: getattr(predicted, k) for k in ("light", "expression", "rotation")},
                          {k: getattr(captured, k) for k in ("light", "expression", "rotation")})
    return {k: float(v.median()) for k, v in errors.items()}


def load_dfr(path: Path, kind: str, setup: RigSetup) -> DFR | ImageDFR:
    """A trained DFR file (its weights and the parameter space's normalisation, which ``setup.space`` takes)."""
    state, _ = read_tensors(path)
    dfr = build_dfr(kind, setup.generator, setup.space.dim)
    dfr.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("dfr.")})
    setup.space.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("space.")})
    return dfr.eval().requires_grad_(False)


def train_dfr(path: Path, data: dict[str, Tensor], setup: RigSetup, recipe: DFRRecipe, seed: int) -> DFR | ImageDFR:
    """The DFR in ``path`` (trained onto ``data``'s captures first when the file does not exist yet);
    ``setup.space`` ends normalised by the training captures' mean and std."""
    params = FaceParams(**{k: data[f"params.{k}"] for k in FaceParams.field_names()})
    raw = torch.cat([getattr(params, k).reshape(params.batch_size, -1) for k in setup.space.sizes], 1)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(raw.shape[0], generator=gen)
    n_val = max(1, int(raw.shape[0] * HOLDOUT))
    val, train = order[:n_val], order[n_val:]
    torch.manual_seed(seed)
    if path.exists():
        return load_dfr(path, recipe.kind, setup)
    dfr = build_dfr(recipe.kind, setup.generator, setup.space.dim)
    space = setup.space
    space.mean.copy_(raw[train].mean(0))
    space.std.copy_(raw[train].std(0).clamp_min(1e-3))
    target = space.encode(params)
    if isinstance(dfr, ImageDFR):  # the images the latents render (fixed noise), computed once
        with torch.no_grad():
            inputs = torch.cat([render_latents(setup.generator, w) for w in data["w_plus"].split(256)])
    else:
        inputs = data["w_plus"]
    loss = lambda index: dfr_loss(dfr(inputs[index]), target[index], space, setup.distance, setup.template)  # noqa: E731

    def train_losses() -> dict[str, Tensor]:
        return dict(zip(("render", "l2"), loss(train[torch.randint(len(train), (recipe.batch_size,), generator=gen)])))

    log = fit_keeping_best(dfr, recipe.steps, recipe.lr, train_losses, lambda: float(loss(val)[0]), "heldout_render", "DFR")
    with torch.no_grad():
        pred = space.decode(dfr(inputs[val]), setup.template)
    truth = params[val]
    report = {"train_samples": len(train), "heldout_samples": n_val, "log": log, "heldout_error": dfr_error(pred, truth),
              "heldout_render_distance": float(setup.distance(pred, truth).mean())}
    atomic_write_json(path.with_suffix(".json"), report)
    atomic_save_safetensors({**{f"dfr.{k}": v for k, v in dfr.state_dict().items()},
                             "space.mean": space.mean, "space.std": space.std}, path)
    return dfr
