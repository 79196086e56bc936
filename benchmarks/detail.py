"""Time of the full-resolution detail step of an edit (``facerig.edit.detail``) on a 1024 px photo; prints JSON.

The photo is an FFHQ sample upscaled to 1024 px (its landmarks give the crop's transform); the faces are the
face model's FFHQ-framed default and a yaw 25 + light-from-the-left edit of it; the rig's images are the
crop at 64 px. Per repeat: cut the crop at the photo's scale, the correspondence at the capture size, the
composition at full size. Medians in ms of wall-clock time and of this process's CPU time (on a machine
shared with other jobs the wall clock also counts the waits).

    python benchmarks/detail.py [--size 1024] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facerig import runtime
from facerig.capture.align import align_transform
from facerig.edit import EditSpec, apply_edit
from facerig.edit.detail import compose, full_crop, surface_correspondence
from facerig.edit.spec import CAPTURE_SIZE
from facerig.face3d import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="the photo's side (its crop's side, clamped to 1024)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    runtime.configure_threads(args.threads)
    shared = os.environ.get("FACERIG_SHARED", "../shared")
    sample = Image.open(f"{shared}/data/ffhq-samples/00003.png").convert("RGB")
    photo = np.asarray(sample.resize((args.size, args.size), Image.Resampling.BICUBIC))
    landmarks = (np.load(f"{shared}/data/ffhq-samples/00003.landmarks.npy") + 0.5) * args.size / sample.width
    transform = align_transform(landmarks, CAPTURE_SIZE)
    face = load_model()
    source = face.default_params(1)
    edited = apply_edit(face, source, EditSpec(yaw=25.0, light_dir=(-1.0, 0.3, 0.6)), {})
    stages = ("cut", "correspondence", "compose")
    wall: dict[str, list[float]] = {k: [] for k in (*stages, "total")}
    cpu: dict[str, list[float]] = {k: [] for k in (*stages, "total")}
    with torch.no_grad():
        for _ in range(args.repeats):
            marks = [(time.perf_counter(), time.process_time())]
            crop, _ = full_crop(photo, transform, CAPTURE_SIZE)
            marks.append((time.perf_counter(), time.process_time()))
            corr = surface_correspondence(face, source, edited, CAPTURE_SIZE)
            marks.append((time.perf_counter(), time.process_time()))
            rig = F.interpolate(crop[None], size=(64, 64), mode="area") * 2 - 1
            out = compose(crop[None], rig, rig.flip(-1), corr)
            marks.append((time.perf_counter(), time.process_time()))
            for i, key in enumerate((*stages, "total")):
                a, b = (marks[i], marks[i + 1]) if key != "total" else (marks[0], marks[-1])
                wall[key].append((b[0] - a[0]) * 1000)
                cpu[key].append((b[1] - a[1]) * 1000)
    print(json.dumps({"photo_side": args.size, "crop_side": int(out.image.shape[-1]), "threads": torch.get_num_threads(),
                      "repeats": args.repeats, "load_average": round(os.getloadavg()[0], 1),
                      "wall_ms": {k: round(statistics.median(v), 1) for k, v in wall.items()},
                      "cpu_ms": {k: round(statistics.median(v), 1) for k, v in cpu.items()}}))


if __name__ == "__main__":
    main()
