"""The capture batch job with a stand-in fitter: bad inputs, albums, all faces, ranks, resuming, the CLI.

The stand-in returns buffers computed from its inputs, so the tests can tell that what reaches the
dataset is what the fitter returned for that very item.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from facerig.capture import commands, pipeline
from facerig.capture.pipeline import Capture, CaptureConfig, assign_albums, collect_sources, read_identities
from facerig.dataset import CaptureDataset, read_manifest
from facerig.face3d.params import FaceParams
from helpers import assert_close, shared_path
from test_capture_load import ffhq_sample, write_bad_inputs, write_huge

SIZE = 128  # small crops keep the tests quick; alignment itself is tested at 256


@dataclass
class FakeBuffers:
    rendered: torch.Tensor
    normal: torch.Tensor
    albedo: torch.Tensor
    mask: torch.Tensor


@dataclass
class FakeResult:
    params: FaceParams
    buffers: FakeBuffers
    landmark_error: torch.Tensor
    photometric_error: torch.Tensor
    landmarks: torch.Tensor


class FakeFitter:
    """Records its calls; an album gets one shared identity row (batch 1), as a real album fit may return."""

    def __init__(self, nan_at: int | None = None, delay: float = 0.0, started=None):
        self.calls: list[tuple[int, bool]] = []
        self.nan_at = nan_at
        self.delay, self.started = delay, started  # a slow fit, announced by setting the ``started`` event

    def __call__(self, images: torch.Tensor, landmarks: torch.Tensor, album: bool) -> FakeResult:
        if self.started is not None:
            self.started.set()
        time.sleep(self.delay)
        b, _, s, _ = images.shape
        assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
        assert landmarks.shape == (b, 68, 2)
        self.calls.append((b, album))
        mask = torch.zeros(b, 1, s, s)
        mask[:, :, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 1
        zeros = lambda *shape: torch.zeros(b, *shape)
        params = FaceParams(
            shape=torch.arange(4.0)[None].repeat(1 if album else b, 1),
            expression=landmarks.mean(1),  # per-item, so rows can be matched to items
            rotation=zeros(3), translation=zeros(3), jaw=zeros(3), albedo=zeros(0), light=zeros(9, 3), cam=zeros(3), focal=zeros(1),
        )
        lmk_err = landmarks[:, :, 0].mean(1) / 100
        if self.nan_at is not None:
            lmk_err[self.nan_at] = float("nan")
        normal = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(b, 3, s, s)
        return FakeResult(params, FakeBuffers(images * 0.5, normal, images, mask), lmk_err, images.mean((1, 2, 3)), landmarks + 1)


def by_key(root: Path) -> dict[str, dict]:
    return {r["key"]: r for r in read_manifest(root)}


def dataset_item(root: Path, key: str):
    ds = CaptureDataset(root, keys=[key])
    assert len(ds) == 1
    return ds.get(0)


def shard_row(out: Path, key: str, name: str) -> np.ndarray:
    """One stored tensor row (not read by CaptureDataset.get, e.g. landmarks, transform) as float64."""
    rec = by_key(out)[key]
    with safe_open(str(out / "shards" / f"{rec['shard']}.safetensors"), framework="pt") as f:
        return f.get_slice(name)[rec["index"] : rec["index"] + 1][0].double().numpy()


@pytest.fixture(scope="module")
def bad_batch(tmp_path_factory):
    """One capture over every awkward input, plus upright references for the rotated and huge photos."""
    folder = tmp_path_factory.mktemp("photos")
    paths = write_bad_inputs(folder)
    ffhq_sample(1).save(folder / "upright.png")
    ffhq_sample(2).save(folder / "sample2.png")
    write_huge(folder / "huge.jpg", ffhq_sample(2))
    out = tmp_path_factory.mktemp("ds") / "capture"
    fitter = FakeFitter()
    summary = Capture(out, CaptureConfig(size=SIZE, batch_size=4), fitter=fitter).run(collect_sources([str(folder)]), progress=False)
    return folder, paths, out, fitter, summary


def test_every_bad_input_gets_a_clear_reason(bad_batch):
    folder, paths, out, _, summary = bad_batch
    records = by_key(out)
    assert set(records) == {p.name for p in folder.iterdir()}, "one manifest record per input"
    reasons = {k: r["reason"] for k, r in records.items() if r["status"] == "failed"}
    assert reasons.pop("tiny.png") == "image 20x20 px is smaller than the 64 px minimum"
    assert reasons.pop("corrupt.jpg").startswith("not a readable image")
    assert "truncated" in reasons.pop("truncated.jpg")
    assert reasons.pop("noface.png") == "no face found"
    assert reasons == {}, f"unexpected failures: {reasons}"
    assert summary.ok == 10 and summary.failed == 4 and summary.skipped == 0


def test_awkward_formats_give_the_same_face(bad_batch):
    """Grayscale, CMYK, 16-bit and RGBA versions of one photo align to (nearly) the same crop."""
    _, _, out, _, _ = bad_batch
    good = dataset_item(out, "good.png")
    for key in ("gray.jpg", "cmyk.jpg", "gray16.png", "rgb16.png", "rgba.png"):
        item = dataset_item(out, key)
        assert item.image.shape == (3, SIZE, SIZE)
        lm_shift = np.abs(shard_row(out, key, "landmarks") - shard_row(out, "good.png", "landmarks")).mean()
        # brightness, since the grayscale versions have lost colour; dlib's landmarks move a little with it
        brightness = (item.image.mean(0) - good.image.mean(0)).abs().mean()
        assert lm_shift < 1.0 and (brightness < 0.08 or key == "rgba.png"), (key, lm_shift, brightness)


def test_exif_rotated_photo_is_detected_upright(bad_batch):
    _, _, out, _, _ = bad_batch
    rotated, upright = dataset_item(out, "rotated.jpg"), dataset_item(out, "upright.png")
    assert by_key(out)["rotated.jpg"]["original_size"] == [256, 256]
    assert np.abs(shard_row(out, "rotated.jpg", "landmarks") - shard_row(out, "upright.png", "landmarks")).mean() < 1.5
    assert (rotated.image - upright.image).abs().mean() < 0.06


def test_huge_photo_is_handled_in_original_pixels(bad_batch):
    _, _, out, _, _ = bad_batch
    rec = by_key(out)["huge.jpg"]
    assert rec["status"] == "ok" and rec["original_size"] == [8000, 8000]
    # the transform is aligned <- original 8000 px pixels: 8000/256 times the small photo's scale
    t_huge, t_small = shard_row(out, "huge.jpg", "transform"), shard_row(out, "sample2.png", "transform")
    ratio = np.linalg.norm(t_small[:2, 0]) / np.linalg.norm(t_huge[:2, 0])
    assert abs(ratio / (8000 / 256) - 1) < 0.03, ratio
    assert np.abs(shard_row(out, "huge.jpg", "landmarks") - shard_row(out, "sample2.png", "landmarks")).mean() < 2.0
    # box sizes follow dlib's pyramid level, but the centres must agree once scaled to the small photo
    centre = lambda box: (np.array(box[:2]) + box[2:]) / 2
    assert np.abs(centre(rec["box"]) / (8000 / 256) - centre(by_key(out)["sample2.png"]["box"])).max() < 6


def test_stored_items_are_what_the_fitter_returned(bad_batch):
    _, _, out, fitter, _ = bad_batch
    assert all(n <= 4 and not album for n, album in fitter.calls)
    item = dataset_item(out, "good.png")
    rendered, normal, albedo = item.buffers.split(3)
    image01 = (item.image + 1) / 2
    assert_close(albedo, image01, atol=2e-3)  # float16 storage
    assert_close(rendered, image01 * 0.5, atol=2e-3)
    assert_close(normal, torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand_as(normal))
    lm = shard_row(out, "good.png", "landmarks")
    assert_close(item.params["expression"], torch.from_numpy(lm).mean(0).float(), atol=1e-5)
    assert by_key(out)["good.png"]["landmark_error"] == pytest.approx(float(lm[:, 0].mean()) / 100, abs=1e-4)
    assert (lm > 0).all() and (lm < SIZE).all(), "crop landmarks lie inside the crop"
    assert_close(shard_row(out, "good.png", "fitted_landmarks"), lm + 1, atol=1e-5)  # the fit's own 68 landmarks
    preview = Image.open(out / "preview.png")
    assert preview.width > 3 * SIZE and preview.height > SIZE


def test_rerun_does_no_new_work(bad_batch):
    folder, _, out, _, _ = bad_batch
    shards = sorted(p.name for p in (out / "shards").iterdir())
    manifest = (out / "manifest.jsonl").read_bytes()
    fitter = FakeFitter()
    summary = Capture(out, CaptureConfig(size=SIZE, batch_size=4), fitter=fitter).run(collect_sources([str(folder)]), progress=False)
    assert (summary.ok, summary.failed, summary.skipped) == (0, 0, summary.inputs) and summary.inputs == 14
    assert fitter.calls == []
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards
    assert (out / "manifest.jsonl").read_bytes() == manifest


@pytest.fixture(scope="module")
def four_faces(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("four")
    for i in range(4):
        ffhq_sample(i).save(folder / f"{i}.png")
    return folder


def test_albums_from_identities_csv(four_faces, tmp_path):
    csv_path = tmp_path / "ids" / "identities.csv"
    csv_path.parent.mkdir()
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "identity"])
        for name, ident in (("0.png", "7"), ("1.png", "7"), ("2.png", "9")):
            w.writerow([os.path.relpath(four_faces / name, csv_path.parent), ident])
    sources, unassigned = assign_albums(collect_sources([str(four_faces)]), read_identities(csv_path), album=False)
    assert [s.key for s in unassigned] == ["3.png"]
    fitter = FakeFitter()
    out = tmp_path / "ds"
    summary = Capture(out, CaptureConfig(size=SIZE), fitter=fitter).run(sources, unassigned, progress=False)
    assert sorted(fitter.calls) == [(1, True), (2, True)], "one fit per album, with all its photos"
    records = by_key(out)
    assert {k: r.get("album") for k, r in records.items() if r["status"] == "ok"} == {"0.png": "7", "1.png": "7", "2.png": "9"}
    assert records["3.png"]["status"] == "failed" and "identities" in records["3.png"]["reason"]
    assert summary.ok == 3 and summary.failed == 1
    # the album's shared identity row is stored per photo
    assert_close(dataset_item(out, "1.png").params["shape"], torch.arange(4.0))


def test_identities_paths_are_relative_to_the_csv(four_faces):
    csv_path = four_faces.parent / "ids.csv"
    csv_path.write_text(f"file,identity\n{four_faces.name}/0.png,3\n")
    assert read_identities(csv_path) == {(four_faces / "0.png").resolve(): "3"}
    csv_path.write_text("name,person\na.png,1\n")
    with pytest.raises(ValueError, match="ids.csv: needs a header with columns file,identity"):
        read_identities(csv_path)


def test_album_flag_makes_one_album(four_faces, tmp_path):
    sources, unassigned = assign_albums(collect_sources([str(four_faces)]), None, album=True)
    fitter = FakeFitter()
    Capture(tmp_path / "ds", CaptureConfig(size=SIZE, batch_size=2), fitter=fitter).run(sources, unassigned, progress=False)
    assert fitter.calls == [(4, True)]
    with pytest.raises(ValueError, match="--all-faces cannot be combined with albums"):
        Capture(tmp_path / "ds2", CaptureConfig(size=SIZE, all_faces=True), fitter=fitter).run(sources, progress=False)


def test_all_faces_gives_one_key_per_face(tmp_path):
    folder = tmp_path / "group"
    folder.mkdir()
    pair = Image.new("RGB", (512, 256))
    pair.paste(ffhq_sample(0), (0, 0))
    pair.paste(ffhq_sample(3).resize((200, 200)), (284, 28))
    pair.save(folder / "pair.png")
    sources = collect_sources([str(folder)])
    Capture(tmp_path / "all", CaptureConfig(size=SIZE, all_faces=True), fitter=FakeFitter()).run(sources, progress=False)
    records = by_key(tmp_path / "all")
    assert set(records) == {"pair.png#face1", "pair.png#face2"}
    assert records["pair.png#face1"]["box"][0] < 256 <= records["pair.png#face2"]["box"][0], "largest face first"
    Capture(tmp_path / "largest", CaptureConfig(size=SIZE), fitter=FakeFitter()).run(sources, progress=False)
    records = by_key(tmp_path / "largest")
    assert list(records) == ["pair.png"] and records["pair.png"]["faces"] == 2 and records["pair.png"]["box"][0] < 256
    # resuming all-faces output recognises the photo as done
    fitter = FakeFitter()
    summary = Capture(tmp_path / "all", CaptureConfig(size=SIZE, all_faces=True), fitter=fitter).run(sources, progress=False)
    assert summary.skipped == 1 and fitter.calls == []


def test_ranks_split_the_inputs(four_faces, tmp_path):
    sources = collect_sources([str(four_faces)])
    out = tmp_path / "ds"
    for rank in (1, 0):  # rank 1 first: it must not need rank 0's info.json
        Capture(out, CaptureConfig(size=SIZE), fitter=FakeFitter(), rank=rank, world_size=2).run(sources, progress=False)
    r0 = [json.loads(line)["key"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    r1 = [json.loads(line)["key"] for line in (out / "manifest.r1.jsonl").read_text().splitlines()]
    assert r0 == ["0.png", "2.png"] and r1 == ["1.png", "3.png"]
    assert len(CaptureDataset(out)) == 4
    assert {p.name.split("-")[0] for p in (out / "shards").iterdir()} == {"000", "001"}


def test_diverged_fit_is_recorded_not_stored(four_faces, tmp_path):
    Capture(tmp_path / "ds", CaptureConfig(size=SIZE), fitter=FakeFitter(nan_at=1)).run(collect_sources([str(four_faces)]), progress=False)
    records = by_key(tmp_path / "ds")
    assert records["1.png"]["status"] == "failed" and records["1.png"]["reason"].startswith("fit diverged")
    assert len(CaptureDataset(tmp_path / "ds")) == 3
    assert dataset_item(tmp_path / "ds", "2.png").key == "2.png"


def test_worker_processes_give_the_same_result(four_faces, tmp_path):
    sources = collect_sources([str(four_faces)])[:2]
    for name, workers in (("inline", 0), ("pool", 1)):
        Capture(tmp_path / name, CaptureConfig(size=SIZE, workers=workers), fitter=FakeFitter()).run(sources, progress=False)
    for key in ("0.png", "1.png"):
        a, b = dataset_item(tmp_path / "inline", key), dataset_item(tmp_path / "pool", key)
        assert torch.equal(a.image, b.image) and torch.equal(a.params["expression"], b.params["expression"])


def _slow_capture(out: Path, sources: list, started) -> None:
    Capture(out, CaptureConfig(size=SIZE, batch_size=2), fitter=FakeFitter(delay=0.5, started=started)).run(sources, progress=False)


def test_concurrent_runs_on_one_folder(tmp_path, capfd):
    """A second run on the same --out while the first is mid-write: no shard overwritten, nothing stored twice."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        ffhq_sample(i).save(folder / f"{i}.png")
    sources = collect_sources([str(folder)])
    ref = tmp_path / "ref"
    Capture(ref, CaptureConfig(size=SIZE), fitter=FakeFitter()).run(sources, progress=False)

    out = tmp_path / "ds"
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    first = ctx.Process(target=_slow_capture, args=(out, sources[:4], started))
    first.start()
    assert started.wait(60), "the first run never reached its fit"
    summary = Capture(out, CaptureConfig(size=SIZE), fitter=FakeFitter()).run(sources, progress=False)
    first.join(60)
    assert first.exitcode == 0
    assert (summary.skipped, summary.ok) == (4, 2), "the second run waited, then did only what the first had not"
    keys = [r["key"] for r in read_manifest(out)]
    assert sorted(keys) == [f"{i}.png" for i in range(6)], "every photo stored once"
    for key in keys:
        assert torch.equal(dataset_item(out, key).image, dataset_item(ref, key).image), f"{key} points at another face"
    assert "another capture is writing rank 0" in capfd.readouterr().err


