"""The capture batch job: photos -> detected, FFHQ-aligned faces -> fitted 3D faces -> a capture dataset.

Per photo (CPU, optionally in worker processes): load, detect, align. Per batch (or per album, where a
batch is one person): fit, then one shard plus its manifest lines. Bad photos become "failed" manifest
records with a reason and the job goes on; a rerun skips every key already in a manifest.
"""

from __future__ import annotations

import csv
import glob
import io
import multiprocessing
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from facerig.capture.load import MIN_SIDE, CaptureError, load_photo
from facerig.capture.photo import (
    DETECT_MAX_SIDE, LOAD_MAX_SIDE, MAX_UPSAMPLE, MIN_SIZE, UPSAMPLE, ModelFitter, align_photo, stack_faces,
)
from facerig.dataset import ShardWriter
from facerig.io import atomic_write_bytes, contact_sheet, to_uint8_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SINGLE_ALBUM = "album"  # album id when --album is given without an identities file


@dataclass
class CaptureConfig:
    size: int = 256
    all_faces: bool = False
    batch_size: int = 16
    device: str = "cpu"
    upsample: int = UPSAMPLE  # dlib detector upsampling
    detect_max_side: int = DETECT_MAX_SIDE  # the detector runs on a copy no larger than this
    load_max_side: int = LOAD_MAX_SIDE  # photos are decoded/downscaled to this before anything else
    workers: int = 0  # processes preparing photos (load/detect/align) ahead of the fit
    preview_count: int = 16

    def __post_init__(self):
        # checked before any work: a bad global option would otherwise fail (or "succeed") every photo, and a
        # rerun with the option fixed would skip them all as done
        limits = {"size": (MIN_SIZE, None), "batch_size": (1, None), "upsample": (0, MAX_UPSAMPLE), "detect_max_side": (MIN_SIDE, None),
                  "load_max_side": (MIN_SIDE, None), "workers": (0, None), "preview_count": (0, None)}
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < lo or (hi is not None and value > hi):
                bounds = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
                raise ValueError(f"capture option {name} must be an integer {bounds}, got {value!r}")


@dataclass(frozen=True)
class Source:
    path: Path
    key: str
    album: str | None = None


@dataclass
class PreparedFace:
    """One aligned face ready for fitting, with the facts that go into its manifest record."""

    key: str
    source: Source
    image: np.ndarray  # (S,S,3) uint8 aligned crop
    landmarks: np.ndarray  # (68,2) continuous crop coordinates
    transform: np.ndarray  # (3,3) aligned <- original pixels
    record: dict[str, Any]


@dataclass
class CaptureSummary:
    inputs: int = 0
    skipped: int = 0  # already in a manifest
    ok: int = 0  # faces written
    failed: int = 0  # photos or faces recorded as failed
    reasons: Counter = field(default_factory=Counter)


def _glob_root(pattern: str) -> Path:
    """The folder before the first glob wildcard: keys of a glob's matches are relative to it."""
    parts = Path(pattern).parts
    fixed = parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return Path(*fixed) if fixed else Path(".")


