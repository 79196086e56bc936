"""StyleRig's speeds on this machine (batch 1, as the interactive rig runs them).

Prints one JSON object:
- ``edits_per_s``: RigNet + generator, one edit (new target parameters -> edited W+ -> image), for the pose
  RigNet and the simultaneous one; the issue's target is >= 10 on this CPU at the shipped size;
- ``ui_live_updates_per_s``: a live preview of ``facerig ui --rig stylerig`` (edit the parameters, render the
  buffers, RigNet + generator, encode both PNGs), median over sliders moved through a range;
- ``projection_s``: projecting a real photo into W+ (the default iterations), once per photo.

    python benchmarks/stylerig.py --model models/stylerig-utk64
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch

from facerig import runtime
from facerig.edit import EditSpec, apply_edit
from facerig.paths import shared_dir
from facerig.stylerig.editor import StyleRigEditor
from facerig.ui.app import RigApp, TorchWorker

MODEL = Path(__file__).parents[1] / "models" / "stylerig-utk64"


def _rate(fn, n: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1.0 / statistics.median(times), 1)


@torch.no_grad()
def edit_rates(editor: StyleRigEditor, seed: int, n: int) -> dict:
    session = editor.prepare_seed(seed)
    w = session.cache.w
    out = {}
    for name, spec in (("pose", EditSpec(yaw=25.0)), ("all", EditSpec(yaw=25.0, light_dir=(-1.0, 0.3, 0.6)))):
        target = apply_edit(editor.face, session.params, spec, {})
        fields = ("rotation",) if name == "pose" else ("rotation", "light")
        out[name] = _rate(lambda: editor.model.generate(editor.model.rig(w, target, fields)[0]), n)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--photo", default=str(shared_dir() / "data" / "ffhq-samples" / "00003.png"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    threads = runtime.configure_threads(args.threads)
    worker = TorchWorker()
    editor = StyleRigEditor(args.model)
    app = RigApp(editor, "stylerig", worker)
    out: dict = {}

    def measure() -> None:
        out["edits_per_s"] = worker.call(edit_rates, editor, args.seed, args.n)
        face = app.face({"seed": args.seed})
        base = {"session": face["session"], "controls": face["controls"]}
        i = iter(range(10**6))

        def live() -> None:
            k = next(i) % 60
            app.preview({**base, "controls": {**face["controls"], "yaw": -30 + k, "light_azimuth": 60 - 2 * k}})

        out["ui_live_updates_per_s"] = _rate(live, args.n)
        start = time.perf_counter()
        app.upload(Path(args.photo).read_bytes(), Path(args.photo).name)
        out["photo_upload_with_projection_s"] = round(time.perf_counter() - start, 2)
        worker.stop()

    # As in facerig ui: torch work on the main thread, requests from another.
    client = threading.Thread(target=measure)
    client.start()
    worker.run_forever()
    client.join()
    report = {"model": args.model, "size": editor.size, "threads": threads, **out}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
