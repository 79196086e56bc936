import numpy as np
import pytest
import torch

from facerig.diffusion.model import DiffusionRig
from facerig.diffusion.process import (
    DEFAULT_SCHEDULE, NoiseSchedule, SamplerStep, ddim_invert, ddim_sample, denoiser_fn, make_scheduler, p2_weights,
    sample, training_loss,
)
from helpers import assert_close


pytestmark = pytest.mark.usefixtures("one_thread")


def _official_alphas_cumprod() -> np.ndarray:
    # guided-diffusion's linear schedule, float64.
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))


def test_schedule_is_official_linear_1000():
    assert DEFAULT_SCHEDULE.num_train_timesteps == 1000
    assert_close(DEFAULT_SCHEDULE.alphas_cumprod, torch.from_numpy(_official_alphas_cumprod()), atol=1e-12, rtol=1e-12)
    # diffusers' DDPM scheduler (used for ddpm sampling) has the same schedule, in float32.
    assert_close(make_scheduler("ddpm").alphas_cumprod.double(), DEFAULT_SCHEDULE.alphas_cumprod, atol=1e-6, rtol=1e-4)


def _official_space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """guided-diffusion's space_timesteps(num_timesteps, f"ddim{count}"), as a descending list."""
    for i in range(1, num_timesteps):
        if len(range(0, num_timesteps, i)) == count:
            return sorted(set(range(0, num_timesteps, i)), reverse=True)
    raise ValueError(count)


@pytest.mark.parametrize("steps", [20, 30, 50, 250])
def test_ddim_timesteps_match_official_respacing(steps):
    assert DEFAULT_SCHEDULE.ddim_timesteps(steps) == _official_space_timesteps(1000, steps)
    with pytest.raises(ValueError, match="DDIM steps"):
        DEFAULT_SCHEDULE.ddim_timesteps(0)


def _official_ddim_sample(model_fn, x, cond, steps, clip):
    """guided-diffusion's ddim_sample_loop (eta 0) on the respaced process, written out from its code."""
    ac = _official_alphas_cumprod()
    ts = _official_space_timesteps(1000, steps)
    x = x.double()
    for i, t in enumerate(ts):
        a_t = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else 1.0
        eps = model_fn(x.float(), torch.full((x.shape[0],), t), cond).double()
        pred_xstart = np.sqrt(1.0 / a_t) * x - np.sqrt(1.0 / a_t - 1) * eps  # _predict_xstart_from_eps
        if clip:
            pred_xstart = pred_xstart.clamp(-1, 1)
        eps = (np.sqrt(1.0 / a_t) * x - pred_xstart) / np.sqrt(1.0 / a_t - 1)  # _predict_eps_from_xstart
        x = pred_xstart * np.sqrt(a_prev) + np.sqrt(1 - a_prev) * eps
    return x.float()


def _x_dependent_model(x, t, cond):
    """An epsilon that depends on x and t and pushes x_0 predictions past [-1, 1], so clipping matters."""
    return torch.tanh(1.5 * x + cond) * torch.cos(t.float() / 400.0)[:, None, None, None] + 0.3 * cond


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_equals_official_update(clip):
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = ddim_sample(_x_dependent_model, x_T, cond, 20, clip_denoised=clip)
    ref = _official_ddim_sample(_x_dependent_model, x_T, cond, 20, clip)
    # Unclipped, x_0 predictions reach hundreds here: float32 then holds them to about 1e-7 relative.
    assert_close(ours, ref, atol=1e-5, rtol=0 if clip else 1e-6)
    if clip:  # the raw-epsilon variant (diffusers' default) is a different sampler
        assert (ours - ddim_sample(_x_dependent_model, x_T, cond, 20, clip_denoised=False)).abs().max() > 0.01


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_equals_diffusers_with_clipped_model_output(clip):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          clip_sample=clip, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    sched.set_timesteps(20)
    assert sched.timesteps.tolist() == DEFAULT_SCHEDULE.ddim_timesteps(20)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = ddim_sample(_x_dependent_model, x, cond, 20, clip_denoised=clip)
    for t in sched.timesteps:
        eps = _x_dependent_model(x, t.expand(2), cond)
        x = sched.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    assert_close(ours, x, atol=1e-5, rtol=0 if clip else 1e-6)


def test_ddim_invert_equals_diffusers_inverse_scheduler():
    from diffusers import DDIMInverseScheduler

    sched = DDIMInverseScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                 clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    sched.set_timesteps(20)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = ddim_invert(_x_dependent_model, x, cond, 20)
    for t in sched.timesteps:
        x = sched.step(_x_dependent_model(x, t.expand(2), cond), t, x).prev_sample
    assert_close(ours, x, atol=1e-5, rtol=0)


