"""Capture timings on celeba-wild photos: seconds per image for load, detection, alignment and fit, and
batched fit throughput. Prints one JSON object.

    python3 benchmarks/capture.py --n 32 [--device cpu|cuda] [--batch-size 16] [--huge]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facerig.capture.align import align_face
from facerig.capture.detect import detect_faces
from facerig.capture.load import load_photo
from facerig.capture.pipeline import CaptureConfig, ModelFitter
from facerig.paths import shared_dir


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_prepare(paths: list[Path], cfg: CaptureConfig) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    """Per-image seconds of each CPU stage, and the aligned (crop, landmarks) of every photo with a face."""
    stages = {"load": [], "detect": [], "align": []}
    aligned = []
    detect_faces(np.zeros((64, 64, 3), np.uint8))  # loads dlib's models, not timed
    for path in paths:
        t0 = time.perf_counter()
        photo = load_photo(path, max_side=cfg.load_max_side)
        t1 = time.perf_counter()
        faces = detect_faces(photo.image, upsample=cfg.upsample, max_side=cfg.detect_max_side)
        t2 = time.perf_counter()
        stages["load"].append(t1 - t0)
        stages["detect"].append(t2 - t1)
        if faces:
            a = align_face(photo.image, faces[0].landmarks + 0.5, cfg.size, photo.to_original())
            stages["align"].append(time.perf_counter() - t2)
            aligned.append((a.image, a.landmarks))
    summary = {k: {"mean_s": statistics.fmean(v), "median_s": statistics.median(v), "n": len(v)} for k, v in stages.items() if v}
    return summary, aligned


def time_fit(aligned: list[tuple[np.ndarray, np.ndarray]], cfg: CaptureConfig, batch_size: int) -> dict:
    """Seconds per image fitting one at a time (on up to 4 images) and in batches of ``batch_size``."""
    device = torch.device(cfg.device)
    fitter = ModelFitter(cfg.size, device)
    images = torch.from_numpy(np.stack([a[0] for a in aligned])).permute(0, 3, 1, 2).float().div(255).to(device)
    landmarks = torch.from_numpy(np.stack([a[1] for a in aligned])).float().to(device)
    fitter(images[:1], landmarks[:1], False)  # model load and warm-up, not timed
    singles = []
    for i in range(min(4, len(aligned))):
        _sync(device)
        t = time.perf_counter()
        fitter(images[i : i + 1], landmarks[i : i + 1], False)
        _sync(device)
        singles.append(time.perf_counter() - t)
    _sync(device)
    t = time.perf_counter()
    lmk_err = []
    for i in range(0, len(aligned), batch_size):
        lmk_err.append(fitter(images[i : i + batch_size], landmarks[i : i + batch_size], False).landmark_error.float().cpu())
    _sync(device)
    batched = time.perf_counter() - t
    return {
        "single_s_per_image": statistics.fmean(singles),
        "batched_s_per_image": batched / len(aligned),
        "batched_images_per_s": len(aligned) / batched,
        "batch_size": batch_size,
        "landmark_error_px_median": float(torch.cat(lmk_err).median()),
    }


def time_huge(sample: Path, cfg: CaptureConfig, side: int = 8000) -> dict:
    """Load + detect + align of one ``side`` px JPEG made by upscaling ``sample``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "huge.jpg"
        Image.open(sample).convert("RGB").resize((side, side), Image.Resampling.BILINEAR).save(path, quality=90)
        t = time.perf_counter()
        photo = load_photo(path, max_side=cfg.load_max_side)
        t_load = time.perf_counter() - t
        faces = detect_faces(photo.image, upsample=cfg.upsample, max_side=cfg.detect_max_side)
        t_detect = time.perf_counter() - t - t_load
        if faces:
            align_face(photo.image, faces[0].landmarks + 0.5, cfg.size, photo.to_original())
        return {"side_px": side, "load_s": t_load, "detect_s": t_detect, "total_s": time.perf_counter() - t, "face_found": bool(faces)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="number of celeba-wild photos")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--huge", action="store_true", help="also time one 8000 px photo")
    parser.add_argument("--no-fit", action="store_true", help="time only the CPU stages")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    root = shared_dir() / "data" / "celeba-wild" / "images"
    paths = sorted(root.glob("*.jpg"))[: args.n]
    if not paths:
        raise SystemExit(f"{root}: no photos found (set FACERIG_SHARED)")
    cfg = CaptureConfig(size=args.size, device=args.device)
    report: dict = {"photos": len(paths), "size": args.size, "device": args.device, "torch_threads": torch.get_num_threads()}
    report["stages"], aligned = time_prepare(paths, cfg)
    report["faces_found"] = len(aligned)
    if args.huge:
        report["huge"] = time_huge(paths[0], cfg)
    if args.no_fit:
        report["fit"] = "skipped (--no-fit)"
    else:
        try:
            import facerig.capture.fit  # noqa: F401
        except ImportError as exc:
            report["fit"] = f"unavailable: {exc}"
        else:
            report["fit"] = time_fit(aligned, cfg, args.batch_size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
