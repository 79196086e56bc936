"""``facerig eval`` end to end on tiny EDITS folders built from the FFHQ samples."""

import argparse
import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import shared_path
from PIL import Image

from facerig.eval import commands
from facerig.eval.evaluate import evaluate_folder, landmark_face_mask, summarize
from facerig.eval.items import read_rgb

NOISE = 8.0  # grey levels of noise on the "edited" photos

# Source at 20 deg of yaw with zero light; the edit asks for light 0.2 and a frontal pose.
SOURCE = {"light": [[0.0] * 3] * 9, "expression": [0.0] * 10, "rotation": [0.0, math.radians(20), 0.0]}
TARGET = {"light": [[0.2] * 3] * 9, "expression": [0.0] * 10, "rotation": [0.0, 0.0, 0.0]}


def fake_recapture(image: np.ndarray) -> dict[str, torch.Tensor]:
    """Stands in for facerig's capture: fails on a faceless (flat) photo, else 'finds' light 0.15 (a quarter of
    the requested change missing), expression 0.1 (leaked) and 5 deg of yaw left."""
    if image.std() < 1:
        raise ValueError("no face found")
    return {
        "light": torch.full((1, 9, 3), 0.15),
        "expression": torch.full((1, 10), 0.1),
        "rotation": torch.tensor([[0.0, math.radians(5), 0.0]]),
    }


def _noisy(image: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, NOISE, image.shape)
    return np.clip(image + noise, 0, 255).round().astype(np.uint8)


def _item(root: Path, name: str, source: np.ndarray | None, edited: np.ndarray | None, edit: object = None, mask: np.ndarray | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if source is not None:
        Image.fromarray(source).save(d / "source.png")
    if edited is not None:
        Image.fromarray(edited).save(d / "edited.png")
    if isinstance(edit, str):
        (d / "edit.json").write_text(edit)
    elif edit is not None:
        (d / "edit.json").write_text(json.dumps(edit))
    if mask is not None:
        Image.fromarray(mask).save(d / "mask.png")
    return d


def _ffhq(i: int) -> np.ndarray:
    return read_rgb(shared_path("data", "ffhq-samples", f"{i:05d}.png"))


def _copy_photos(dst: Path, indices: range) -> Path:
    dst.mkdir()
    for i in indices:
        Image.fromarray(_ffhq(i)).save(dst / f"{i:05d}.png")
    return dst


@pytest.fixture(scope="module")
def edits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("edits")
    edits = root / "EDITS"
    params = {"source_params": SOURCE, "target_params": TARGET}
    flat = np.full((256, 256, 3), 128, np.uint8)
    _item(edits, "a_noisy", _ffhq(0), _noisy(_ffhq(0), 0), params)
    _item(edits, "b_same", _ffhq(1), _ffhq(1), params)
    _item(edits, "c_faceless", _ffhq(2), flat, params)
    _item(edits, "d_no_edit_json", _ffhq(3), _noisy(_ffhq(3), 3))
    _item(edits, "e_missing_edited", _ffhq(4), None, params)
    _item(edits, "f_corrupt_json", _ffhq(5), _ffhq(5), "{oops")
    album = _copy_photos(root / "album", range(6, 8))
    real = _copy_photos(root / "real", range(6, 10))
    args = argparse.Namespace(edits=edits, out=root / "report", album=album, real=real, reconstructions=False, threshold=0.6, grid_items=16)
    assert commands.run(args, recapture=fake_recapture) == 0
    return args


@pytest.fixture(scope="module")
def recon_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    edits = root / "EDITS"
    mask = np.asarray(Image.open(shared_path("data", "ffhq-samples", "00000.face-mask.png")).convert("L"))
    flat = np.full((64, 64, 3), 90, np.uint8)
    _item(edits, "r_noisy", _ffhq(0), _noisy(_ffhq(0), 10), mask=mask)
    _item(edits, "r_same", _ffhq(1), _ffhq(1))
    _item(edits, "r_faceless", flat, _noisy(flat, 11))
    _item(edits, "r_wrong_size", _ffhq(2), _ffhq(2)[:128, :128])
    args = argparse.Namespace(edits=edits, out=root / "report", album=None, real=None, reconstructions=True, threshold=0.6, grid_items=2)
    assert commands.run(args) == 0
    return args, mask


def _summary(out: Path) -> dict:
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads((out / "summary.json").read_text(), parse_constant=refuse)


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "items.csv") as f:
        return {r["item"]: r for r in csv.DictReader(f)}


