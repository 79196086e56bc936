"""Edit gates of a DiffusionRig model on photos of people it never trained on; prints one JSON object.

For each photo: a do-nothing edit, light from the left and from the right, ``--yaw 25``, a smile
(mouthSmile_L=0.8, mouthSmile_R=0.8) and ``--expression-from`` a smiling photo, with ``--invert --steps 50``
(and, with ``--no-invert-seeds N``, the same edits sampled from noise with N seeds). The source and every
edited image are re-captured the same way (facerig's capture of the model-size image), so

    gap closed = 1 - |recapture(edited) - target| / |recapture(source) - target|

per edit type, on the parameter the edit changed (light: SH RMSE; yaw: pose RMSE in degrees; smile: RMSE over
the two coefficients set; expression-from: RMSE over all expression coefficients). ``drift``: for each edit,
the change of the parameters it did not edit (re-captured edited vs re-captured source) over the same change
of a do-nothing edit (gate: <= 1.5). ``identity``: dlib embedding distance edited <-> source (median).
``face_rate``: the share of images in which dlib finds a face.

    python benchmarks/heldout_edits.py --model MODEL --photos P1.jpg P2.jpg ... [--smile-photo S.jpg] [--out DIR] [--rows R.jsonl]
    python benchmarks/heldout_edits.py --summarize R.jsonl [R2.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from facerig import runtime
from facerig.edit import EditSpec
from facerig.edit.editor import load_editor, prepare_targets
from facerig.eval.edit_accuracy import param_errors
from facerig.eval.identity import analyze_face, embedding_distance
from facerig.io import to_uint8_image

SMILE = {"mouthSmile_L": 0.8, "mouthSmile_R": 0.8}


def edits(smile_photo: str | None) -> dict[str, EditSpec]:
    out = {"none": EditSpec(), "light_left": EditSpec(light_dir=(-1.0, 0.3, 0.6)),
           "light_right": EditSpec(light_dir=(1.0, 0.3, 0.6)), "yaw25": EditSpec(yaw=25.0),
           "smile": EditSpec(expression=dict(SMILE))}
    if smile_photo:
        out["expression_from"] = EditSpec(expression_from=smile_photo)
    return out


def measured(kind: str, names: list[str]) -> tuple[str, list[int] | None]:
    """Which error an edit kind is scored on: (param_errors key, expression columns or None)."""
    if kind.startswith("light"):
        return "light_rmse", None
    if kind == "yaw25":
        return "pose_rmse_deg", None
    if kind == "smile":
        return "expression_rmse", [names.index(n) for n in SMILE]
    return "expression_rmse", None


def errors(est: dict, target: dict, cols: list[int] | None) -> dict[str, float]:
    est, target = dict(est), dict(target)
    if cols is not None:
        est["expression"], target["expression"] = est["expression"][:, cols], target["expression"][:, cols]
    return {k: float(v[0]) for k, v in param_errors(est, target).items()}


def summarize(rows: list[dict]) -> dict:
    """Gap closed, drift ratios, identity and face rates over the per-edit rows (see the module docstring)."""
    summary: dict = {"edits": len(rows), "gap_closed": {}, "drift_ratio": {}, "identity_median": {}, "face_rate": {}}
    inv = [r for r in rows if r["invert"] and "edited_error" in r]
    unedited = {"light_left": ("pose_rmse_deg", "expression_rmse"), "light_right": ("pose_rmse_deg", "expression_rmse"),
                "yaw25": ("light_rmse", "expression_rmse"), "smile": ("light_rmse", "pose_rmse_deg"),
                "expression_from": ("light_rmse", "pose_rmse_deg")}
    none_change = {k: statistics.mean(r["change"][k] for r in inv if r["kind"] == "none") for k in
                   ("light_rmse", "expression_rmse", "pose_rmse_deg")} if any(r["kind"] == "none" for r in inv) else {}
    for kind in unedited:
        sel = [r for r in inv if r["kind"] == kind and r["source_error"] and r["source_error"] > 0]
        if sel:
            summary["gap_closed"][kind] = 1 - sum(r["edited_error"] for r in sel) / sum(r["source_error"] for r in sel)
            if none_change:
                summary["drift_ratio"][kind] = {k: statistics.mean(r["change"][k] for r in sel) / max(none_change[k], 1e-9)
                                                for k in unedited[kind]}
    for inverted in (True, False):
        sel = [r for r in rows if r["invert"] == inverted and r["kind"] != "none"]
        ids = [r["identity"] for r in sel if np.isfinite(r["identity"])]
        tag = "invert" if inverted else "noise"
        summary["identity_median"][tag] = statistics.median(ids) if ids else None
        summary["face_rate"][tag] = sum(r["face"] for r in sel) / len(sel) if sel else None
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model")
    p.add_argument("--photos", nargs="+")
    p.add_argument("--summarize", nargs="+", metavar="ROWS", help="only summarize --rows files written before")
    p.add_argument("--smile-photo", help="a smiling photo for --expression-from")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--no-invert-seeds", type=int, default=1, help="seeds per edit sampled from noise (0: none)")
    p.add_argument("--out", help="write each edit's images here (sheets for the note)")
    p.add_argument("--rows", help="append each edit's figures to this JSON-lines file as they come")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.summarize:
        rows = [json.loads(ln) for f in args.summarize for ln in Path(f).read_text().splitlines() if ln.strip()]
        print(json.dumps({"rows": args.summarize, "photos": len({r["photo"] for r in rows}), **summarize(rows)}))
        return 0
    if not (args.model and args.photos):
        p.error("--model and --photos are required (unless --summarize)")
    runtime.configure_threads(args.threads)
    from facerig.eval.commands import capture_recapture

    editor = load_editor("diffusion", args.model)
    recapture = capture_recapture()
    names = editor.face.expression_names
    specs = edits(args.smile_photo)
    rows, t0, known = [], time.time(), {}
    for photo in args.photos:
        try:
            session = editor.prepare(photo)
        except ValueError as exc:
            print(f"skipped {photo}: {exc}", file=sys.stderr)
            continue
        results = {}
        for kind, spec in specs.items():
            results[(kind, True, 0)] = editor.edit(session, spec, prepare_targets(editor, spec, known), steps=args.steps, invert=True)
            for seed in range(args.no_invert_seeds):
                results[(kind, False, seed)] = editor.edit(session, spec, prepare_targets(editor, spec, known), steps=args.steps, seed=seed)
        src_img = to_uint8_image(results[("none", True, 0)].source, (-1, 1))
        src_face = analyze_face(src_img, "source")
        try:
            src_params = recapture(src_img)
        except ValueError:
            src_params = None
        for (kind, inverted, seed), res in results.items():
            img = to_uint8_image(res.edited, (-1, 1))
            face = analyze_face(img, "edited")
            row = {"photo": photo, "kind": kind, "invert": inverted, "seed": seed, "face": face.embedding is not None,
                   "identity": embedding_distance(face.embedding, src_face.embedding)}
            if args.out:
                from PIL import Image

                folder = Path(args.out) / Path(photo).stem
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(folder / f"{kind}_{'inv' if inverted else f'seed{seed}'}.png")
                Image.fromarray(src_img).save(folder / "source.png")
            if inverted and src_params is not None and face.embedding is not None:
                try:
                    ed = recapture(img)
                except ValueError:
                    ed = None
                if ed is not None:
                    target = {k: v for k, v in res.target_params.to_dict().items()}
                    key, cols = measured(kind, names)
                    row["source_error"] = errors(src_params, target, cols).get(key)
                    row["edited_error"] = errors(ed, target, cols).get(key)
                    row["change"] = errors(ed, src_params, None)  # what moved, per parameter group
            rows.append(row)
            if args.rows:
                with open(args.rows, "a") as f:
                    f.write(json.dumps(row) + "\n")
        print(f"{photo}: {len(results)} edits, {time.time() - t0:.0f} s", file=sys.stderr)

    summary = {"model": args.model, "photos": len(args.photos), "steps": args.steps, **summarize(rows)}
    summary["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
