"""The capture dataset format, written by ``facerig capture`` and read by training without unpickling.

Layout of a dataset folder::

    info.json                     {"format": "facerig-capture", "version": 1, "image_size": S, ...}
    manifest[.rRANK].jsonl        one JSON line per input photo/face, appended as items finish:
                                  {"key", "source", "status": "ok"|"failed", "reason", "shard", "index", ...}
    shards/RANK-NNNNN.safetensors one file per written batch, tensors stacked over its items:
        image     uint8   (N,3,S,S)  the aligned crop
        rendered  float16 (N,3,S,S)  albedo x shading (DiffusionRig's "rendered" buffer)
        normal    float16 (N,3,S,S)  camera-space normals in [-1,1], background 0
        albedo    float16 (N,3,S,S)  [0,1], background 0
        mask      uint8   (N,1,S,S)  rendered face region
        transform float32 (N,3,3)    aligned-pixel <- original-pixel affine (homogeneous)
        params.<field> float32 (N,...) the fitted FaceParams fields

A shard is written atomically before its manifest lines, so a killed job loses at most the batch in flight,
and a rerun skips every key already in a manifest. Ranks write their own shards and manifests, so any
number of processes can fill one folder. Two writers of one rank (two runs on one folder) are serialised by
the rank's lock file ``.lock.rRANK`` (``ShardWriter.locked``); shard names are never reused, even after a
shard was deleted, so a stale record never points at another item's data.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from facerig.io import atomic_save_safetensors, atomic_write_json, fsync_path, writable_folder
from facerig.render.renderer import BUFFER_NAMES

FORMAT = "facerig-capture"
VERSION = 1
MAX_OPEN_SHARDS = 64


def _manifest_paths(root: Path) -> list[Path]:
    return sorted(root.glob("manifest*.jsonl"))


def read_manifest(root: str | Path) -> list[dict]:
    """Every manifest record of a dataset folder (all ranks); a torn last line from a kill is ignored."""
    records = []
    for path in _manifest_paths(Path(root)):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _drop_torn_line(f) -> None:
    """Cut a partial last line (kill -9 or a full disk mid-append) from a manifest opened "a+b": appended onto
    the fragment, the next record would be unreadable and silently lost."""
    if f.seek(0, os.SEEK_END) == 0:
        return
    f.seek(-1, os.SEEK_END)
    if f.read(1) != b"\n":
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


class ShardWriter:
    """Appends finished items to a dataset folder, one atomic shard per ``write`` call."""

    def __init__(self, root: str | Path, image_size: int, rank: int = 0, info: dict | None = None):
        self.root = Path(root)
        self.rank = rank
        writable_folder(self.root / "shards", "dataset folder")
        info_path = self.root / "info.json"
        if info_path.exists():
            existing = json.loads(info_path.read_text())
            if existing.get("image_size") != image_size:
                raise ValueError(f"{info_path}: dataset has image_size {existing.get('image_size')}, asked for {image_size}")
        elif rank == 0:
            atomic_write_json(info_path, {"format": FORMAT, "version": VERSION, "image_size": image_size, **(info or {})})
        self.manifest = self.root / ("manifest.jsonl" if rank == 0 else f"manifest.r{rank}.jsonl")
        self.next_shard = self._first_free_shard()

    def _first_free_shard(self) -> int:
        """One past the highest shard number of this rank on disk or named in a manifest: counting files would
        reuse a deleted shard's name, and its stale records would then point at the new shard's rows."""
        prefix = f"{self.rank:03d}-"
        names = [p.stem for p in (self.root / "shards").glob(f"{prefix}*.safetensors")]
        names += [r["shard"] for r in read_manifest(self.root) if str(r.get("shard")).startswith(prefix)]
        return 1 + max((int(n.split("-")[1]) for n in names), default=-1)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this rank's lock for a whole writing run: a second run on the folder waits here until the first
        is done, then sees its records (``done_keys``) and shards, so nothing is overwritten or stored twice."""
        with open(self.root / f".lock.r{self.rank}", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"{self.root}: another capture is writing rank {self.rank} of this dataset; waiting for it to finish", file=sys.stderr)
                fcntl.flock(lock, fcntl.LOCK_EX)
            self.next_shard = self._first_free_shard()
            yield  # closing the file releases the lock, also when the process dies

    def done_keys(self) -> set[str]:
        return {r["key"] for r in read_manifest(self.root)}

    def _append(self, records: list[dict]) -> None:
        new = not self.manifest.exists()
        with open(self.manifest, "a+b") as f:
            _drop_torn_line(f)
            f.write("".join(json.dumps(r) + "\n" for r in records).encode())
            f.flush()
            os.fsync(f.fileno())
        if new:
            fsync_path(self.root)  # the new manifest's name must survive a power cut too

    def write(self, tensors: dict[str, torch.Tensor], records: list[dict]) -> None:
        """Store one batch: ``tensors`` stacked over the ok items, ``records`` their manifest lines (same order)."""
        if records:
            name = f"{self.rank:03d}-{self.next_shard:05d}"
            atomic_save_safetensors(tensors, self.root / "shards" / f"{name}.safetensors")
            self.next_shard += 1
            records = [{**r, "status": "ok", "shard": name, "index": i} for i, r in enumerate(records)]
        self._append(records)

    def fail(self, key: str, source: str, reason: str) -> None:
        self._append([{"key": key, "source": source, "status": "failed", "reason": reason}])


