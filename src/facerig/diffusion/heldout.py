"""Held-out denoising error of a DiffusionRig model, per noise-level bucket: the figure recipes are compared by.

Every item of a capture dataset (photos of people the model never trained on) is noised once per bucket at a
timestep drawn inside it, with noise and timesteps fixed by ``seed``, so two models (or two checkpoints of one
run) see exactly the same inputs. Reported per bucket, as means over items:

- ``eps_mse``: the epsilon MSE (a v model's output converted to epsilon), what DDPM's loss measures;
- ``x0_mse``: the MSE of the predicted x_0 clamped to [-1, 1], as DDIM uses it; at high t this is how much of
  the face a single step recovers, where epsilon's error says little.

    python -m facerig.diffusion.heldout MODEL DATASET [--seed 0]      # prints one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from facerig import runtime
from facerig.dataset import CaptureDataset
from facerig.diffusion.model import DiffusionRig, global_latent
from facerig.diffusion.process import DEFAULT_SCHEDULE, NoiseSchedule, denoiser_fn

BUCKETS = ((0, 100), (100, 300), (300, 600), (600, 900), (900, 1000))


def load_items(data: str, size: int, limit: int | None = None) -> dict[str, torch.Tensor]:
    """A capture dataset's ``image`` (N,3,S,S) and ``buffers`` (N,9,S,S) at ``size`` px, float32."""
    base = CaptureDataset(data)
    n = len(base) if limit is None else min(limit, len(base))
    images, buffers = [], []
    for i in range(n):
        item = base[i]
        images.append(item["image"])
        buffers.append(item["buffers"])
    image, buffer = torch.stack(images).float(), torch.stack(buffers).float()
    if image.shape[-1] != size:
        lin = lambda x: F.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)  # noqa: E731
        image, buffer = lin(image).clamp(-1, 1), lin(buffer)
    return {"image": image, "buffers": buffer}


@torch.no_grad()
def heldout_errors(model: DiffusionRig, items: dict[str, torch.Tensor], seed: int = 0, batch_size: int = 32,
                   precision: str = "fp32", schedule: NoiseSchedule = DEFAULT_SCHEDULE,
                   buckets: tuple[tuple[int, int], ...] = BUCKETS) -> dict[str, dict[str, float]]:
    """{"t0-100": {"eps_mse", "x0_mse"}, ..., "mean": {...}} over ``items`` (see ``load_items``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    image, buffers = items["image"], items["buffers"]
    n = image.shape[0]
    gen = torch.Generator().manual_seed(seed)
    latent = global_latent(model, image.to(device)).float()
    fn = denoiser_fn(model)
    out: dict[str, dict[str, float]] = {}
    try:
        for lo, hi in buckets:
            t = torch.randint(lo, hi, (n,), generator=gen)
            noise = torch.randn(image.shape, generator=gen)
            eps_err, x0_err = [], []
            for s in range(0, n, batch_size):
                x0 = image[s : s + batch_size].to(device)
                tb, nb = t[s : s + batch_size].to(device), noise[s : s + batch_size].to(device)
                x_t = schedule.add_noise(x0, nb, tb)
                with runtime.autocast(device, precision):
                    eps = fn(x_t, tb, {"buffers": buffers[s : s + batch_size].to(device), "latent": latent[s : s + batch_size]})
                eps = eps.float()
                a = schedule.alphas_cumprod.to(device)[tb].float().view(-1, 1, 1, 1)
                pred_x0 = ((x_t - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
                eps_err.append((eps - nb).pow(2).mean(dim=(1, 2, 3)).cpu())
                x0_err.append((pred_x0 - x0).pow(2).mean(dim=(1, 2, 3)).cpu())
            out[f"t{lo}-{hi}"] = {"eps_mse": float(torch.cat(eps_err).mean()), "x0_mse": float(torch.cat(x0_err).mean())}
    finally:
        model.train(was_training)
    out["mean"] = {k: sum(v[k] for v in out.values()) / len(buckets) for k in ("eps_mse", "x0_mse")}
    return out


def main(argv: list[str] | None = None) -> int:
    from facerig.diffusion.checkpoint import load_checkpoint

    p = argparse.ArgumentParser(prog="python -m facerig.diffusion.heldout", description=__doc__.split("\n")[0])
    p.add_argument("model", help="a run folder, checkpoint, save_pretrained folder or weights file")
    p.add_argument("data", help="capture dataset of held-out people")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--precision", default="auto", choices=runtime.PRECISIONS)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads is not None:
        runtime.configure_threads(args.threads)
    model, cfg = load_checkpoint(args.model)
    model = model.float()
    precision = runtime.resolve_precision(args.precision, torch.device("cpu"))
    model.use_memory_format(runtime.memory_format(precision))
    errors = heldout_errors(model, load_items(args.data, cfg.image_size, args.limit), args.seed, precision=precision)
    print(json.dumps({"model": args.model, "data": args.data, "seed": args.seed, "precision": precision, **errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
