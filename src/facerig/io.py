"""File I/O shared by every module: atomic writes, safetensors, images."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


def fsync_path(path: str | Path) -> None:
    """fsync a file or folder by name (a folder: its entries, i.e. a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _atomic(path: str | Path) -> Iterator[str]:
    """A temporary file beside ``path`` to write; then renamed over ``path``, so a crash leaves either the old
    file or the new one, never half. The data is fsynced before the rename and the folder after it: without
    both, after a power cut the name can point at data that never reached the disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes 0600 (and a writer may recreate the file): give it the mode open() would
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (see ``_atomic``)."""
    with _atomic(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.save_file``, atomically and durably (see ``_atomic``)."""
    with _atomic(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def writable_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` and check that files can be made in it, before any work: a ValueError naming it (which
    the CLI prints as one line, exit code 2) instead of an OSError traceback half-way through a job."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{path}: cannot be the {what}: it, or a folder above it, is a file") from None
    except PermissionError as exc:
        raise ValueError(f"{path}: {what} is not writable ({exc.strerror})") from None
    return path


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def to_uint8_image(t: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """A (3,H,W) or (1,H,W) or (H,W) tensor in ``value_range`` -> (H,W,3) uint8 array."""
    t = t.detach().float().cpu()
    if t.dim() == 2:
        t = t[None]
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    lo, hi = value_range
    t = ((t - lo) / (hi - lo)).clamp(0, 1)
    return (t.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def save_png(t: torch.Tensor, path: str | Path, value_range: tuple[float, float] = (0.0, 1.0)) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_image(t, value_range)).save(path)


def contact_sheet(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equally sized (H,W,3) uint8 images into one grid image, row by row."""
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            sheet[y : y + h, x : x + w] = img
    return sheet
