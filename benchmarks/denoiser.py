"""Benchmark the DiffusionRig model: training forward+backward and sampling time per step, by config.

Prints one JSON object. ``fwd_bwd_ms``: one training step's loss forward and backward (denoiser and
encoder, P2 loss, no optimizer step), per batch. ``sample_ms_per_step``: one DDIM step (a no-grad denoiser
call and the scheduler update, latent precomputed), per batch. Medians over ``--repeats``.

    python benchmarks/denoiser.py --configs tiny,small --batch-size 2 --device cpu
    python benchmarks/denoiser.py --configs tiny,small,paper --batch-size 8 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from facerig.diffusion.model import CONFIGS, DiffusionRig, count_parameters
from facerig import runtime
from facerig.diffusion.process import DEFAULT_SCHEDULE, denoiser_fn, sample, training_loss

OFFICIAL_PARAMETERS = 144_610_179


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def bench_config(name: str, batch_size: int, device: torch.device, precision: str, warmup: int, repeats: int,
                 sample_steps: int) -> dict:
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = DiffusionRig(cfg).to(device).use_memory_format(runtime.memory_format(precision))
    s = cfg.image_size
    batch = {"image": torch.rand(batch_size, 3, s, s, device=device) * 2 - 1,
             "buffers": torch.rand(batch_size, 9, s, s, device=device)}
    gen = torch.Generator(device).manual_seed(0)
    autocast = lambda: runtime.autocast(device, precision)  # noqa: E731

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        with autocast():
            loss = training_loss(model, batch, DEFAULT_SCHEDULE, 1.0, 1.0, gen)["loss"]
        loss.backward()

    model.train()
    fwd_bwd_ms = _timed(fwd_bwd, device, warmup, repeats)
    model.zero_grad(set_to_none=True)

    model.eval()
    with torch.no_grad():
        cond = {"buffers": batch["buffers"], "latent": model.encoder(batch["image"])}
    x_T = torch.randn(batch_size, 3, s, s, device=device, generator=gen)

    def sampling():
        with autocast():
            sample(denoiser_fn(model), x_T, cond, "ddim", sample_steps)

    sample_ms = _timed(sampling, device, warmup, repeats) / sample_steps
    return {"image_size": s, "parameters": sum(p.numel() for p in model.parameters()),
            "fwd_bwd_ms": round(fwd_bwd_ms, 2), "sample_ms_per_step": round(sample_ms, 2)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,small", help="comma-separated configs (paper is slow on CPU)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=runtime.PRECISIONS, default="fp32")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sample-steps", type=int, default=5, help="DDIM steps per timed sampling run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    runtime.configure_threads(args.threads)
    device = torch.device(args.device)
    precision = runtime.resolve_precision(args.precision, device)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")
    paper_params = count_parameters("paper")
    cpu = f"cpu ({platform.processor() or platform.machine()})"
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "precision": precision, "sample_steps": args.sample_steps, "repeats": args.repeats,
        "paper_parameters": paper_params, "official_parameters": OFFICIAL_PARAMETERS,
        "paper_matches_official": paper_params == OFFICIAL_PARAMETERS,
        "configs": {n: bench_config(n, args.batch_size, device, precision, args.warmup, args.repeats, args.sample_steps)
                    for n in names},
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
