"""StyleRig's evaluation protocol (``facerig stylerig evaluate``) on random generated faces.

For ``n`` seeds from ``SEED_BASE`` (latents never drawn in training): the face is generated and captured
by facerig's capture (as any photo is), every edit of ``EDITS`` is applied to those captured parameters,
RigNet edits the latent, and the result is captured again. Reported per edit:

- gap closed (``facerig.eval.edit_accuracy``) on the parameter it edits, median over faces; for expression
  edits also on the coefficients they set (``gap_expression_edited``, what the smile and jaw gates read);
- drift: the re-captured RMSE of the parameters it does not edit (for expression edits also of the
  expression coefficients they do not set) against the source's, next to the DFR's
  own error (DFR(w) against the capture of G(w) on the same faces) and to the "none" edit: the simultaneous
  RigNet asked for DFR's own parameters, i.e. what one RigNet pass changes when nothing should change;
- identity: dlib embedding distance edited <-> source (same person below 0.6).

``summary.json`` holds every figure and the gates of the StyleRig issue; ``sheet.png`` shows 8 faces with
each edit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from facerig.edit import EditSpec, apply_edit
from facerig.face3d import FaceParams
from facerig.io import to_uint8_image
from facerig.stylerig.editor import edited_fields
from facerig.stylerig.rig import MODES

SEED_BASE = 100_000
SMILE = {"mouthSmile_L": 0.8, "mouthSmile_R": 0.8}
EDITS = {
    "none": EditSpec(),
    "yaw+30": EditSpec(yaw=30.0), "yaw-30": EditSpec(yaw=-30.0),
    "light_left": EditSpec(light_dir=(-1.0, 0.3, 0.6)), "light_right": EditSpec(light_dir=(1.0, 0.3, 0.6)),
    "smile": EditSpec(expression=SMILE), "jaw_open": EditSpec(expression={"jawOpen": 0.6}),
}
METRIC = {"rotation": "pose_rmse_deg", "light": "light_rmse", "expression": "expression_rmse"}
# Gate -> (edits, the figure, threshold). Expression edits are scored on the coefficients they set: one
# coefficient moved by 0.3 is an RMSE of 0.04 over all 53, as much as re-capture noise; the RMSE over all of
# them (``gap_expression``) is reported too, and drift in the others is scored against the DFR's error.
GATES = {"yaw": ("yaw+30", "yaw-30", "gap_rotation", 0.6), "light": ("light_left", "light_right", "gap_light", 0.5),
         "smile": ("smile", None, "gap_expression_edited", 0.4),
         "jaw_open": ("jaw_open", None, "gap_expression_edited", 0.4)}
# A drift figure's DFR error to compare with, where the names differ.
DFR_REFERENCE = {"expression_others_rmse": "expression_rmse"}
IDENTITY_GATE = 0.4
BATCH = 32


def _errors(a: FaceParams, b: FaceParams) -> dict[str, torch.Tensor]:
    from facerig.eval.edit_accuracy import param_errors

    keys = ("light", "expression", "rotation")
    return param_errors({k: getattr(a, k) for k in keys}, {k: getattr(b, k) for k in keys})


def _gap(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per face, the fraction of the source's error to the target that the edit removed (NaN: no gap)."""
    return torch.where(before > 0, 1 - after / before, torch.full_like(before, math.nan))


def _uint8(images: torch.Tensor) -> np.ndarray:
    """(B,3,S,S) generated images in [-1,1] -> (B,S,S,3) uint8, as photos are read."""
    return np.stack([to_uint8_image(image, (-1, 1)) for image in images])


