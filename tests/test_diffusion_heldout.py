import pytest
import torch
from torch import nn

from facerig.diffusion.heldout import BUCKETS, heldout_errors
from facerig.diffusion.model import ModelConfig
from facerig.diffusion.process import DEFAULT_SCHEDULE


class _Oracle(nn.Module):
    """Reads the clean image from the buffers' first channels, so it knows epsilon (or v) exactly; ``bias``
    spoils its epsilon by a constant."""

    def __init__(self, prediction: str, bias: float = 0.0):
        super().__init__()
        self.config = ModelConfig(image_size=64, prediction=prediction)  # only its prediction is read
        self.encoder = nn.Linear(1, 1)
        self.bias = bias

    def forward(self, x_t, t, buffers, latent=None, image=None):
        x0 = buffers[:, :3]
        a = DEFAULT_SCHEDULE.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt() + self.bias
        return eps if self.config.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0


@pytest.fixture
def items():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(10, 3, 8, 8, generator=g) * 1.6 - 0.8
    return {"image": image, "buffers": torch.cat([image, torch.rand(10, 6, 8, 8, generator=g)], 1)}


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_an_exact_model_has_no_error_and_a_biased_one_its_bias(items, prediction, monkeypatch):
    monkeypatch.setattr("facerig.diffusion.heldout.global_latent", lambda model, images: torch.zeros(len(images), 4))
    exact = heldout_errors(_Oracle(prediction), items, batch_size=4)
    assert set(exact) == {f"t{lo}-{hi}" for lo, hi in BUCKETS} | {"mean"}
    for k, v in exact.items():
        assert v["eps_mse"] < 1e-6 and v["x0_mse"] < 1e-6, k
    biased = heldout_errors(_Oracle(prediction, bias=0.1), items, batch_size=4)
    if prediction == "epsilon":  # (the v oracle's bias is not a plain epsilon offset)
        assert biased["t600-900"]["eps_mse"] == pytest.approx(0.01, rel=1e-3)
    # the same inputs every call: a fixed seed draws the same timesteps and noise
    again = heldout_errors(_Oracle(prediction, bias=0.1), items, batch_size=3)
    for k, v in biased.items():
        assert again[k] == pytest.approx(v, rel=1e-5), k
    if prediction == "epsilon":  # a constant epsilon error costs x_0 more where the signal is weaker
        assert biased["t900-1000"]["x0_mse"] > biased["t0-100"]["x0_mse"]
