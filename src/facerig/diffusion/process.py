"""The diffusion process: the noise schedule, the P2-weighted epsilon loss, samplers and DDIM inversion.

Conventions: 1000-step linear beta schedule (1e-4 .. 0.02), the model predicts epsilon; images in [-1,1].
DDIM is the official sampler (guided-diffusion's ``ddim_sample`` with ``--timestep_respacing ddimN``,
eta 0): timesteps ``space_timesteps(1000, "ddimN")``, the final step to alpha 1, and with ``clip_denoised``
the predicted x_0 is clamped and epsilon re-derived from it (diffusers' ``use_clipped_model_output``).
DDIM and its inversion are written here (a few lines over ``NoiseSchedule``, tested against diffusers'
``DDIMScheduler`` / ``DDIMInverseScheduler`` and the official update) because importing diffusers costs
about a second (it imports torch._dynamo); the stochastic DDPM and DPM-Solver samplers come from
diffusers, imported when used.

Samplers are pure functions over an injected schedule, sharing one signature, k-diffusion style::

    sample(model_fn, x_T, cond, scheduler_name, steps, generator, callback=...) -> x_0
    model_fn(x_t, t, cond) -> epsilon         # t: (B,) long steps; cond is passed through untouched
    callback(SamplerStep)                      # after every step: index, timestep, x and predicted x_0

For DiffusionRig, ``cond = {"buffers": (B,9,S,S), "latent": (B,64)}`` and ``denoiser_fn(model)`` is the
matching ``model_fn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02
SCHEDULERS = ("ddpm", "ddim", "ddim_inverse", "dpm")
# What the network outputs: "epsilon" (the official, DDPM's) or "v" = sqrt(a) eps - sqrt(1-a) x_0 (Salimans &
# Ho 2022), which stays informative at t near T where the linear schedule's epsilon says almost nothing of x_0.
PREDICTIONS = ("epsilon", "v")
# Loss weightings over timesteps: P2 (the paper's) and min-SNR-gamma (Hang et al. 2023).
WEIGHTINGS = ("p2", "min-snr")

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class SamplerStep:
    """What a sampler reports after each step: ``x`` at the next noise level, ``denoised`` its x_0 estimate."""

    index: int
    total: int
    timestep: int
    x: torch.Tensor
    denoised: torch.Tensor


Callback = Callable[[SamplerStep], None]


@dataclass(frozen=True)
class NoiseSchedule:
    """DDPM's forward process: a linear beta schedule over ``num_train_timesteps`` steps."""

    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    beta_start: float = BETA_START
    beta_end: float = BETA_END

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """(T,) float64 cumulative products of 1 - beta_t."""
        betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, 0)

    def add_noise(self, x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise, for (B,) steps ``t``."""
        a = self.alphas_cumprod.to(x_0.device)[t].to(x_0.dtype).view(-1, *([1] * (x_0.dim() - 1)))
        return a.sqrt() * x_0 + (1 - a).sqrt() * noise

    def ddim_timesteps(self, steps: int) -> list[int]:
        """The official respacing ``space_timesteps(T, "ddimN")``, descending: the first stride giving N steps."""
        if not 2 <= steps <= self.num_train_timesteps:
            raise ValueError(f"DDIM steps must be in 2..{self.num_train_timesteps}, not {steps}")
        for stride in range(1, self.num_train_timesteps):
            if len(range(0, self.num_train_timesteps, stride)) == steps:
                return list(range(0, self.num_train_timesteps, stride))[::-1]
        raise ValueError(f"no DDIM respacing of {self.num_train_timesteps} steps into exactly {steps}")

    def level(self, t: int) -> float:
        """alpha_bar at step ``t``; 1 (clean) for t < 0."""
        return float(self.alphas_cumprod[t]) if t >= 0 else 1.0


DEFAULT_SCHEDULE = NoiseSchedule()


def make_scheduler(name: str, clip_denoised: bool = True, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """A diffusers scheduler on the training schedule, for the stochastic samplers ("ddpm", "dpm")."""
    if name not in ("ddpm", "dpm"):
        raise ValueError(f"unknown scheduler {name!r}; diffusers schedulers here are 'ddpm' and 'dpm' "
                         f"(DDIM: ddim_sample / ddim_invert)")
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=num_train_timesteps, beta_start=BETA_START, beta_end=BETA_END,
                  beta_schedule="linear", prediction_type="epsilon")
    if name == "ddpm":
        # FIXED_LARGE variance, as the official (guided-diffusion, learn_sigma=False) sampler.
        return DDPMScheduler(**common, variance_type="fixed_large", clip_sample=clip_denoised)
    # Dynamic thresholding capped at 1.0 is exactly a clamp to [-1,1].
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                       thresholding=clip_denoised, sample_max_value=1.0)


def p2_weights(alphas_cumprod: torch.Tensor, gamma: float, k: float) -> torch.Tensor:
    """P2 loss weights 1 / (k + SNR_t)^gamma per timestep (Choi et al. 2022); gamma=0 gives all ones."""
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    return 1.0 / (k + snr) ** gamma


def prediction_of(model: torch.nn.Module) -> str:
    """The prediction type of a ``DiffusionRig`` (or a DDP wrapper of one); "epsilon" for other networks."""
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "prediction", "epsilon")


def epsilon_from(output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str,
                 schedule: NoiseSchedule = DEFAULT_SCHEDULE) -> torch.Tensor:
    """The epsilon a network output means: itself for "epsilon"; sqrt(a) v + sqrt(1-a) x_t for "v".
    ``output``, ``x_t``: (B,C,H,W); ``t``: (B,) steps."""
    if prediction == "epsilon":
        return output
    if prediction != "v":
        raise ValueError(f"unknown prediction {prediction!r}; choose from {PREDICTIONS}")
    a = schedule.alphas_cumprod.to(x_t.device)[t].float().view(-1, 1, 1, 1)
    return (a.sqrt() * output.float() + (1 - a).sqrt() * x_t.float()).to(output.dtype)


def denoiser_fn(model: torch.nn.Module) -> ModelFn:
    """``model_fn`` (returning epsilon) for a ``DiffusionRig`` (or a DDP wrapper of one): cond = {"buffers", "latent"}."""
    prediction = prediction_of(model)

    def fn(x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return epsilon_from(model(x_t, t, cond["buffers"], latent=cond["latent"]), x_t, t, prediction)
    return fn


def guided_denoiser_fn(model: torch.nn.Module, scale: float) -> ModelFn:
    """Classifier-free guidance on the buffers: eps_null + ``scale`` (eps_buffers - eps_null), where the null
    condition is all-zero buffers (the model must be trained with condition dropout); both in one batch.
    ``scale`` 1 is the plain conditional model, above 1 pushes the result towards the buffers."""
    prediction = prediction_of(model)

    def fn(x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        buffers = cond["buffers"].expand(x_t.shape[0], -1, -1, -1)
        x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
        out = model(x2, t2, torch.cat([buffers, torch.zeros_like(buffers)]),
                    latent=torch.cat([cond["latent"], cond["latent"]]))
        eps_cond, eps_null = epsilon_from(out, x2, t2, prediction).chunk(2)
        return eps_null + scale * (eps_cond - eps_null)
    return fn


def loss_weights(alphas_cumprod: torch.Tensor, prediction: str = "epsilon", weighting: str = "p2",
                 gamma: float = 1.0, k: float = 1.0, min_snr_gamma: float = 5.0) -> torch.Tensor:
    """(T,) per-timestep weights of the output MSE.

    "p2": ``1 / (k + SNR)^gamma`` on the epsilon MSE (gamma 0: plain MSE); on a v output the same weights are
    expressed in v's units (v's MSE is (1 + SNR) / SNR times epsilon's), so both predictions optimise one
    objective.
    "min-snr": ``min(SNR, g) / SNR`` on epsilon, ``min(SNR, g) / (SNR + 1)`` on v: x_0 error weighted by SNR,
    capped at g."""
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    if weighting == "p2":
        w = p2_weights(alphas_cumprod, gamma, k)
        return w * snr / (1.0 + snr) if prediction == "v" else w
    if weighting == "min-snr":
        capped = snr.clamp(max=min_snr_gamma)
        return capped / (snr + 1.0) if prediction == "v" else capped / snr
    raise ValueError(f"unknown loss weighting {weighting!r}; choose from {WEIGHTINGS}")


def training_loss(model: torch.nn.Module, batch: dict, schedule: NoiseSchedule = DEFAULT_SCHEDULE, gamma: float = 1.0,
                  k: float = 1.0, generator: torch.Generator | None = None, cond_dropout: float = 0.0,
                  weighting: str = "p2", min_snr_gamma: float = 5.0) -> dict[str, torch.Tensor]:
    """Weighted MSE of the model's output (epsilon or v, per its config) for one batch {"image" (B,3,S,S),
    "buffers" (B,9,S,S)}.

    Draws t ~ U{0..T-1} and the noise from ``generator`` (on the image's device); the global latent is
    encoded from the clean image, so the encoder trains jointly unless frozen. ``cond_dropout``: the share of
    items whose buffers are replaced by the null condition (zeros), for guidance. Weights: ``loss_weights``.
    Returns scalar ``loss`` (weighted) and ``mse`` (unweighted epsilon MSE, whatever the prediction), both
    batch means.
    """
    image, buffers = batch["image"], batch["buffers"]
    prediction = prediction_of(model)
    b = image.shape[0]
    t = torch.randint(0, schedule.num_train_timesteps, (b,), device=image.device, generator=generator)
    noise = torch.randn(image.shape, device=image.device, dtype=image.dtype, generator=generator)
    if cond_dropout > 0:
        keep = torch.rand(b, device=image.device, generator=generator) >= cond_dropout
        buffers = buffers * keep[:, None, None, None].to(buffers.dtype)
    x_t = schedule.add_noise(image, noise, t)
    out = model(x_t, t, buffers, image=image).float()
    alphas = schedule.alphas_cumprod.to(image.device)
    if prediction == "v":
        a = alphas[t].float().view(-1, 1, 1, 1)
        target = a.sqrt() * noise.float() - (1 - a).sqrt() * image.float()
    else:
        target = noise.float()
    per_item = (out - target).pow(2).mean(dim=(1, 2, 3))
    eps_mse = per_item if prediction == "epsilon" else (
        (epsilon_from(out.detach(), x_t, t, prediction, schedule) - noise.float()).pow(2).mean(dim=(1, 2, 3)))
    w = loss_weights(alphas, prediction, weighting, gamma, k, min_snr_gamma)[t].float()
    return {"loss": (w * per_item).mean(), "mse": eps_mse.mean().detach()}


def _ddim_move(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float,
               clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic DDIM move of ``x`` from noise level ``a_from`` to ``a_to``; also returns predicted x_0."""
    x_0 = (x - (1 - a_from) ** 0.5 * eps) / a_from ** 0.5
    if clip:
        x_0 = x_0.clamp(-1, 1)
        eps = (x - a_from ** 0.5 * x_0) / (1 - a_from) ** 0.5
    return a_to ** 0.5 * x_0 + (1 - a_to) ** 0.5 * eps, x_0


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, x_T: torch.Tensor, cond: Any, steps: int = 20,
                schedule: NoiseSchedule = DEFAULT_SCHEDULE, clip_denoised: bool = True,
                callback: Callback | None = None, progress: bool = False) -> torch.Tensor:
    """The official DDIM sampler (eta 0) from ``x_T`` in ``steps`` model calls; returns x_0."""
    ts = schedule.ddim_timesteps(steps)
    x = x_T.float()
    for i, t in enumerate(tqdm(ts, desc="ddim sampling", disable=not progress, leave=False)):
        eps = model_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), cond)
        a_to = schedule.level(ts[i + 1] if i + 1 < len(ts) else -1)
        x, x_0 = _ddim_move(x, eps.to(x.dtype), schedule.level(t), a_to, clip_denoised)
        if callback is not None:
            callback(SamplerStep(i, len(ts), t, x, x_0))
    return x


