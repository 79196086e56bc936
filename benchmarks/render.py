"""Render benchmark: ms per 256x256 buffer set for the ICT face+head mesh; prints JSON.

    python benchmarks/render.py [--device cpu|cuda] [--size 256] [--batch 8] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from facerig.face3d import load_model
from facerig.face3d.model import random_params
from facerig.render import Renderer, RenderConfig


def _time(fn, repeats: int, device: str) -> list[float]:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--projection", default="orthographic")
    args = ap.parse_args()
    model = load_model().to(args.device)
    renderer = Renderer(model, RenderConfig(args.size, args.projection))
    results = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "machine": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
               "mesh": {"vertices": model.n_vertices, "triangles": int(model.faces.shape[0])}, "size": args.size}
    for batch, key in ((1, "single"), (args.batch, f"batch{args.batch}")):
        params = random_params(model, batch, torch.Generator().manual_seed(0))
        fwd = lambda: renderer(params)  # noqa: E731
        with torch.no_grad():
            _time(fwd, 3, args.device)
            t = sorted(_time(fwd, args.repeats, args.device))
        grad_params = params.map(lambda x: x.clone().requires_grad_(x.is_floating_point()))

        def fwd_bwd():
            renderer(grad_params).rendered.sum().backward()

        _time(fwd_bwd, 2, args.device)
        tb = sorted(_time(fwd_bwd, max(3, args.repeats // 2), args.device))
        results[key] = {
            "batch": batch,
            "forward_ms_median": round(t[len(t) // 2], 2),
            "forward_ms_min": round(t[0], 2),
            "ms_per_image": round(t[len(t) // 2] / batch, 2),
            "images_per_s": round(1000 * batch / t[len(t) // 2], 1),
            "forward_backward_ms_median": round(tb[len(tb) // 2], 2),
        }
    results["target_ms_single_cpu"] = 30
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
