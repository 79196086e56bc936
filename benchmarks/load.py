"""Load timings the tests used to assert: the ICT model from its cache, and an 8000 px JPEG decoded at
reduced DCT scale. Prints one JSON object.

    python3 benchmarks/load.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from facerig.capture.load import load_photo
from facerig.face3d.ict import load_ict
from facerig.paths import shared_dir


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    load_ict()  # imports the OBJs into the cache on a fresh machine; not timed
    report = {"ict_cached_load_s": best_of(load_ict, args.repeats)}
    with tempfile.TemporaryDirectory() as tmp:
        huge = Path(tmp) / "huge.jpg"
        sample = Image.open(shared_dir() / "data" / "ffhq-samples" / "00002.png").convert("RGB")
        sample.resize((8000, 8000), Image.Resampling.BILINEAR).save(huge, quality=90)
        report["jpeg_8000px_load_s"] = best_of(lambda: load_photo(huge, max_side=3000), args.repeats)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