@torch.no_grad()
def ddim_invert(model_fn: ModelFn, x_0: torch.Tensor, cond: Any, steps: int = 20,
                schedule: NoiseSchedule = DEFAULT_SCHEDULE, refine: int = 0, callback: Callback | None = None,
                progress: bool = False) -> torch.Tensor:
    """Deterministic DDIM inversion: the x_T from which ``ddim_sample(..., steps, clip_denoised=False)``
    with the same ``cond`` returns to ``x_0``.

    Each step moves x up one noise level with epsilon evaluated at the timestep it goes to. Plain DDIM
    inversion (``refine=0``, diffusers' ``DDIMInverseScheduler``) evaluates it at the point it starts from,
    which is exact only for a model blind to x. ``refine`` fixed-point iterations re-evaluate epsilon at the
    point being solved for, the one the sampler will evaluate it at on the way back, so a converged step is
    undone exactly by the sampler's step; each iteration costs one more model call per step.
    """
    ts = schedule.ddim_timesteps(steps)[::-1]
    x = x_0.float()
    for i, t in enumerate(tqdm(ts, desc="ddim inversion", disable=not progress, leave=False)):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        a_from, a_to = schedule.level(ts[i - 1] if i else -1), schedule.level(t)
        x_next, x_pred = _ddim_move(x, model_fn(x, t_batch, cond).to(x.dtype), a_from, a_to, False)
        for _ in range(refine):
            x_next, x_pred = _ddim_move(x, model_fn(x_next, t_batch, cond).to(x.dtype), a_from, a_to, False)
        x = x_next
        if callback is not None:
            callback(SamplerStep(i, len(ts), t, x, x_pred))
    return x


