"""Run every applicable metric over an EDITS folder (layout in ``facerig.eval.items``).

Per item: identity distances (edited <-> source, and both <-> the album when given); edit accuracy when the
item has ``edit.json`` and a re-capture function is given; PSNR/SSIM (whole image and inside the face) in
reconstruction mode. Over the run: Frechet distance of the edited and of the source embeddings to a folder
of real photos. Bad items are skipped with a reason; a missing face or failed re-capture leaves NaN and a
reason for the metrics it affects.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from facerig.eval.edit_accuracy import METRICS as EDIT_METRICS
from facerig.eval.edit_accuracy import edit_accuracy
from facerig.eval.frechet import frechet_distance
from facerig.eval.identity import (
    SAME_PERSON_THRESHOLD,
    FaceAnalysis,
    FolderEmbeddings,
    analyze_face,
    distances_to_set,
    embed_folder,
    embedding_distance,
)
from facerig.eval.image_metrics import psnr, ssim
from facerig.eval.items import EditItem, list_item_folders, load_item

# An edit error this small means that parameter was not edited (its target is the source itself).
UNEDITED_TOL = 1e-6
# Photo (H,W,3) uint8 RGB -> fitted parameters (light, expression, rotation, ...), e.g. facerig's capture.
Recapture = Callable[[np.ndarray], dict[str, torch.Tensor]]

IDENTITY_COLUMNS = ("id_edited_source", "id_edited_album", "id_source_album", "album_match_edited", "album_match_source")
RECON_COLUMNS = ("psnr", "ssim", "psnr_face", "ssim_face")
EDIT_COLUMNS = tuple(f"{m}_{which}" for m in EDIT_METRICS for which in ("source", "edited"))


@dataclass
class ItemResult:
    name: str
    folder: Path
    status: str  # "ok" or "skipped"
    metrics: dict[str, float] = field(default_factory=dict)  # NaN where not computed
    reasons: dict[str, str] = field(default_factory=dict)  # "skipped" or a metric family -> why it is NaN
    mask_source: str = ""  # reconstructions: "mask.png", "landmarks" or "" (no face mask)


@dataclass
class EvalResult:
    edits: Path
    reconstructions: bool
    threshold: float
    items: list[ItemResult]
    album: FolderEmbeddings | None
    real: FolderEmbeddings | None
    edit_accuracy_reason: str  # why edit accuracy was not computed for the whole run; "" when it was tried
    frechet_edited: float | None = None
    frechet_source: float | None = None
    frechet_reason: str = ""
    n_generated: int = 0
    n_sources: int = 0

    @property
    def columns(self) -> tuple[str, ...]:
        return IDENTITY_COLUMNS + (RECON_COLUMNS if self.reconstructions else EDIT_COLUMNS)


def landmark_face_mask(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H,W) {0,1} mask of the face outlined by the 68 iBUG landmarks (jaw line 0-16, then the brows 26-17):
    the face without the forehead, for reconstructions that come without a mask."""
    outline = np.concatenate([landmarks[0:17], landmarks[26:16:-1]])
    im = Image.new("L", (width, height), 0)
    ImageDraw.Draw(im).polygon([tuple(p) for p in outline.tolist()], fill=255)
    return np.asarray(im, dtype=np.float64) / 255.0


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).double() / 255.0


def _reconstruction_metrics(item: EditItem, source_face: FaceAnalysis, result: ItemResult) -> None:
    if item.source.shape != item.edited.shape:
        raise ValueError(f"{item.folder / 'edited.png'}: size {item.edited.shape[1::-1]} differs from source.png {item.source.shape[1::-1]}")
    a, b = _to_tensor(item.source), _to_tensor(item.edited)
    result.metrics["psnr"] = float(psnr(a, b))
    result.metrics["ssim"] = float(ssim(a, b))
    if item.mask is not None:
        mask, result.mask_source = item.mask, "mask.png"
    elif source_face.landmarks is not None:
        mask, result.mask_source = landmark_face_mask(source_face.landmarks, *item.source.shape[:2]), "landmarks"
    else:
        result.reasons["face mask"] = f"no mask.png and {source_face.reason}"
        return
    if mask.sum() == 0:
        result.reasons["face mask"] = f"{result.mask_source} is empty"
        return
    m = torch.from_numpy(mask)
    result.metrics["psnr_face"] = float(psnr(a, b, mask=m))
    result.metrics["ssim_face"] = float(ssim(a, b, mask=m))


