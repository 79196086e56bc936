"""fp32 against facerig's fast path, per config, for one DiffusionRig training step and one DDIM step.

Prints one JSON object. For each config, at ``--batch-size`` (8 by default), on this machine:

- ``train``: one full training step as ``facerig train`` runs it (P2 loss forward, backward, gradient
  clipping, fused Adam, EMA update), medians of ``fp32_ms`` and ``fast_ms`` and their ratio ``speedup``;
- ``sample``: one DDIM sampling step as the sampler runs it: ``ddim_sample`` over ``SAMPLE_STEPS`` steps in one
  autocast region (as ``facerig edit`` does, so bf16 weight casts are cached across steps), divided by its
  step count (no-grad denoiser calls and updates, latent precomputed).

and the figures that say how much of this machine the step uses: ``gflop_per_sample`` (forward + backward
FLOPs of the matmuls and convolutions, counted by ``torch.utils.flop_counter``), ``fast_tflops`` (those FLOPs
over the fast step's median time), ``matmul_tflops`` (a 4096^3 matmul at the fast precision, timed in the same
run) and ``utilization``, their ratio.

The fast path is ``--precision auto`` (bf16 autocast with channels_last activations where the CPU has AMX or
AVX512-BF16). Both run the same code and weights; the two are timed alternately, step by step, so load from
other processes affects both alike. Use ``--threads`` to pin the thread count (default: every usable core).

    python benchmarks/train_step.py                      # tiny and small, batch 8, CPU
    python benchmarks/train_step.py --device cuda --configs tiny,small,paper --batch-size 64
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch

from facerig import runtime
from facerig.diffusion.model import CONFIGS, DiffusionRig
from facerig.diffusion.process import DEFAULT_SCHEDULE, ddim_sample, denoiser_fn, training_loss

SAMPLE_STEPS = 10


class _Setup:
    """A model, its optimizer and EMA copy, and a batch, at one precision."""

    def __init__(self, name: str, precision: str, batch_size: int, device: torch.device):
        torch.manual_seed(0)
        cfg = CONFIGS[name]
        self.precision, self.device = precision, device
        self.model = DiffusionRig(cfg).to(device).use_memory_format(runtime.memory_format(precision))
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.params = list(self.model.parameters())
        self.ema_pairs = (list(self.ema.parameters()), self.params)
        self.opt = torch.optim.Adam(self.params, lr=1e-4, fused=True)
        s = cfg.image_size
        g = torch.Generator().manual_seed(1)
        self.batch = {"image": (torch.rand(batch_size, 3, s, s, generator=g) * 2 - 1).to(device),
                      "buffers": torch.rand(batch_size, 9, s, s, generator=g).to(device)}
        self.gen = torch.Generator(device).manual_seed(0)
        with torch.no_grad():
            self.cond = {"buffers": self.batch["buffers"], "latent": self.model.encode(self.batch["image"])}
        self.x = torch.randn(self.batch["image"].shape, generator=g).to(device)

    def train_step(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with runtime.autocast(self.device, self.precision):
            loss = training_loss(self.model, self.batch, DEFAULT_SCHEDULE, 1.0, 1.0, self.gen)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(*self.ema_pairs, 1e-4)

    @torch.no_grad()
    def sample(self) -> None:
        self.model.eval()
        with runtime.autocast(self.device, self.precision):
            ddim_sample(denoiser_fn(self.model), self.x, self.cond, SAMPLE_STEPS)


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def flops_per_sample(setup: "_Setup", batch_size: int) -> float:
    """Matmul and convolution FLOPs of one training step (forward + backward) per item."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        setup.train_step()
    return counter.get_total_flops() / batch_size


def matmul_tflops(precision: str, device: torch.device, n: int = 4096, repeats: int = 5) -> float:
    """Achieved TFLOP/s of an n^3 matmul at ``precision`` (bf16 operands for "bf16"), median of ``repeats``."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    times = [_timed(lambda: a @ b, device) for _ in range(repeats)]
    return 2 * n ** 3 / (statistics.median(times) / 1000) / 1e12


def paired(slow, fast, device: torch.device, warmup: int, repeats: int, per: int = 1) -> dict:
    """Alternate the two, after warm-up; medians (divided by the ``per`` steps one call runs) and their ratio."""
    for _ in range(warmup):
        slow(), fast()
    a, b = [], []
    for _ in range(repeats):
        a.append(_timed(slow, device))
        b.append(_timed(fast, device))
    fp32_ms, fast_ms = statistics.median(a) / per, statistics.median(b) / per
    return {"fp32_ms": round(fp32_ms, 1), "fast_ms": round(fast_ms, 1), "speedup": round(fp32_ms / fast_ms, 2)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,small")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    threads = runtime.configure_threads(args.threads)
    fast = runtime.resolve_precision("auto", device)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__, "threads": threads, "batch_size": args.batch_size,
        "fast_precision": fast, "cpu_bf16": runtime.cpu_has_bf16(), "repeats": args.repeats, "configs": {},
    }
    for name in [n.strip() for n in args.configs.split(",") if n.strip()]:
        slow_setup = _Setup(name, "fp32", args.batch_size, device)
        fast_setup = _Setup(name, fast, args.batch_size, device)
        train = paired(slow_setup.train_step, fast_setup.train_step, device, args.warmup, args.repeats)
        flops = flops_per_sample(fast_setup, args.batch_size)
        peak = matmul_tflops(fast, device)
        achieved = flops * args.batch_size / (train["fast_ms"] / 1000) / 1e12
        train.update(gflop_per_sample=round(flops / 1e9, 2), fast_tflops=round(achieved, 3),
                     matmul_tflops=round(peak, 3), utilization=round(achieved / peak, 2))
        report["configs"][name] = {
            "train": train,
            "sample": paired(slow_setup.sample, fast_setup.sample, device, args.warmup, args.repeats, SAMPLE_STEPS),
        }
        del slow_setup, fast_setup
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