def test_gap_closed_counts_only_the_items_that_asked_for_that_change(tmp_path):
    """A light-only edit and a pose-only edit: each type's gap closed comes from its own item alone, and the
    other item's error on that parameter is drift, not a negative gap."""
    edits = tmp_path / "EDITS"
    light_only = {**SOURCE, "light": TARGET["light"]}
    pose_only = {**SOURCE, "rotation": TARGET["rotation"]}
    _item(edits, "light", _ffhq(0), _noisy(_ffhq(0), 0), {"source_params": SOURCE, "target_params": light_only})
    _item(edits, "pose", _ffhq(1), _noisy(_ffhq(1), 1), {"source_params": SOURCE, "target_params": pose_only})
    m = summarize(evaluate_folder(edits, recapture=fake_recapture))["edit_accuracy"]["metrics"]
    assert m["light_rmse"]["n"] == 1 and m["light_rmse"]["gap_closed"] == pytest.approx(0.75)
    assert m["light_rmse"]["n_unedited"] == 1 and m["light_rmse"]["drift_unedited"] == pytest.approx(0.15)
    assert m["pose_geodesic_deg"]["n"] == 1 and m["pose_geodesic_deg"]["gap_closed"] == pytest.approx(0.75)
    assert m["pose_geodesic_deg"]["drift_unedited"] == pytest.approx(15.0, abs=1e-3)


def test_edits_report_files_and_fields(edits_run):
    out = edits_run.out
    for name in ("summary.json", "items.csv", "report.md", "report.html", "identity.png", "edit_accuracy.png", "grid.png"):
        assert (out / name).stat().st_size > 0, name
    s = _summary(out)
    assert s["mode"] == "edits" and s["n_items"] == 6 and s["n_evaluated"] == 4
    assert {k["item"] for k in s["skipped"]} == {"e_missing_edited", "f_corrupt_json"}
    assert set(s["files"]) >= {"summary.json", "items.csv", "report.md", "report.html", "grid.png"}
    ident = s["identity"]
    assert ident["threshold"] == 0.6 and ident["edited_vs_source"]["n"] == 3
    assert ident["edited_vs_source"]["same_person_rate"] == 1.0
    assert ident["no_face"] == [{"item": "c_faceless", "reason": "no face detected in edited.png"}]
    assert ident["album"]["n_faces"] == 2 and ident["id_edited_album"]["n"] == 3
    m = s["edit_accuracy"]["metrics"]
    assert s["edit_accuracy"]["status"] == "ok" and m["light_rmse"]["n"] == 2
    assert m["light_rmse"]["source_mean"] == pytest.approx(0.2) and m["light_rmse"]["edited_mean"] == pytest.approx(0.05)
    assert m["light_rmse"]["gap_closed"] == pytest.approx(0.75)
    assert m["pose_geodesic_deg"]["source_mean"] == pytest.approx(20) and m["pose_geodesic_deg"]["gap_closed"] == pytest.approx(0.75)
    assert m["pose_rmse_deg"]["edited_mean"] == pytest.approx(5 / math.sqrt(3), rel=1e-5)
    assert m["expression_rmse"]["gap_closed"] is None  # not edited: NaN -> null
    # ... and what the edits leaked into it is reported as drift: fake re-capture finds 0.1 everywhere
    assert m["expression_rmse"]["n"] == 0 and m["expression_rmse"]["n_unedited"] == 2
    assert m["expression_rmse"]["drift_unedited"] == pytest.approx(0.1)
    fr = s["frechet"]
    assert fr["n_edited"] == 3 and fr["n_sources"] == 4 and fr["n_real"] == 4
    assert fr["edited_vs_real"] > 0 and fr["source_vs_real"] > 0 and "not FID" in fr["features"]


