"""Landmark accuracy of the capture fit on FFHQ samples with ground-truth 68 landmarks; prints JSON.

Normalised mean error (by inter-ocular distance) of the fitted model's projected landmarks, next to the same
figure for dlib's raw detections (which the fit is given).

    python benchmarks/capture_nme.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

from facerig.capture.detect import detect_faces
from facerig.capture.fit import FitConfig, fit
from facerig.face3d import load_model
from facerig.paths import shared_dir

GROUPS = {"contour": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48), "mouth": range(48, 68)}


def nme(pred: np.ndarray, gt: np.ndarray, idx=slice(None)) -> float:
    iod = np.linalg.norm(gt[36:42].mean(0) - gt[42:48].mean(0))
    return float(np.linalg.norm(pred[idx] - gt[idx], axis=1).mean() / iod)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    folder = shared_dir() / "data" / "ffhq-samples"
    files = sorted(folder.glob("?????.png"))
    images, detected, truth = [], [], []
    for f in files:
        im = np.asarray(Image.open(f).convert("RGB"))
        detected.append(detect_faces(im)[0].landmarks)  # dlib: integer pixel indices, like the ground truth
        truth.append(np.load(f.with_name(f.stem + ".landmarks.npy")))
        images.append(torch.from_numpy(im.copy()).permute(2, 0, 1).float() / 255)
    model = load_model().to(args.device)
    t = time.perf_counter()
    result = fit(torch.stack(images).to(args.device), torch.from_numpy(np.stack(detected) + 0.5).float().to(args.device), model)
    seconds = time.perf_counter() - t
    fitted = result.landmarks.cpu().numpy() - 0.5  # back to the integer-index convention
    per_image = [{"file": f.name, "fit_nme": round(nme(fitted[i], truth[i]), 4), "dlib_nme": round(nme(detected[i], truth[i]), 4)}
                 for i, f in enumerate(files)]
    print(json.dumps({
        "n": len(files), "device": args.device, "fit_seconds": round(seconds, 2),
        "fit_nme": round(float(np.mean([r["fit_nme"] for r in per_image])), 4),
        "dlib_nme": round(float(np.mean([r["dlib_nme"] for r in per_image])), 4),
        "target_fit_nme": 0.05,
        "by_group": {g: {"fit": round(float(np.mean([nme(fitted[i], truth[i], list(ix)) for i in range(len(files))])), 4),
                         "dlib": round(float(np.mean([nme(detected[i], truth[i], list(ix)) for i in range(len(files))])), 4)}
                     for g, ix in GROUPS.items()},
        "per_image": per_image,
    }, indent=2))


if __name__ == "__main__":
    main()
