"""Edits at the photo's own resolution (``facerig.edit.detail``) against the rig's own; prints one JSON object.

For each photo, a do-nothing edit, light from the left and from the right, ``--yaw 25`` and a smile
(mouthSmile_L=0.8, mouthSmile_R=0.8), with the rig's inversion (``--invert``) and ``--steps``. Per edit:

- ``side``: the shorter side of edited.png (the crop at the photo's scale, 256..1024 px);
- ``detail``: Laplacian energy (mean squared 3x3 Laplacian of the luminance) of the face region of the
  full-resolution edit over the source crop's, both at that size; ``detail_rig``: the same for the rig's
  output upsampled (bicubic) to that size. The face region: the polygon of each face's projected jaw line
  and brows (landmarks 0-26), the edited face's for the edit, the source's for the photo;
- ``identity``, ``identity_rig``: dlib embedding distance edited <-> source crop, both resized to 256 px;
- ``psnr_face`` (no-edit only): PSNR of the full-resolution round trip against the source crop over the face
  region; ``psnr_face_rig``: the rig's output upsampled, the same way;
- re-capture (capture of the image as ``facerig eval`` does): ``gap closed = 1 - |recapture(edited) - target|
  / |recapture(source) - target|`` on the parameter the edit changed (light: SH RMSE; yaw: pose RMSE in
  degrees; smile: RMSE of the two coefficients), for the full-resolution edit against the full-resolution
  source, and for the rig's image against the rig's source;
- ``seconds``: the rig's edit, and the detail step (crop, correspondence, composition; wall clock and CPU).

Rows are appended to OUT/rows.jsonl as photos finish (a rerun skips the photos already there), and a sheet per
photo (rows: edits; columns: photo crop | rig output upsampled | full-resolution edit) goes to OUT/sheets/.

    python benchmarks/photo_scale_edits.py --model MODEL --photos P1 P2 ... --out DIR [--rig diffusion] [--threads 1]
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
import torch.nn.functional as F
from PIL import Image, ImageDraw

from facerig import runtime
from facerig.edit import EditSpec
from facerig.edit.editor import SessionCapture, load_editor
from facerig.edit.photo_scale import at_photo_scale
from facerig.eval.edit_accuracy import param_errors
from facerig.eval.identity import analyze_face, embedding_distance
from facerig.eval.image_metrics import psnr
from facerig.face3d.camera import project

SMILE = {"mouthSmile_L": 0.8, "mouthSmile_R": 0.8}
EDITS = {"none": EditSpec(), "light_left": EditSpec(light_dir=(-1.0, 0.3, 0.6)),
         "light_right": EditSpec(light_dir=(1.0, 0.3, 0.6)), "yaw25": EditSpec(yaw=25.0), "smile": EditSpec(expression=dict(SMILE))}
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def face_region(face, params, size: int) -> torch.Tensor:
    """(S,S) bool: inside the polygon of the projected jaw line (0-16) and brows (26..17)."""
    lm = project(face(params).landmarks, params, "orthographic", size)[0, :, :2].detach().cpu().numpy()
    outline = np.concatenate([lm[:17], lm[17:27][::-1]])
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in outline], fill=1)
    return torch.from_numpy(np.asarray(img) > 0)


def laplacian_energy(image: torch.Tensor, region: torch.Tensor) -> float:
    """Mean squared Laplacian of the luminance of (3,S,S) ``image`` in [0,1] over the (S,S) ``region``."""
    lum = (image * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0)[None, None]
    lap = F.conv2d(F.pad(lum, (1, 1, 1, 1), mode="replicate"), LAPLACIAN[None, None])[0, 0]
    return float(lap[region].pow(2).mean())


def u8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def at_256(image: torch.Tensor) -> np.ndarray:
    return u8(F.interpolate(image[None], size=(256, 256), mode="bilinear", antialias=True, align_corners=False)[0])


def scored(kind: str, names: list[str]) -> tuple[str, list[int] | None]:
    if kind.startswith("light"):
        return "light_rmse", None
    if kind == "yaw25":
        return "pose_rmse_deg", None
    return "expression_rmse", [names.index(n) for n in SMILE]


def error(est: dict, target: dict, key: str, cols: list[int] | None) -> float:
    est, target = dict(est), dict(target)
    if cols is not None:
        est["expression"], target["expression"] = est["expression"][:, cols], target["expression"][:, cols]
    return float(param_errors(est, target)[key][0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--rig", default="diffusion")
    p.add_argument("--photos", nargs="+", required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    runtime.configure_threads(args.threads)
    out = Path(args.out)
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {r["photo"] for r in rows}
    editor = load_editor(args.rig, args.model)
    recapture_session = SessionCapture(editor.face)

    def recapture(image: np.ndarray) -> dict | None:
        try:
            return recapture_session(image).params.to_dict()
        except ValueError:
            return None

    options = {"steps": args.steps, "invert": True} if args.rig == "diffusion" else {"steps": args.steps}
    names = editor.face.expression_names
    for photo in args.photos:
        if photo in done:
            continue
        session = editor.prepare(photo)
        photo_rows, sheet = [], []
        for kind, spec in EDITS.items():
            t0 = time.perf_counter()
            result = editor.edit(session, spec, {}, **options)
            t_edit = time.perf_counter() - t0
            full = at_photo_scale(photo, session, result, editor.face)
            size = full.size
            if kind == "none":
                source_region = face_region(editor.face, result.source_params, size)
                source_energy = laplacian_energy(full.source, source_region)
                source_face = analyze_face(at_256(full.source), "source")
                source_params = {"full": recapture(u8(full.source)),
                                 "rig": recapture(u8(result.source.detach().cpu() * 0.5 + 0.5))}
            region = face_region(editor.face, result.target_params, size)
            row = {"photo": photo, "kind": kind, "side": size, "seconds_edit": round(t_edit, 2), "seconds_detail": round(full.seconds, 3),
                   "cpu_seconds_detail": round(full.cpu_seconds, 3),
                   "detail": laplacian_energy(full.edited, region) / source_energy,
                   "detail_rig": laplacian_energy(full.rig, region) / source_energy,
                   "identity": embedding_distance(analyze_face(at_256(full.edited), "edited").embedding, source_face.embedding),
                   "identity_rig": embedding_distance(analyze_face(at_256(full.rig), "rig").embedding, source_face.embedding)}
            if kind == "none":
                row["psnr_face"] = float(psnr(full.source[None], full.edited[None], source_region[None, None].float()))
                row["psnr_face_rig"] = float(psnr(full.source[None], full.rig[None], source_region[None, None].float()))
            else:
                key, cols = scored(kind, names)
                target = result.target_params.to_dict()
                rig_image = u8(result.edited.detach().cpu() * 0.5 + 0.5)
                for tag, image in (("full", u8(full.edited)), ("rig", rig_image)):
                    est, src = recapture(image), source_params[tag]
                    if est is not None and src is not None:
                        row[f"error_{tag}"], row[f"source_error_{tag}"] = error(est, target, key, cols), error(src, target, key, cols)
            photo_rows.append(row)
            sheet.append(np.concatenate([u8(full.source), u8(full.rig), u8(full.edited)], 1))
            print(f"{photo} {kind}: {json.dumps(row)}", file=sys.stderr)
        Image.fromarray(np.concatenate(sheet, 0)).save(out / "sheets" / f"{Path(photo).stem}.png")
        with rows_path.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in photo_rows))
        rows += photo_rows

    summary: dict = {"model": args.model, "rig": args.rig, "steps": args.steps, "photos": len({r["photo"] for r in rows})}
    median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    finite = lambda xs: [x for x in xs if x is not None and np.isfinite(x)]  # noqa: E731
    for kind in EDITS:
        sel = [r for r in rows if r["kind"] == kind]
        entry = {"side_min": min(r["side"] for r in sel), "detail_median": median([r["detail"] for r in sel]),
                 "detail_min": min(r["detail"] for r in sel), "detail_rig_median": median([r["detail_rig"] for r in sel]),
                 "identity_median": median(finite([r["identity"] for r in sel])),
                 "identity_rig_median": median(finite([r["identity_rig"] for r in sel])),
                 "seconds_edit_median": median([r["seconds_edit"] for r in sel]),
                 "seconds_detail_median": median([r["seconds_detail"] for r in sel]),
                 "cpu_seconds_detail_median": median([r["cpu_seconds_detail"] for r in sel])}
        if kind == "none":
            entry["psnr_face_median"] = median([r["psnr_face"] for r in sel])
            entry["psnr_face_min"] = min(r["psnr_face"] for r in sel)
            entry["psnr_face_rig_median"] = median([r["psnr_face_rig"] for r in sel])
        else:
            for tag in ("full", "rig"):
                scored_rows = [r for r in sel if f"error_{tag}" in r and r[f"source_error_{tag}"] > 0]
                if scored_rows:
                    entry[f"gap_closed_{tag}"] = 1 - sum(r[f"error_{tag}"] for r in scored_rows) / sum(r[f"source_error_{tag}"] for r in scored_rows)
        summary[kind] = entry
    edited = [r for r in rows if r["kind"] != "none"]
    summary["edits"] = {"identity_median": median(finite([r["identity"] for r in edited])),
                        "identity_rig_median": median(finite([r["identity_rig"] for r in edited])),
                        "detail_median": median([r["detail"] for r in edited])}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