def collect_sources(inputs: list[str], out: str | Path | None = None, ignored: dict[str, str] | None = None) -> list[Source]:
    """Files, folders (searched recursively for images) and globs -> sources with stable keys, sorted.

    A key is the path relative to the folder (or glob root) it was found under, or the file name of a file
    given directly, so reruns with the same arguments produce the same keys from any working directory.
    The dataset folder ``out`` is never searched (its preview.png is no training face). What a folder
    search passes over (links to folders, broken links, special files, non-image names, ``out``) is added
    to ``ignored`` as {path: reason}, so the summary can list it.
    """
    found: dict[str, Path] = {}
    out = Path(out).resolve() if out is not None else None
    ignored = {} if ignored is None else ignored

    def add(path: Path, key: str) -> None:
        path = path.resolve()
        if out is not None and (path == out or out in path.parents):
            ignored[str(path)] = "inside the output folder"
            return
        if key in found and found[key] != path:
            raise ValueError(f"two inputs share the key {key!r}: {found[key]} and {path}; capture them into separate datasets or pass their common folder")
        found[key] = path

    def search(root: Path) -> None:
        for folder, subfolders, files in os.walk(root):
            folder = Path(folder)
            for name in list(subfolders):  # os.walk lists links to folders here but does not enter them
                sub = folder / name
                if sub.is_symlink() or sub.resolve() == out:
                    subfolders.remove(name)
                    ignored[str(sub)] = "the output folder" if sub.resolve() == out else "link to a folder (not followed)"
            for name in files:
                f = folder / name
                if not f.exists():
                    ignored[str(f)] = "broken link"
                elif not f.is_file():
                    ignored[str(f)] = "not a regular file"
                elif f.suffix.lower() not in IMAGE_SUFFIXES:
                    ignored[str(f)] = "not an image file name (name it on the command line to try it)"
                else:
                    add(f, f.relative_to(root).as_posix())

    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            search(p)
        elif p.is_file():
            add(p, p.name)  # given explicitly: tried whatever its suffix, so a bad file gets a reason
        elif glob.has_magic(item):
            root = _glob_root(str(p))
            matches = [Path(m) for m in sorted(glob.glob(str(p), recursive=True)) if Path(m).is_file()]
            if not matches:
                raise FileNotFoundError(f"{item}: no files match this pattern")
            for m in matches:
                add(m, m.relative_to(root).as_posix())
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return [Source(path, key) for key, path in sorted(found.items())]


def read_identities(csv_path: str | Path) -> dict[Path, str]:
    """identities CSV (columns file,identity; files relative to the CSV's folder) -> {resolved path: identity}."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{csv_path}: identities file not found") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"file", "identity"} <= set(rows[0]):
        raise ValueError(f"{csv_path}: needs a header with columns file,identity")
    return {(csv_path.parent / r["file"]).resolve(): r["identity"].strip() for r in rows}


def assign_albums(sources: list[Source], identities: dict[Path, str] | None, album: bool) -> tuple[list[Source], list[Source]]:
    """(sources with their album id, sources missing from ``identities``). Without albums, unchanged."""
    if identities is not None:
        known = [Source(s.path, s.key, identities[s.path]) for s in sources if s.path in identities]
        return known, [s for s in sources if s.path not in identities]
    if album:
        return [Source(s.path, s.key, SINGLE_ALBUM) for s in sources], []
    return sources, []


def prepare(source: Source, cfg: CaptureConfig) -> list[PreparedFace]:
    """Load, detect and align one photo: its largest face, or every face with ``cfg.all_faces``."""
    photo = load_photo(source.path, max_side=cfg.load_max_side)
    faces, aligned = align_photo(photo, cfg.size, cfg.all_faces, cfg.upsample, cfg.detect_max_side)
    to_original = photo.to_original()
    out = []
    for i, (face, crop) in enumerate(zip(faces, aligned)):
        box = (to_original @ np.array([[face.box[0], face.box[2]], [face.box[1], face.box[3]], [1, 1]]))[:2]
        record = {
            "source": str(source.path),
            "album": source.album,
            "face": i + 1,
            "faces": len(faces),
            "score": round(face.score, 4),
            "box": [round(float(v), 1) for v in box.T.reshape(-1)],  # left, top, right, bottom in original px
            "original_size": list(photo.original_size),
        }
        key = f"{source.key}#face{i + 1}" if cfg.all_faces else source.key
        out.append(PreparedFace(key, source, crop.image, crop.landmarks, crop.transform, record))
    return out


def _prepare_or_reason(args: tuple[Source, CaptureConfig]) -> tuple[Source, list[PreparedFace] | str]:
    source, cfg = args
    try:
        return source, prepare(source, cfg)
    except CaptureError as exc:
        return source, exc.reason
    except Exception as exc:  # a photo that breaks a library is still one bad item, not a dead batch
        return source, f"unexpected error: {type(exc).__name__}: {exc}"


def _worker_init() -> None:
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the parent stops the pool; a worker's traceback is noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def prepare_all(sources: list[Source], cfg: CaptureConfig) -> Iterator[tuple[Source, list[PreparedFace] | str]]:
    """``prepare`` every source in order, in ``cfg.workers`` processes when > 0; errors come back as reasons."""
    jobs = ((s, cfg) for s in sources)
    if cfg.workers <= 0:
        yield from map(_prepare_or_reason, jobs)
        return
    # spawn: the parent may hold CUDA state, which forked children must not inherit
    with multiprocessing.get_context("spawn").Pool(cfg.workers, initializer=_worker_init) as pool:
        yield from pool.imap(_prepare_or_reason, jobs, chunksize=4)


FitFn = Callable[[torch.Tensor, torch.Tensor, bool], Any]


def _batched_params(params: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Params as (n,...) float32 on CPU; a field shared by an album may come back with batch 1."""
    out = {}
    for k, v in params.items():
        v = v.detach().float().cpu()
        if v.shape[0] == 1 and n > 1:
            v = v.expand(n, *v.shape[1:])
        if v.shape[0] != n:
            raise ValueError(f"fit returned params.{k} with batch {v.shape[0]} for {n} images")
        out[f"params.{k}"] = v.contiguous()
    return out