def test_collect_sources(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for rel in ("a/x.jpg", "a/sub/y.PNG", "a/notes.txt", "b.weird"):
        (tmp_path / rel).write_bytes(b"")
    keys = [s.key for s in collect_sources([str(tmp_path / "a"), str(tmp_path / "b.weird")])]
    assert keys == ["b.weird", "sub/y.PNG", "x.jpg"]
    assert [s.key for s in collect_sources([str(tmp_path / "a" / "**" / "*.PNG")])] == ["sub/y.PNG"]
    with pytest.raises(FileNotFoundError, match="nothing.jpg: no such file or folder"):
        collect_sources([str(tmp_path / "nothing.jpg")])
    with pytest.raises(FileNotFoundError, match="no files match"):
        collect_sources([str(tmp_path / "*.gif")])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="two inputs share the key 'x.jpg'"):
        collect_sources([str(tmp_path / "a"), str(tmp_path / "c")])


def test_folder_search_lists_what_it_passes_over(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (photos / "x.jpg").write_bytes(b"")
    (photos / "notes.txt").write_bytes(b"")
    (photos / "linked").symlink_to(tmp_path / "elsewhere")
    (photos / "sub" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    os.mkfifo(photos / "pipe.png")
    ignored = {}
    assert [s.key for s in collect_sources([str(photos)], ignored=ignored)] == ["x.jpg"]
    assert ignored == {
        str(photos / "notes.txt"): "not an image file name (name it on the command line to try it)",
        str(photos / "linked"): "link to a folder (not followed)",
        str(photos / "sub" / "gone.jpg"): "broken link",
        str(photos / "pipe.png"): "not a regular file",
    }


def test_out_inside_the_input_folder_is_not_captured(four_faces, tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("0.png", "1.png"):
        (photos / name).write_bytes((four_faces / name).read_bytes())
    monkeypatch.setattr(pipeline, "ModelFitter", lambda size, device: FakeFitter())
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    for _ in range(2):  # the first run writes preview.png into photos/ds; the second must not take it as a face
        args = parser.parse_args(["capture", str(photos), "--out", str(photos / "ds"), "--size", str(SIZE)])
        assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["inputs"] == 2 and report["skipped"] == 2 and report["ignored"] == {str(photos / "ds"): "the output folder"}
    assert sorted(by_key(photos / "ds")) == ["0.png", "1.png"]
    glob_keys = [s.key for s in collect_sources([str(photos / "**" / "*.png")], out=photos / "ds")]
    assert glob_keys == ["0.png", "1.png"]


def test_cli_capture(four_faces, tmp_path, monkeypatch, capsys):
    fitter = FakeFitter()
    monkeypatch.setattr(pipeline, "ModelFitter", lambda size, device: fitter)
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    out = tmp_path / "ds"
    args = parser.parse_args(["capture", str(four_faces), "--out", str(out), "--size", str(SIZE), "--limit", "3", "--batch-size", "2"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] == 3 and report["failed"] == 0
    assert fitter.calls == [(2, False), (1, False)]
    assert json.loads((out / "info.json").read_text())["image_size"] == SIZE


def test_bad_options_are_refused_before_any_work(four_faces, tmp_path, capsys):
    from facerig.cli import main

    for bad in ({"upsample": -1}, {"upsample": 9}, {"size": 1}, {"workers": -2}, {"batch_size": 0}):
        with pytest.raises(ValueError, match=f"capture option {next(iter(bad))} must be"):
            CaptureConfig(**bad)
    for flag, value in (("--upsample", "-1"), ("--size", "1"), ("--workers", "-1"), ("--size", "abc")):
        with pytest.raises(SystemExit) as exc:
            main(["capture", str(four_faces), "--out", str(tmp_path / "ds"), flag, value])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and f"argument {flag}" in err[-1], err
    assert not (tmp_path / "ds").exists(), "nothing written"


def test_unusable_out_is_one_clear_error(four_faces, tmp_path, capsys):
    from facerig.cli import main

    (tmp_path / "file").write_text("")
    (tmp_path / "ro").mkdir(mode=0o555)
    cases = {tmp_path / "file": "is a file", tmp_path / "file" / "ds": "is a file"}
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        cases[tmp_path / "ro" / "ds"] = "not writable"
    for out, reason in cases.items():
        assert main(["capture", str(four_faces), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out) in err[0] and reason in err[0], err


@pytest.mark.slow
def test_real_fit_end_to_end(tmp_path):
    """The real fitter (facerig.capture.fit, ICT model): residuals recorded, and the rendered face mask,
    warped back into the photo with ``unalign``, covers the FFHQ sample's own face mask."""
    from facerig.capture.align import unalign

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in (0, 1):
        ffhq_sample(i).save(folder / f"{i}.png")
    out = tmp_path / "ds"
    summary = Capture(out, CaptureConfig(size=256, batch_size=2)).run(collect_sources([str(folder)]), progress=False)
    assert summary.ok == 2
    for i in (0, 1):
        rec = by_key(out)[f"{i}.png"]
        assert rec["landmark_error"] < 5.0, rec
        item = dataset_item(out, f"{i}.png")
        mask = unalign(item.mask[None], torch.from_numpy(shard_row(out, f"{i}.png", "transform"))[None], (256, 256))[0, 0] > 0.5
        truth = torch.from_numpy(np.asarray(Image.open(shared_path("data", "ffhq-samples", f"{i:05d}.face-mask.png"))) > 127)
        # ICT's mask also spans forehead, ears and neck, so it covers the face mask and overlaps it by half
        covered = float((mask & truth).sum() / truth.sum())
        inside = float((mask & truth).sum() / mask.sum())
        assert covered > 0.85 and inside > 0.45, (i, covered, inside)
