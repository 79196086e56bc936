import numpy as np
import pytest
import torch

from facerig.diffusion.model import DiffusionRig
from facerig.diffusion.process import (
    ddim_invert, denoiser_fn, make_scheduler, p2_weights, sample, training_loss,
)
from helpers import assert_close


pytestmark = pytest.mark.usefixtures("one_thread")


def _official_alphas_cumprod() -> np.ndarray:
    # guided-diffusion's linear schedule, float64.
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))


def test_schedule_is_official_linear_1000():
    sched = make_scheduler("ddpm")
    assert sched.config.num_train_timesteps == 1000
    assert_close(sched.alphas_cumprod.double(), torch.from_numpy(_official_alphas_cumprod()), atol=1e-6, rtol=1e-4)


def test_ddim_timesteps_match_official_respacing():
    sched = make_scheduler("ddim")
    sched.set_timesteps(20)
    # guided-diffusion space_timesteps(1000, "ddim20") = range(0, 1000, 50)
    assert sched.timesteps.tolist() == list(range(950, -1, -50))


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
    sched = make_scheduler("ddpm")
    batch = {"image": torch.rand(4, 3, 8, 8) * 2 - 1, "buffers": torch.rand(4, 9, 8, 8)}
    model = _Echo()
    out = training_loss(model, batch, sched, gamma=0.0, k=1.0, generator=torch.Generator().manual_seed(3))
    # Replay the draws: t first, then the noise.
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(4, 3, 8, 8, generator=g)
    ac = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
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
    sched = make_scheduler("ddim")
    noisy = sched.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)), torch.tensor([950]))
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
    with pytest.raises(ValueError, match="ddim_invert"):
        sample(_t_only_model, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), "ddim_inverse", 5)
