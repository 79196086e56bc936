"""``facerig capture``: photos -> a capture dataset (see docs/capture.md)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from facerig.capture.pipeline import MAX_UPSAMPLE, MIN_SIZE, Capture, CaptureConfig, assign_albums, collect_sources, dist_env, read_identities
from facerig.interrupt import interrupts_say


def _int_range(lo: int, hi: int | None = None):
    """An argparse type: an integer in [lo, hi]; argparse reports a bad value in one line with exit code 2."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {f'from {lo} to {hi}' if hi is not None else f'at least {lo}'}, got {value}")
        return value

    return parse


_positive = _int_range(1)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "capture",
        help="detect, align and fit faces in photos into a capture dataset",
        description="Photos -> FFHQ-aligned crops -> fitted 3D faces and buffers, written as a capture dataset. "
        "Resumable: a rerun skips inputs already in the manifest. Under torchrun (RANK/WORLD_SIZE set) each rank "
        "captures its share.",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or quoted globs")
    p.add_argument("--out", required=True, help="dataset folder (created; reused to resume)")
    p.add_argument("--size", type=_int_range(MIN_SIZE), default=256, help=f"aligned crop size in pixels, at least {MIN_SIZE} (default 256)")
    p.add_argument("--album", action="store_true", help="all inputs are one person: fit one shared identity")
    p.add_argument("--identities", metavar="CSV", help="CSV with columns file,identity (paths relative to the CSV); one album per identity")
    p.add_argument("--all-faces", action="store_true", help="capture every face of a photo (keys FILE#faceN), not only the largest")
    p.add_argument("--batch-size", type=_positive, default=16, help="faces per fit call outside album mode (default 16)")
    p.add_argument("--limit", type=_positive, help="capture only the first N inputs")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="fit device; cuda uses GPU LOCAL_RANK")
    p.add_argument("--workers", type=_int_range(0), default=0, help="processes loading/detecting/aligning ahead of the fit (default 0: inline)")
    p.add_argument("--upsample", type=_int_range(0, MAX_UPSAMPLE), default=1, help=f"dlib detector upsampling, 0 to {MAX_UPSAMPLE} (default 1: faces down to ~40 px)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rank, world, local_rank = dist_env()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    device = f"cuda:{local_rank}" if args.device == "cuda" else "cpu"
    cfg = CaptureConfig(size=args.size, all_faces=args.all_faces, batch_size=args.batch_size, device=device, workers=args.workers, upsample=args.upsample)
    identities = read_identities(args.identities) if args.identities else None
    ignored: dict[str, str] = {}
    sources, unassigned = assign_albums(collect_sources(args.inputs, args.out, ignored), identities, args.album)
    capture = Capture(args.out, cfg, rank=rank, world_size=world)
    done = capture.summary  # counted as the job goes: what a Ctrl-C line reports
    with interrupts_say(lambda: f"interrupted after {done.ok} faces captured and {done.failed} inputs failed in this "
                                f"run; rerun the same command to resume (what is done is skipped)"):
        summary = capture.run(sources, unassigned, limit=args.limit)
    report = {"rank": rank, "inputs": summary.inputs, "skipped": summary.skipped, "ok": summary.ok, "failed": summary.failed, "reasons": dict(summary.reasons),
              "ignored": ignored}
    print(json.dumps(report), file=sys.stdout)
    return 0
