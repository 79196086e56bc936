"""The diffusion process: schedulers, the P2-weighted epsilon loss, samplers and DDIM inversion.

Conventions: 1000-step linear beta schedule (1e-4 .. 0.02), the model predicts epsilon; images in [-1,1].
The noise maths is diffusers' (``DDPMScheduler``, ``DDIMScheduler``, ``DDIMInverseScheduler``,
``DPMSolverMultistepScheduler``); DDIM uses guided-diffusion's respacing (timesteps 0, 1000/N, ... "leading",
final alpha 1), as the official ``--timestep_respacing ddimN`` does.

Samplers are pure functions sharing one signature, k-diffusion style::

    sample(model_fn, x_T, cond, scheduler_name, steps, generator) -> x_0
    model_fn(x_t, t, cond) -> epsilon         # t: (B,) long steps; cond is passed through untouched

For DiffusionRig, ``cond = {"buffers": (B,9,S,S), "latent": (B,64)}`` and ``denoiser_fn(model)`` is the
matching ``model_fn``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02
SCHEDULERS = ("ddpm", "ddim", "ddim_inverse", "dpm")

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def make_scheduler(name: str = "ddim", clip_denoised: bool = True, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """A fresh diffusers scheduler on the training schedule. ``clip_denoised`` clamps predicted x_0 to [-1,1]."""
    common = dict(num_train_timesteps=num_train_timesteps, beta_start=BETA_START, beta_end=BETA_END,
                  beta_schedule="linear", prediction_type="epsilon")
    if name == "ddpm":
        # FIXED_LARGE variance, as the official (guided-diffusion, learn_sigma=False) sampler.
        return DDPMScheduler(**common, variance_type="fixed_large", clip_sample=clip_denoised)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=clip_denoised, set_alpha_to_one=True, steps_offset=0,
                             timestep_spacing="leading")
    if name == "ddim_inverse":
        return DDIMInverseScheduler(**common, clip_sample=clip_denoised, set_alpha_to_one=True, steps_offset=0,
                                    timestep_spacing="leading")
    if name == "dpm":
        # Dynamic thresholding capped at 1.0 is exactly a clamp to [-1,1].
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                           thresholding=clip_denoised, sample_max_value=1.0)
    raise ValueError(f"unknown scheduler {name!r}; choose from {SCHEDULERS}")


def p2_weights(alphas_cumprod: torch.Tensor, gamma: float, k: float) -> torch.Tensor:
    """P2 loss weights 1 / (k + SNR_t)^gamma per timestep (Choi et al. 2022); gamma=0 gives all ones."""
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    return 1.0 / (k + snr) ** gamma


def denoiser_fn(model: torch.nn.Module) -> ModelFn:
    """``model_fn`` for a ``DiffusionRig`` (or a DDP wrapper of one): cond = {"buffers", "latent"}."""
    def fn(x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return model(x_t, t, cond["buffers"], latent=cond["latent"])
    return fn


def training_loss(model: torch.nn.Module, batch: dict, scheduler, gamma: float = 1.0, k: float = 1.0,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """P2-weighted epsilon-prediction loss of one batch {"image" (B,3,S,S), "buffers" (B,9,S,S)}.

    Draws t ~ U{0..T-1} and the noise from ``generator`` (on the image's device); the global latent is
    encoded from the clean image, so the encoder trains jointly unless frozen. Returns scalar ``loss``
    (weighted) and ``mse`` (unweighted), both batch means.
    """
    image, buffers = batch["image"], batch["buffers"]
    b = image.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=image.device, generator=generator)
    noise = torch.randn(image.shape, device=image.device, dtype=image.dtype, generator=generator)
    x_t = scheduler.add_noise(image, noise, t)
    eps = model(x_t, t, buffers, image=image)
    per_item = (eps.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
    w = p2_weights(scheduler.alphas_cumprod.to(image.device, torch.float64), gamma, k)[t].float()
    return {"loss": (w * per_item).mean(), "mse": per_item.mean().detach()}


@torch.no_grad()
def sample(model_fn: ModelFn, x_T: torch.Tensor, cond: Any, scheduler_name: str = "ddim", steps: int = 20,
           generator: torch.Generator | None = None, clip_denoised: bool = True, progress: bool = False) -> torch.Tensor:
    """Run the reverse process from ``x_T`` with ``steps`` model calls; returns x_0 (B,3,S,S) in ~[-1,1].

    ``generator`` drives the stochastic samplers (ddpm); ddim (eta=0) and dpm are deterministic. Use
    ``clip_denoised=False`` to reconstruct from a ``ddim_invert`` result: clamping x_0 predictions is not
    invertible.
    """
    if scheduler_name == "ddim_inverse":
        raise ValueError("ddim_inverse runs forward in time; use ddim_invert")
    scheduler = make_scheduler(scheduler_name, clip_denoised=clip_denoised)
    scheduler.set_timesteps(steps, device=x_T.device)
    x = x_T * scheduler.init_noise_sigma
    for t in tqdm(scheduler.timesteps, desc=f"{scheduler_name} sampling", disable=not progress, leave=False):
        eps = model_fn(x, t.expand(x.shape[0]), cond)
        kwargs = {"generator": generator} if scheduler_name != "ddim" else {"eta": 0.0}
        x = scheduler.step(eps.to(x.dtype), t, x, **kwargs).prev_sample
    return x


@torch.no_grad()
def ddim_invert(model_fn: ModelFn, x_0: torch.Tensor, cond: Any, steps: int = 20, progress: bool = False) -> torch.Tensor:
    """Deterministic DDIM inversion: the x_T from which ``sample(..., "ddim", steps, clip_denoised=False)``
    with the same ``cond`` returns (approximately, exactly for a model blind to x) to ``x_0``.

    Each step evaluates the model at the noise level it starts from but with the timestep it goes to,
    mirroring the sampler's step on the way back (diffusers' ``DDIMInverseScheduler``).
    """
    scheduler = make_scheduler("ddim_inverse", clip_denoised=False)
    scheduler.set_timesteps(steps, device=x_0.device)
    x = x_0
    for t in tqdm(scheduler.timesteps, desc="ddim inversion", disable=not progress, leave=False):
        eps = model_fn(x, t.expand(x.shape[0]), cond)
        x = scheduler.step(eps.to(x.dtype), t, x).prev_sample
    return x
