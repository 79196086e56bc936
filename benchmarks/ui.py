"""The interactive rig's speeds on this machine, as ``facerig ui`` runs them (``facerig.ui.app.RigApp``).

Prints one JSON object: buffer-preview updates per second (edit the parameters, render the buffers at the
preview size, encode the PNG), and for a DiffusionRig edit of ``--steps`` steps its latency and the time
to its first progressive preview, with and without inversion (inversion runs once per photo and step
count; the second edit of a photo reuses it).

    python benchmarks/ui.py --model models/diffusionrig-tiny-celeba64.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from facerig import runtime
from facerig.diffusion.editor import DiffusionRigEditor
from facerig.paths import shared_dir
from facerig.ui.app import RigApp, TorchWorker


def _edit_times(app: RigApp, body: dict) -> dict:
    start = time.perf_counter()
    job_id = app.start_edit(body)["job"]
    first = None
    while True:
        state = app.job(job_id)
        if first is None and state["preview"] is not None:
            first = time.perf_counter() - start
        if state["done"]:
            break
        time.sleep(0.02)  # a browser polls every 150 ms; tighter polling would steal the GIL from the edit
    if state["error"]:
        raise RuntimeError(state["error"])
    return {"latency_s": round(time.perf_counter() - start, 3), "first_preview_s": round(first, 3)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(Path(__file__).parents[1] / "models" / "diffusionrig-tiny-celeba64.safetensors"))
    p.add_argument("--photo", default=str(shared_dir() / "data" / "ffhq-samples" / "00003.png"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--previews", type=int, default=60)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    threads = runtime.configure_threads(args.threads)
    worker = TorchWorker()
    app = RigApp(DiffusionRigEditor(args.model, args.device), "diffusion", worker)
    # As in facerig ui: the torch work on the main thread, the requests (here: this measurement) on another.
    out: dict = {}
    client = threading.Thread(target=lambda: out.update(measure(app, args)) or worker.stop())
    client.start()
    worker.run_forever()
    client.join()
    report = {"device": args.device, "threads": threads, "precision": app.editor.precision, "steps": args.steps, **out}
    print(json.dumps(report, indent=2))
    return report


def measure(app: RigApp, args: argparse.Namespace) -> dict:
    up = app.upload(Path(args.photo).read_bytes(), Path(args.photo).name)
    base = {"session": up["session"], "controls": up["controls"]}
    times = []
    for i in range(args.previews):
        controls = {**up["controls"], "yaw": -30 + 60 * i / args.previews, "light_azimuth": 60 - 120 * i / args.previews}
        start = time.perf_counter()
        app.preview({**base, "controls": controls})
        times.append(time.perf_counter() - start)
    edit = {**base, "controls": {**up["controls"], "yaw": 20.0}, "steps": args.steps, "seed": 0}
    return {
        "preview_updates_per_s": round(1.0 / statistics.median(times), 1),
        "edit_from_noise": _edit_times(app, {**edit, "invert": False}),
        "edit_inverted_first": _edit_times(app, {**edit, "invert": True}),
        "edit_inverted_again": _edit_times(app, {**edit, "invert": True, "controls": {**edit["controls"], "yaw": 10.0}}),
    }


if __name__ == "__main__":
    main()