@torch.no_grad()
def sample(model_fn: ModelFn, x_T: torch.Tensor, cond: Any, scheduler_name: str = "ddim", steps: int = 20,
           generator: torch.Generator | None = None, clip_denoised: bool = True, progress: bool = False,
           callback: Callback | None = None) -> torch.Tensor:
    """Run the reverse process from ``x_T`` with ``steps`` model calls; returns x_0 (B,3,S,S) in ~[-1,1].

    ``generator`` drives the stochastic samplers (ddpm); ddim (eta=0) and dpm are deterministic. Use
    ``clip_denoised=False`` to reconstruct from a ``ddim_invert`` result: clamping x_0 predictions is not
    invertible.
    """
    if scheduler_name == "ddim":
        return ddim_sample(model_fn, x_T, cond, steps, clip_denoised=clip_denoised, callback=callback,
                           progress=progress)
    if scheduler_name == "ddim_inverse":
        raise ValueError("ddim_inverse runs forward in time; use ddim_invert")
    if scheduler_name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler_name!r}; choose from {SCHEDULERS}")
    scheduler = make_scheduler(scheduler_name, clip_denoised=clip_denoised)
    scheduler.set_timesteps(steps, device=x_T.device)
    x = x_T.float() * scheduler.init_noise_sigma
    for i, t in enumerate(tqdm(scheduler.timesteps, desc=f"{scheduler_name} sampling", disable=not progress, leave=False)):
        eps = model_fn(x, t.expand(x.shape[0]), cond)
        out = scheduler.step(eps.to(x.dtype), t, x, generator=generator)
        x = out.prev_sample
        if callback is not None:
            denoised = getattr(out, "pred_original_sample", None)  # DPM-Solver's output has none
            callback(SamplerStep(i, len(scheduler.timesteps), int(t), x, x if denoised is None else denoised))
    return x