def _single(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One photo's parameters with or without a batch dimension -> (1, n) each."""
    return {k: torch.as_tensor(v).detach().double().reshape(1, -1) for k, v in params.items()}


def _edit_metrics(item: EditItem, recapture: Recapture, result: ItemResult) -> None:
    if item.source_params is None or item.target_params is None:
        result.reasons["edit accuracy"] = "no edit.json with source_params and target_params"
        return
    try:
        recaptured = _single(recapture(item.edited))
    except Exception as exc:  # a batch boundary around an external fitter: report the item, go on
        result.reasons["edit accuracy"] = f"re-capture of edited.png failed ({type(exc).__name__}: {exc})"
        return
    try:
        acc = edit_accuracy(item.source_params, item.target_params, recaptured)
    except ValueError as exc:
        result.reasons["edit accuracy"] = f"{item.folder / 'edit.json'} vs re-capture: {exc}"
        return
    if not acc.source:
        result.reasons["edit accuracy"] = "source, target and re-capture share none of light/expression/rotation"
    for m in acc.source:
        result.metrics[f"{m}_source"] = float(acc.source[m][0])
        result.metrics[f"{m}_edited"] = float(acc.edited[m][0])


def evaluate_folder(
    edits: str | Path,
    album: str | Path | None = None,
    real: str | Path | None = None,
    reconstructions: bool = False,
    recapture: Recapture | None = None,
    threshold: float = SAME_PERSON_THRESHOLD,
) -> EvalResult:
    """Evaluate every item of ``edits``; ``recapture`` (photo -> parameters) enables edit accuracy."""
    edits = Path(edits)
    folders = list_item_folders(edits)
    album_emb = embed_folder(album, "album") if album is not None else None
    real_emb = embed_folder(real, "real photos") if real is not None else None
    if reconstructions:
        edit_reason = "reconstruction mode"
    elif recapture is None:
        edit_reason = "no re-capture function given (facerig eval --no-recapture)"
    else:
        edit_reason = ""
    result = EvalResult(edits, reconstructions, threshold, [], album_emb, real_emb, edit_reason)

    # Several edits usually share one source photo: detect and embed each distinct image once (per file
    # name, which the no-face reason quotes).
    cache: dict[tuple[str, str], FaceAnalysis] = {}

    def analyze(image: np.ndarray, what: str) -> FaceAnalysis:
        key = (hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest(), what)
        if key not in cache:
            cache[key] = analyze_face(image, what)
        return cache[key]

    generated, sources = [], {}
    for folder in tqdm(folders, desc="evaluating", unit="item"):
        res = ItemResult(folder.name, folder, "ok", dict.fromkeys(result.columns, math.nan))
        result.items.append(res)
        try:
            item = load_item(folder)
            src, ed = analyze(item.source, "source.png"), analyze(item.edited, "edited.png")
            if reconstructions:
                _reconstruction_metrics(item, src, res)
        except ValueError as exc:
            res.status, res.metrics = "skipped", dict.fromkeys(result.columns, math.nan)
            res.reasons = {"skipped": str(exc)}
            continue
        if no_face := "; ".join(f.reason for f in (src, ed) if f.embedding is None):
            res.reasons["identity"] = no_face
        res.metrics["id_edited_source"] = embedding_distance(ed.embedding, src.embedding)
        if album_emb is not None and len(album_emb.embeddings):
            for who, face in (("edited", ed), ("source", src)):
                d = distances_to_set(face.embedding, album_emb.embeddings)
                res.metrics[f"id_{who}_album"] = float(d.mean())
                res.metrics[f"album_match_{who}"] = float((d < threshold).mean()) if face.embedding is not None else math.nan
        if ed.embedding is not None:
            generated.append(ed.embedding)
        if src.embedding is not None:
            sources[src.embedding.tobytes()] = src.embedding
        if not edit_reason:
            _edit_metrics(item, recapture, res)

    result.n_generated, result.n_sources = len(generated), len(sources)
    if real_emb is None:
        result.frechet_reason = "no --real folder given"
    elif len(real_emb.embeddings) < 2 or len(generated) < 2:
        result.frechet_reason = f"need >= 2 faces per set, have {len(generated)} edited and {len(real_emb.embeddings)} real"
    else:
        result.frechet_edited = frechet_distance(np.stack(generated), real_emb.embeddings)
        if len(sources) >= 2:
            result.frechet_source = frechet_distance(np.stack(list(sources.values())), real_emb.embeddings)
    return result


def _stats(values: list[float]) -> dict[str, float | int]:
    """``n`` computed values (NaN = not computed), of them ``n_inf`` infinite (identical-image PSNR); mean, std,
    median, min and max over the finite ones."""
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    out: dict[str, float | int] = {"n": int((~np.isnan(v)).sum()), "n_inf": int(np.isinf(v).sum())}
    for name, fn in (("mean", np.mean), ("std", np.std), ("median", np.median), ("min", np.min), ("max", np.max)):
        out[name] = float(fn(finite)) if finite.size else math.nan
    return out


def summarize(result: EvalResult) -> dict:
    """The run's numbers as plain Python (floats may be NaN or inf; ``report`` makes them JSON-safe)."""
    ok = [r for r in result.items if r.status == "ok"]

    def col(name: str) -> list[float]:
        return [r.metrics[name] for r in ok]

    e2s = np.asarray(col("id_edited_source"))
    e2s = e2s[np.isfinite(e2s)]
    identity = {
        "threshold": result.threshold,
        "edited_vs_source": {**_stats(col("id_edited_source")), "same_person_rate": float((e2s < result.threshold).mean()) if e2s.size else math.nan},
        "no_face": [{"item": r.name, "reason": r.reasons["identity"]} for r in ok if "identity" in r.reasons],
    }
    if result.album is not None:
        identity["album"] = {"folder": str(result.album.folder), "n_faces": len(result.album.names), "failures": [{"file": f, "reason": why} for f, why in result.album.failures]}
        for name in ("id_edited_album", "id_source_album", "album_match_edited", "album_match_source"):
            identity[name] = _stats(col(name))
    summary: dict = {
        "edits": str(result.edits),
        "mode": "reconstructions" if result.reconstructions else "edits",
        "n_items": len(result.items),
        "n_evaluated": len(ok),
        "skipped": [{"item": r.name, "reason": r.reasons["skipped"]} for r in result.items if r.status == "skipped"],
        "identity": identity,
    }
    if result.reconstructions:
        summary["reconstruction"] = {name: _stats(col(name)) for name in RECON_COLUMNS}
        summary["reconstruction"]["mask_sources"] = {s: sum(r.mask_source == s for r in ok) for s in ("mask.png", "landmarks", "")}
    else:
        edit: dict = {"status": "not computed" if result.edit_accuracy_reason else "ok", "reason": result.edit_accuracy_reason, "metrics": {}}
        for m in EDIT_METRICS:
            pairs = [(r.metrics[f"{m}_source"], r.metrics[f"{m}_edited"]) for r in ok]
            pairs = [(s, e) for s, e in pairs if math.isfinite(s) and math.isfinite(e)]
            # Gap closed over the items that asked for this change (the source is off the target); on the
            # others the target is the source, and the edited error is drift, reported apart.
            asked = [(s, e) for s, e in pairs if s > UNEDITED_TOL]
            drift = [e for s, e in pairs if s <= UNEDITED_TOL]
            if not pairs:
                continue
            s_mean = float(np.mean([p[0] for p in asked])) if asked else math.nan
            e_mean = float(np.mean([p[1] for p in asked])) if asked else math.nan
            edit["metrics"][m] = {"n": len(asked), "source_mean": s_mean, "edited_mean": e_mean,
                                  "gap_closed": 1 - e_mean / s_mean if asked else math.nan,
                                  "n_unedited": len(drift), "drift_unedited": float(np.mean(drift)) if drift else math.nan}
        if not edit["reason"] and not edit["metrics"]:
            edit["status"], edit["reason"] = "not computed", "no item could be scored (see per-item reasons)"
        summary["edit_accuracy"] = edit
    summary["frechet"] = {
        "features": "dlib 128-D face embeddings (Inception weights are not available: this is not FID)",
        "edited_vs_real": result.frechet_edited,
        "source_vs_real": result.frechet_source,
        "n_edited": result.n_generated,
        "n_sources": result.n_sources,
        "n_real": len(result.real.names) if result.real is not None else 0,
        "reason": result.frechet_reason,
    }
    return summary
