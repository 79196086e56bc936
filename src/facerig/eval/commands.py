"""``facerig eval``: score a folder of edits (or reconstructions) and write a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from facerig.eval.evaluate import Recapture, evaluate_folder
from facerig.eval.identity import SAME_PERSON_THRESHOLD
from facerig.eval.report import fmt_num, write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score edits or reconstructions: identity, edit accuracy, PSNR/SSIM, Frechet distance",
        description="Evaluate EDITS/<name>/{source.png, edited.png[, edit.json][, mask.png]} and write "
        "summary.json, items.csv, report.md and report.html into --out.",
    )
    p.add_argument("edits", type=Path, help="folder with one sub-folder per edit")
    p.add_argument("--out", type=Path, required=True, help="report folder (created)")
    p.add_argument("--album", type=Path, help="the person's other photos, for identity-to-album distances")
    p.add_argument("--real", type=Path, help="real photos for the Frechet distance of face embeddings")
    p.add_argument("--reconstructions", action="store_true", help="edited.png reconstructs source.png: PSNR/SSIM")
    p.add_argument("--threshold", type=float, default=SAME_PERSON_THRESHOLD, help="same-person embedding distance")
    p.add_argument("--grid-items", type=int, default=16, help="items shown in the sample grid")
    p.add_argument("--no-recapture", action="store_true", help="skip edit accuracy (it re-captures every edited photo)")
    p.set_defaults(func=_run_cli)


def capture_recapture() -> Recapture:
    """Edit accuracy's re-capture: facerig's own capture (DECA's role in the paper's protocol), with one
    face model for every item."""
    from facerig.capture.photo import PhotoCapture

    capture = PhotoCapture(device="cpu")
    return lambda image: capture(image, "edited.png").params.to_dict()


def _run_cli(args: argparse.Namespace) -> int:
    return run(args, None if args.no_recapture else capture_recapture())


def run(args: argparse.Namespace, recapture: Recapture | None = None) -> int:
    """The command; ``recapture`` (photo -> parameters) enables edit accuracy."""
    result = evaluate_folder(args.edits, album=args.album, real=args.real, reconstructions=args.reconstructions, recapture=recapture, threshold=args.threshold)
    summary = write_report(result, args.out, grid_items=args.grid_items)
    print(f"{summary['n_evaluated']}/{summary['n_items']} items evaluated, {len(summary['skipped'])} skipped")
    ident = summary["identity"]["edited_vs_source"]
    print(f"identity edited-source: mean {fmt_num(ident['mean'])} (n={ident['n']}), same-person rate {fmt_num(ident['same_person_rate'])}")
    for m, v in summary.get("edit_accuracy", {}).get("metrics", {}).items():
        print(f"{m}: source {fmt_num(v['source_mean'])} -> edited {fmt_num(v['edited_mean'])} (gap closed {fmt_num(v['gap_closed'], 3)})")
    if summary.get("edit_accuracy", {}).get("reason"):
        print(f"edit accuracy not computed: {summary['edit_accuracy']['reason']}")
    for m, v in summary.get("reconstruction", {}).items():
        if m != "mask_sources":
            print(f"{m}: mean {fmt_num(v['mean'])} (n={v['n']}, {v['n_inf']} identical)")
    fr = summary["frechet"]
    if fr["edited_vs_real"] is not None:
        print(f"Frechet distance (dlib embeddings) to real: edited {fmt_num(fr['edited_vs_real'])}, source {fmt_num(fr['source_vs_real'])}")
    print(f"report: {args.out / 'report.html'}")
    return 0