def preview_row(image: torch.Tensor, rendered: torch.Tensor, normal: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    """photo | rendered face over the photo | normals, for one item ((3,S,S) [0,1] image and buffers)."""
    overlay = image * (1 - mask) + rendered.clamp(0, 1) * mask
    return [to_uint8_image(image), to_uint8_image(overlay), to_uint8_image(normal * mask, (-1.0, 1.0))]


def fit_faces(items: list[PreparedFace], fitter: FitFn, cfg: CaptureConfig, album: bool, n_preview: int = 0):
    """Fit one batch (one person when ``album``) -> (shard tensors of the good items, their records,
    (key, source) of items whose fit came back non-finite, preview rows of the first ``n_preview``)."""
    device = torch.device(cfg.device)
    image_u8, images, landmarks = stack_faces(items)
    result = fitter(images.to(device), landmarks.to(device), album)
    n = len(items)
    buffers = result.buffers
    tensors = {
        "image": image_u8,
        "rendered": buffers.rendered.detach().cpu().half(),
        "normal": buffers.normal.detach().cpu().half(),
        "albedo": buffers.albedo.detach().cpu().half(),
        "mask": (buffers.mask.detach().cpu() > 0.5).to(torch.uint8),
        "transform": torch.from_numpy(np.stack([it.transform for it in items])).float(),
        "landmarks": landmarks,
        "fitted_landmarks": result.landmarks.detach().float().cpu(),
        **_batched_params(result.params.to_dict(), n),
    }
    lmk_err = result.landmark_error.detach().float().cpu()
    photo_err = result.photometric_error.detach().float().cpu()
    finite = torch.isfinite(lmk_err) & torch.isfinite(photo_err)
    for v in tensors.values():
        if v.is_floating_point():
            finite &= torch.isfinite(v.reshape(n, -1).float()).all(1)
    keep = finite.nonzero().flatten()
    records = [
        {"key": items[i].key, **items[i].record, "reason": None, "landmark_error": round(float(lmk_err[i]), 4), "photometric_error": round(float(photo_err[i]), 6)}
        for i in keep.tolist()
    ]
    diverged = [(items[i].key, str(items[i].source.path)) for i in (~finite).nonzero().flatten().tolist()]
    tensors = {k: v[keep].contiguous() for k, v in tensors.items()}
    rows = [
        preview_row(images[i], tensors["rendered"][j].float(), tensors["normal"][j].float(), tensors["mask"][j].float())
        for j, i in enumerate(keep.tolist()[:n_preview])
    ]
    return tensors, records, diverged, rows


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _base_key(key: str) -> str:
    return re.sub(r"#face\d+$", "", key)


class Capture:
    """One rank's capture job into a dataset folder."""

    def __init__(self, out: str | Path, cfg: CaptureConfig, fitter: FitFn | None = None, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        info = {"alignment": "ffhq-quad", "landmarks": "dlib-68", "coordinates": "pixel corners at integers, centres at +0.5"}
        self.writer = ShardWriter(out, cfg.size, rank=rank, info=info)
        self.fitter = fitter if fitter is not None else ModelFitter(cfg.size, cfg.device)
        self.preview: list[list[np.ndarray]] = []
        self.summary = CaptureSummary()

    def _fail(self, key: str, source: str, reason: str) -> None:
        self.writer.fail(key, source, reason)
        self.summary.failed += 1
        self.summary.reasons[reason] += 1

    def _flush(self, items: list[PreparedFace], album: bool) -> None:
        if not items:
            return
        n_preview = self.cfg.preview_count - len(self.preview)
        tensors, records, diverged, rows = fit_faces(items, self.fitter, self.cfg, album, n_preview)
        if records:
            self.writer.write(tensors, records)
        for key, source in diverged:
            self._fail(key, source, "fit diverged (non-finite parameters or residuals)")
        self.summary.ok += len(records)
        self.preview.extend(rows)
        items.clear()

    def _write_preview(self) -> None:
        if not self.preview:
            return
        per_row = 4  # items side by side, each photo | overlay | normals
        rows = [sum(self.preview[i : i + per_row], []) for i in range(0, len(self.preview), per_row)]
        buf = io.BytesIO()
        Image.fromarray(contact_sheet(rows)).save(buf, format="PNG")
        name = "preview.png" if self.rank == 0 else f"preview.r{self.rank}.png"
        atomic_write_bytes(self.writer.root / name, buf.getvalue())

    def run(self, sources: list[Source], unassigned: list[Source] = (), limit: int | None = None, progress: bool = True) -> CaptureSummary:
        """Capture ``sources`` (this rank's share of them); ``unassigned`` are album inputs with no identity."""
        albums = any(s.album is not None for s in sources)
        if albums and self.cfg.all_faces:
            raise ValueError("--all-faces cannot be combined with albums: an album's photos must all show its one person")
        if albums:
            sources = sorted(sources, key=lambda s: (s.album, s.key))  # an album's photos arrive together
        work, orphans = sources, sorted(unassigned, key=lambda s: s.key)
        if limit is not None:
            work, orphans = work[:limit], orphans[: max(0, limit - len(work))]
        if albums:  # whole albums per rank, so no album's identity is split between processes
            mine = set(sorted({s.album for s in work})[self.rank :: self.world_size])
            work = [s for s in work if s.album in mine]
        else:
            work = work[self.rank :: self.world_size]
        orphans = orphans[self.rank :: self.world_size]
        with self.writer.locked():  # done keys are read under the lock: a concurrent run's work counts as done
            return self._capture(work, orphans, albums, progress)

    def _capture(self, work: list[Source], orphans: list[Source], albums: bool, progress: bool) -> CaptureSummary:
        done = {_base_key(k) for k in self.writer.done_keys()}
        self.summary.inputs = len(work) + len(orphans)
        for source in orphans:
            if source.key in done:
                self.summary.skipped += 1
            else:
                self._fail(source.key, str(source.path), "no identity for this file in the identities file")
        pending = [s for s in work if s.key not in done]
        self.summary.skipped += len(work) - len(pending)

        batch: list[PreparedFace] = []
        current_album = None
        bar = tqdm(prepare_all(pending, self.cfg), total=len(pending), desc=f"capture r{self.rank}", disable=not progress, file=sys.stderr)
        for source, outcome in bar:
            if albums and batch and source.album != current_album:
                self._flush(batch, album=True)
            current_album = source.album
            if isinstance(outcome, str):
                self._fail(source.key, str(source.path), outcome)
                continue
            batch.extend(outcome)
            # a photo's faces stay in one batch, so a rerun never finds a photo half done
            if not albums and len(batch) >= self.cfg.batch_size:
                self._flush(batch, album=False)
        self._flush(batch, album=albums)
        self._write_preview()
        return self.summary