@dataclass
class DatasetItem:
    key: str
    image: torch.Tensor  # (3,S,S) float in [-1,1]
    buffers: torch.Tensor  # (9,S,S) float: rendered, normal, albedo
    mask: torch.Tensor  # (1,S,S) float in {0,1}
    params: dict[str, torch.Tensor]


class CaptureDataset(torch.utils.data.Dataset):
    """Reads a capture dataset folder; items are the ok records, in manifest order."""

    def __init__(self, root: str | Path, keys: list[str] | None = None):
        self.root = Path(root)
        info_path = self.root / "info.json"
        if not info_path.exists():
            raise FileNotFoundError(f"{info_path}: not a facerig capture dataset (no info.json)")
        self.info = json.loads(info_path.read_text())
        if self.info.get("format") != FORMAT:
            raise ValueError(f"{info_path}: format {self.info.get('format')!r} is not {FORMAT!r}")
        self.records = [r for r in read_manifest(self.root) if r["status"] == "ok"]
        if keys is not None:
            wanted = set(keys)
            self.records = [r for r in self.records if r["key"] in wanted]
        self.image_size = int(self.info["image_size"])
        self._handles: dict = {}

    def __len__(self) -> int:
        return len(self.records)

    def _shard(self, name: str):
        """An open (memory-mapped) shard; reopening per item would dominate a training step."""
        handle = self._handles.pop(name, None)
        if handle is None:
            handle = safe_open(str(self.root / "shards" / f"{name}.safetensors"), framework="pt")
            if len(self._handles) >= MAX_OPEN_SHARDS:
                self._handles.pop(next(iter(self._handles)))
        self._handles[name] = handle  # most recently used last
        return handle

    def _row(self, i: int, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
        rec = self.records[i]
        f, j = self._shard(rec["shard"]), rec["index"]
        return {k: f.get_slice(k)[j : j + 1][0] for k in (keys or f.keys())}

    def get(self, i: int) -> DatasetItem:
        row = self._row(i)
        params = {k.removeprefix("params."): v for k, v in row.items() if k.startswith("params.")}
        return DatasetItem(self.records[i]["key"], *self._training_tensors(row), params)

    @staticmethod
    def _training_tensors(row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = row["image"].float() / 127.5 - 1.0
        buffers = torch.cat([row[n].float() for n in BUFFER_NAMES], 0)
        return image, buffers, row["mask"].float()

    def __getitem__(self, i: int) -> dict:
        image, buffers, mask = self._training_tensors(self._row(i, ["image", *BUFFER_NAMES, "mask"]))
        return {"image": image, "buffers": buffers, "mask": mask}

    def __getstate__(self):
        # Open shard handles do not pickle (DataLoader workers); each process reopens its own.
        return {**self.__dict__, "_handles": {}}


def album_shape(dataset: str | Path) -> torch.Tensor:
    """The identity shape (1,S) a personal model was trained with: the mean over its album dataset."""
    data = CaptureDataset(dataset)
    if len(data) == 0:
        raise ValueError(f"{dataset}: album dataset has no captured photos")
    return torch.stack([data.get(i).params["shape"] for i in range(len(data))]).mean(0, keepdim=True)
