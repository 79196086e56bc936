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
number of processes can fill one folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from facerig.io import atomic_save_safetensors, atomic_write_json

FORMAT = "facerig-capture"
VERSION = 1
BUFFER_NAMES = ("rendered", "normal", "albedo")
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


class ShardWriter:
    """Appends finished items to a dataset folder, one atomic shard per ``write`` call."""

    def __init__(self, root: str | Path, image_size: int, rank: int = 0, info: dict | None = None):
        self.root = Path(root)
        self.rank = rank
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        info_path = self.root / "info.json"
        if info_path.exists():
            existing = json.loads(info_path.read_text())
            if existing.get("image_size") != image_size:
                raise ValueError(f"{info_path}: dataset has image_size {existing.get('image_size')}, asked for {image_size}")
        elif rank == 0:
            atomic_write_json(info_path, {"format": FORMAT, "version": VERSION, "image_size": image_size, **(info or {})})
        self.manifest = self.root / ("manifest.jsonl" if rank == 0 else f"manifest.r{rank}.jsonl")
        self.next_shard = len(list((self.root / "shards").glob(f"{rank:03d}-*.safetensors")))

    def done_keys(self) -> set[str]:
        return {r["key"] for r in read_manifest(self.root)}

    def _append(self, records: list[dict]) -> None:
        with open(self.manifest, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())

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