def test_sampler_callback_reports_every_step():
    seen: list[SamplerStep] = []
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = ddim_sample(_x_dependent_model, x_T, torch.zeros_like(x_T), 10, callback=seen.append)
    assert [s.index for s in seen] == list(range(10)) and all(s.total == 10 for s in seen)
    assert [s.timestep for s in seen] == DEFAULT_SCHEDULE.ddim_timesteps(10)
    assert torch.equal(seen[-1].x, out) and torch.equal(seen[-1].denoised, out)  # the last step lands on x_0
    inv = []
    ddim_invert(_x_dependent_model, out, torch.zeros_like(x_T), 10, callback=inv.append)
    assert [s.timestep for s in inv] == DEFAULT_SCHEDULE.ddim_timesteps(10)[::-1]


def test_p2_weights():
    ac = torch.from_numpy(_official_alphas_cumprod())
    assert torch.equal(p2_weights(ac, 0.0, 1.0), torch.ones_like(ac))
    snr = 1.0 / (1.0 - ac) - 1.0  # the official code's SNR
    assert_close(p2_weights(ac, 1.0, 1.0), 1.0 / (1.0 + snr), rtol=1e-10)
    w = p2_weights(ac, 0.5, 2.0)
    assert (w[1:] >= w[:-1]).all()  # low-noise steps (high SNR) are down-weighted


class _Echo(torch.nn.Module):
    """A stand-in model returning a fixed function of its inputs, to check the loss arithmetic."""

    def forward(self, x_t, t, buffers, image=None, latent=None):
        return 0.5 * x_t + buffers[:, :3]


def test_training_loss_is_p2_weighted_epsilon_mse():
    sched = NoiseSchedule()
    batch = {"image": torch.rand(4, 3, 8, 8) * 2 - 1, "buffers": torch.rand(4, 9, 8, 8)}
    model = _Echo()
    out = training_loss(model, batch, sched, gamma=0.0, k=1.0, generator=torch.Generator().manual_seed(3))
    # Replay the draws: t first, then the noise.
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(4, 3, 8, 8, generator=g)
    ac = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    x_t = ac.sqrt() * batch["image"] + (1 - ac).sqrt() * noise
    per_item = ((model(x_t, t, batch["buffers"]) - noise) ** 2).mean(dim=(1, 2, 3))
    assert_close(out["loss"], per_item.mean(), atol=1e-5)
    assert_close(out["mse"], per_item.mean(), atol=1e-5)
    weighted = training_loss(model, batch, sched, gamma=1.0, k=1.0, generator=torch.Generator().manual_seed(3))
    w = p2_weights(sched.alphas_cumprod.double(), 1.0, 1.0)[t].float()
    assert_close(weighted["loss"], (w * per_item).mean(), atol=1e-5)
    assert_close(weighted["mse"], out["mse"])


def _t_only_model(x, t, cond):
    """Epsilon that ignores x: DDIM inversion is then exact, so this pins the timestep bookkeeping."""
    return cond * torch.cos(t.float() / 300.0)[:, None, None, None]


def test_ddim_invert_then_sample_is_exact_for_x_blind_model():
    torch.manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    cond = torch.randn(2, 3, 8, 8)
    x_T = ddim_invert(_t_only_model, x0, cond, steps=20)
    assert (x_T - x0).abs().mean() > 0.3  # it did move
    rec = sample(_t_only_model, x_T, cond, "ddim", 20, clip_denoised=False)
    assert_close(rec, x0, atol=1e-4)


def test_ddim_invert_round_trip_on_tiny_diffusionrig():
    torch.manual_seed(0)
    model = DiffusionRig("tiny").eval()
    for m in model.modules():  # an "untrained" but non-trivial denoiser: small random residual outputs
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=3e-3)
    fn = denoiser_fn(model)
    x0 = torch.rand(1, 3, 64, 64) * 2 - 1
    cond = {"buffers": torch.rand(1, 9, 64, 64), "latent": torch.randn(1, 64)}
    assert fn(x0, torch.tensor([500]), cond).abs().mean() > 0.01  # epsilon is not zero
    steps = 8
    x_T = ddim_invert(fn, x0, cond, steps=steps)
    err = (sample(fn, x_T, cond, "ddim", steps, clip_denoised=False) - x0).abs().mean()
    # Reference: the same sampler from a forward-diffused (not inverted) x_T.
    noisy = DEFAULT_SCHEDULE.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)), torch.tensor([950]))
    ref_err = (sample(fn, noisy, cond, "ddim", steps, clip_denoised=False) - x0).abs().mean()
    assert err < 0.15, err
    assert err < 0.01 * ref_err, (err, ref_err)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm"])