def _median(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


@torch.no_grad()
def evaluate(model_dir: str | Path, n: int = 200, out: str | Path = "stylerig_eval") -> dict:
    from PIL import Image

    from facerig.capture.photo import PhotoCapture
    from facerig.edit.spec import CAPTURE_SIZE
    from facerig.eval.identity import analyze_face, embedding_distance
    from facerig.face3d import load_model
    from facerig.io import atomic_write_json, contact_sheet, writable_folder
    from facerig.stylerig.model import StyleRigModel

    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    out = writable_folder(out)
    model = StyleRigModel.from_pretrained(model_dir)
    face = load_model()
    capture = PhotoCapture(face, "cpu", CAPTURE_SIZE)
    template = face.default_params(1)
    # Variants may be trained without some RigNets (ablations skip the simultaneous one, which "none" needs).
    edits = {k: v for k, v in EDITS.items() if model.mode_for(MODES["all"] if k == "none" else edited_fields(v))}
    per_edit: dict[str, dict[str, list]] = {name: {} for name in edits}
    dfr_err: dict[str, list] = {}
    sheet_rows: list[list[np.ndarray]] = []
    n_sources = n_found = 0
    for start in tqdm(range(0, n, BATCH), desc="stylerig evaluate"):
        seeds = range(SEED_BASE + start, SEED_BASE + min(n, start + BATCH))
        w = torch.cat([model.latent(s) for s in seeds])
        src_images = _uint8(model.generate(w))
        _, found, fit = capture.many(src_images)
        src_params = fit.params.detach() if fit is not None else None
        n_sources += len(seeds)
        n_found += int(found.sum())
        if src_params is None:
            continue
        w = w[torch.from_numpy(found)]
        src_images = src_images[found]
        for k, v in _errors(model.face_params(w, template), src_params).items():
            dfr_err.setdefault(k, []).extend(v.tolist())
        src_faces = [analyze_face(im, "source") for im in src_images]
        row_images = {"source": src_images}
        for name, spec in edits.items():
            target = apply_edit(face, src_params, spec, {})
            if name == "none":  # a RigNet pass asked for DFR's own parameters: what a pass alone changes
                w_edit = model.rig(w, model.face_params(w, template), MODES["all"])[0]
            else:
                w_edit = model.rig(w, target, edited_fields(spec))[0]
            images = _uint8(model.generate(w_edit))
            row_images[name] = images
            _, ok, fit = capture.many(images)
            recaptured = fit.params.detach() if fit is not None else None
            rec = per_edit[name]
            rec.setdefault("face_found", []).extend(ok.tolist())
            rec.setdefault("identity", []).extend(
                embedding_distance(s.embedding, analyze_face(im, name).embedding) for s, im in zip(src_faces, images))
            if recaptured is None:
                continue
            mask = torch.from_numpy(ok)
            src_ok, tgt_ok = src_params[mask], target[mask]
            before, after = _errors(src_ok, tgt_ok), _errors(recaptured, tgt_ok)
            drift = _errors(recaptured, src_ok)
            for field in ("rotation", "light", "expression"):
                m = METRIC[field]
                if field in edited_fields(spec):
                    rec.setdefault(f"gap_{field}", []).extend(_gap(before[m], after[m]).tolist())
                else:
                    rec.setdefault(f"drift_{m}", []).extend(drift[m].tolist())
            if spec.expression:
                index = [face.expression_index(k) for k in spec.expression]
                rms = lambda p: (p.expression[:, index] - tgt_ok.expression[:, index]).pow(2).mean(1).sqrt()  # noqa: E731
                rec.setdefault("gap_expression_edited", []).extend(_gap(rms(src_ok), rms(recaptured)).tolist())
                others = [i for i in range(src_ok.expression.shape[1]) if i not in index]
                moved = (recaptured.expression[:, others] - src_ok.expression[:, others]).pow(2).mean(1).sqrt()
                rec.setdefault("drift_expression_others_rmse", []).extend(moved.tolist())
        if len(sheet_rows) < 8:
            for i in range(min(8 - len(sheet_rows), len(src_images))):
                sheet_rows.append([row_images[k][i] for k in row_images])
    Image.fromarray(contact_sheet(sheet_rows)).save(Path(out) / "sheet.png")

    results = {}
    for name, rec in per_edit.items():
        results[name] = {k: (float(np.mean(v)) if k == "face_found" else _median(v)) for k, v in rec.items()}
        results[name]["items"] = len(rec.get("face_found", []))
    none = results.get("none", {})
    gates = {}
    for gate, (a, b, figure, threshold) in GATES.items():
        if a not in per_edit:
            continue
        values = per_edit[a].get(figure, []) + (per_edit[b].get(figure, []) if b else [])
        gates[f"{gate}_gap_closed"] = {"value": _median(values), "threshold": threshold, "met": _median(values) >= threshold}
    identity = [d for name in per_edit if name != "none" for d in per_edit[name]["identity"]]
    gates["identity_median"] = {"value": _median(identity), "threshold": IDENTITY_GATE, "met": _median(identity) <= IDENTITY_GATE}
    dfr_median = {k: _median(v) for k, v in dfr_err.items()}
    drift_ok = {}
    for name in per_edit:
        for key, value in results[name].items():
            if key.startswith("drift_"):
                metric = key[len("drift_"):]
                reference = dfr_median.get(DFR_REFERENCE.get(metric, metric))
                drift_ok[f"{name}:{metric}"] = {"value": value, "dfr_error": reference, "none_edit": none.get(key),
                                                "met": bool(value <= (math.inf if reference is None else reference))}
    gates["drift_within_dfr_error"] = {"met": all(d["met"] for d in drift_ok.values()), "items": drift_ok}
    summary = {"model": str(model_dir), "faces": n_sources, "source_face_rate": n_found / max(1, n_sources),
               "dfr_error_median": dfr_median, "edits": results, "gates": {k: v.get("met") for k, v in gates.items()},
               "gate_values": gates, "sheet_columns": ["source", *per_edit]}
    atomic_write_json(Path(out) / "summary.json", summary)
    return summary