def test_edits_csv_has_one_row_per_item_with_reasons(edits_run):
    rows = _rows(edits_run.out)
    assert set(rows) == {"a_noisy", "b_same", "c_faceless", "d_no_edit_json", "e_missing_edited", "f_corrupt_json"}
    assert rows["b_same"]["id_edited_source"] == "0"
    assert 0 < float(rows["a_noisy"]["id_edited_source"]) < 0.3
    assert float(rows["a_noisy"]["light_rmse_edited"]) == pytest.approx(0.05, abs=1e-6)
    assert rows["c_faceless"]["id_edited_source"] == "" and "no face detected in edited.png" in rows["c_faceless"]["notes"]
    assert "re-capture of edited.png failed (ValueError: no face found)" in rows["c_faceless"]["notes"]
    assert "no edit.json" in rows["d_no_edit_json"]["notes"]
    assert rows["e_missing_edited"]["status"] == "skipped" and "edited.png: missing" in rows["e_missing_edited"]["notes"]
    assert "edit.json: not valid JSON" in rows["f_corrupt_json"]["notes"]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_markdown_and_html_reports(edits_run):
    out = edits_run.out
    md = (out / "report.md").read_text()
    for heading in ("## Identity", "## Edit accuracy", "## Distribution (Frechet distance)", "## Samples", "## Per-item results"):
        assert heading in md
    assert "| SH light (RMSE) | 2 | 0.2 | 0.05 | 0.75 |" in md
    parser = _Tags()
    parser.feed((out / "report.html").read_text())
    assert parser.tags.count("table") >= 4
    assert set(parser.images) == {"identity.png", "edit_accuracy.png", "grid.png"}
    assert all((out / src).exists() for src in parser.images)
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 4 * 128 and grid.shape[1] > 2 * 128  # 4 evaluated rows, source | edited


def test_without_recapture_edit_accuracy_says_why(edits_run):
    result = evaluate_folder(edits_run.edits)
    s = summarize(result)
    assert s["edit_accuracy"]["status"] == "not computed" and "re-capture" in s["edit_accuracy"]["reason"]
    assert "not wired" not in s["edit_accuracy"]["reason"], "facerig eval re-captures unless --no-recapture"
    assert s["frechet"]["edited_vs_real"] is None and s["frechet"]["reason"] == "no --real folder given"


def test_reconstruction_report(recon_run):
    args, mask = recon_run
    s = _summary(args.out)
    assert s["mode"] == "reconstructions" and [k["item"] for k in s["skipped"]] == ["r_wrong_size"]
    assert "differs from source.png" in s["skipped"][0]["reason"]
    rec = s["reconstruction"]
    assert rec["psnr"]["n"] == 3 and rec["psnr"]["n_inf"] == 1 and rec["psnr_face"]["n"] == 2 and rec["psnr_face"]["n_inf"] == 1
    assert rec["mask_sources"] == {"mask.png": 1, "landmarks": 1, "": 1}
    assert "edit_accuracy" not in s
    rows = _rows(args.out)
    assert rows["r_same"]["psnr"] == "inf" and rows["r_same"]["ssim"] == "1" and rows["r_same"]["mask_source"] == "landmarks"
    assert rows["r_faceless"]["psnr_face"] == "" and "no face detected in source.png" in rows["r_faceless"]["notes"]
    # The pipeline's numbers are the plain formulas on the files as written.
    src = read_rgb(args.edits / "r_noisy" / "source.png").astype(np.float64) / 255
    rec_img = read_rgb(args.edits / "r_noisy" / "edited.png").astype(np.float64) / 255
    err = ((src - rec_img) ** 2).mean(-1)
    w = mask / 255.0
    assert float(rows["r_noisy"]["psnr"]) == pytest.approx(10 * math.log10(1 / err.mean()), abs=1e-4)
    assert float(rows["r_noisy"]["psnr_face"]) == pytest.approx(10 * math.log10(w.sum() / (err * w).sum()), abs=1e-4)
    assert 0 < float(rows["r_noisy"]["ssim"]) < 1
    md = (args.out / "report.md").read_text()
    assert "## Reconstruction" in md and "| PSNR (dB) | whole image | 3 |" in md
    assert (args.out / "reconstruction.png").exists() and (args.out / "grid.png").exists()


def test_landmark_face_mask_fills_jaw_and_brow_outline():
    # Jaw (0-16): a half circle of radius 20 below y=30 from x=10 to x=50; brows (17-26): a line at y=20.
    t = np.linspace(np.pi, 0, 17)
    jaw = np.stack([30 + 20 * np.cos(t), 30 + 20 * np.sin(t)], 1)
    brows = np.stack([np.linspace(10, 50, 10), np.full(10, 20.0)], 1)
    inner = np.full((41, 2), 30.0)  # eyes, nose, mouth: inside, not on the outline
    m = landmark_face_mask(np.concatenate([jaw, brows, inner]), 64, 80)
    assert m.shape == (64, 80) and set(np.unique(m)) == {0.0, 1.0}
    assert m[30, 30] == 1 and m[45, 30] == 1 and m[10, 30] == 0 and m[30, 60] == 0
    expected = np.pi * 20**2 / 2 + 40 * 10  # half disc + the band up to the brows
    assert abs(m.sum() - expected) < 0.1 * expected


def test_missing_edits_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        evaluate_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no item folders"):
        evaluate_folder(tmp_path)