def test_samplers_share_signature_and_clip(name):
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, 3, 8, 8)
    a = sample(_t_only_model, x_T, cond, name, 10, generator=torch.Generator().manual_seed(5))
    b = sample(_t_only_model, x_T, cond, name, 10, generator=torch.Generator().manual_seed(5))
    assert a.shape == x_T.shape and torch.equal(a, b)
    assert a.abs().max() <= 1.0 + 1e-5  # x_0 predictions are clamped to [-1,1] by default
    if name == "ddpm":  # stochastic: another generator, another sample
        c = sample(_t_only_model, x_T, cond, name, 10, generator=torch.Generator().manual_seed(6))
        assert not torch.equal(a, c)


def test_unknown_scheduler():
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("euler")
    with pytest.raises(ValueError, match="unknown scheduler"):
        sample(_t_only_model, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), "euler", 5)
    with pytest.raises(ValueError, match="ddim_invert"):
        sample(_t_only_model, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), "ddim_inverse", 5)


def test_fixed_point_refinement_makes_inversion_the_samplers_inverse():
    """With epsilon depending on x, plain DDIM inversion drifts; refined steps converge to the exact inverse."""
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    cond = 0.2 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model = lambda x, t, c: 0.3 * torch.tanh(x + c) * torch.cos(t.float() / 400.0)[:, None, None, None]  # noqa: E731
    errors = []
    for refine in (0, 1, 5):
        x_T = ddim_invert(model, x0, cond, 10, refine=refine)
        errors.append((ddim_sample(model, x_T, cond, 10, clip_denoised=False) - x0).abs().max().item())
    assert errors[0] > 1e-3 and errors[1] < errors[0] / 5 and errors[2] < 1e-4, errors


def test_cond_dropout_trains_items_on_zero_buffers():
    batch = {"image": torch.rand(64, 3, 8, 8) * 2 - 1, "buffers": torch.rand(64, 9, 8, 8) + 0.5}
    seen = []

    class Spy(_Echo):
        def forward(self, x_t, t, buffers, image=None, latent=None):
            seen.append(buffers)
            return super().forward(x_t, t, buffers)

    training_loss(Spy(), batch, NoiseSchedule(), generator=torch.Generator().manual_seed(0), cond_dropout=0.25)
    dropped = (seen[0].flatten(1).abs().sum(1) == 0).float().mean()
    assert 0.1 < dropped < 0.45 and torch.equal(seen[0][seen[0].flatten(1).any(1)], batch["buffers"][seen[0].flatten(1).any(1)])
    training_loss(Spy(), batch, NoiseSchedule(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[1], batch["buffers"])


def test_guidance_interpolates_between_null_and_conditional():
    from facerig.diffusion.process import guided_denoiser_fn

    model = lambda x, t, buffers, latent=None: 0.5 * x + buffers[:, :3] + latent[:, :3, None, None]  # noqa: E731
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 10])
    cond = {"buffers": torch.rand(2, 9, 8, 8), "latent": torch.randn(2, 64)}
    cond_eps = model(x, t, cond["buffers"], latent=cond["latent"])
    null_eps = model(x, t, torch.zeros_like(cond["buffers"]), latent=cond["latent"])
    assert_close(guided_denoiser_fn(model, 1.0)(x, t, cond), cond_eps, atol=1e-6)
    assert_close(guided_denoiser_fn(model, 0.0)(x, t, cond), null_eps, atol=1e-6)
    assert_close(guided_denoiser_fn(model, 3.0)(x, t, cond), null_eps + 3 * (cond_eps - null_eps), atol=1e-5)


def test_v_output_converts_to_the_epsilon_it_means():
    from facerig.diffusion.process import epsilon_from

    sched = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(6, 3, 4, 4, generator=g) * 2 - 1, torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 10, 300, 600, 950, 999])
    a = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    x_t = sched.add_noise(x0, eps, t)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    assert_close(epsilon_from(v, x_t, t, "v", sched), eps, atol=1e-5)
    assert epsilon_from(v, x_t, t, "epsilon", sched) is v
    with pytest.raises(ValueError):
        epsilon_from(v, x_t, t, "x0", sched)


@pytest.mark.parametrize("weighting", ["p2", "min-snr"])
def test_weightings_mean_one_objective_for_both_predictions(weighting):
    """The same epsilon error costs the same under either prediction: a v error is the epsilon error over
    sqrt(alpha_bar), so v's weights must be epsilon's times alpha_bar."""
    from facerig.diffusion.process import loss_weights

    a = NoiseSchedule().alphas_cumprod
    ratio = loss_weights(a, "v", weighting) / loss_weights(a, "epsilon", weighting)
    assert_close(ratio, a, rtol=1e-9, atol=0)
    snr = a / (1 - a)
    w = loss_weights(a, "epsilon", "min-snr", min_snr_gamma=5.0)
    assert_close(w[snr > 5], 5.0 / snr[snr > 5])
    assert bool((w[snr <= 5] == 1).all())
