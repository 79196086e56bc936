"""Synthetic round trip of the capture fit, and its batched throughput; prints JSON.

Random faces (yaw within +-40 degrees, random SH light and expression, random albedo tint) are rendered
over random smooth backgrounds and fitted back from the pixels and their projected landmarks (with
detector-like noise: dlib does not find untextured renders reliably, so it is not in this loop).

    python benchmarks/fit.py [--n 32] [--size 128] [--device cpu|cuda] [--noise-px 1.0]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from facerig.capture.fit import FitConfig, fit
from facerig.capture.synthetic import errors, synthetic_faces
from facerig.face3d import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--noise-px", type=float, default=1.0, help="landmark noise, pixels at 256 px")
    args = ap.parse_args()
    model = load_model().to(args.device)
    images, landmarks, truth = synthetic_faces(model, args.n, args.size, args.noise_px)
    fit(images[:2], landmarks[:2], model, FitConfig(image_size=args.size))  # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    result = fit(images, landmarks, model, FitConfig(image_size=args.size))
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    print(json.dumps({
        "device": args.device, "n": args.n, "size": args.size, "landmark_noise_px_at_256": args.noise_px,
        "fit_seconds": round(seconds, 2), "seconds_per_image": round(seconds / args.n, 3),
        "images_per_s": round(args.n / seconds, 2),
        "median_landmark_error_px": round(float(result.landmark_error.median()), 3),
        **errors(truth.to("cpu"), result.params.to("cpu")),
    }, indent=2))


if __name__ == "__main__":
    main()
