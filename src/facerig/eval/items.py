"""Reading an EDITS folder as the edit command writes it.

Layout, one sub-folder per edit::

    EDITS/<name>/source.png    the photo that was edited (or reconstructed)
    EDITS/<name>/edited.png    the edit (or, with --reconstructions, the reconstruction of source.png)
    EDITS/<name>/edit.json     optional: {"source_params": {key: [floats...]}, "target_params": {...}}
    EDITS/<name>/mask.png      optional, reconstructions: face mask (8-bit, 255 = face), same size as source
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H,W,3) uint8 RGB; ValueError naming the file when it is missing or unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ValueError(f"{path}: missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from None


def read_mask(path: str | Path) -> np.ndarray:
    """An 8-bit mask as (H,W) float weights in [0,1]."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: unreadable mask ({exc})") from None


def params_from_json(obj: object, where: str) -> dict[str, torch.Tensor]:
    """``{key: nested list of floats}`` -> ``{key: (1, n) float64 tensor}``, one item per edit."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object mapping parameter names to lists of numbers")
    out = {}
    for key, value in obj.items():
        try:
            out[key] = torch.tensor(value, dtype=torch.float64).reshape(1, -1)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{where}.{key}: not a (nested) list of numbers ({exc})") from None
    return out


@dataclass
class EditItem:
    name: str
    folder: Path
    source: np.ndarray  # (H,W,3) uint8
    edited: np.ndarray  # (H,W,3) uint8
    source_params: dict[str, torch.Tensor] | None
    target_params: dict[str, torch.Tensor] | None
    mask: np.ndarray | None  # (H,W) float in [0,1]


def list_item_folders(edits: str | Path) -> list[Path]:
    """Every sub-folder of an EDITS folder, sorted by name."""
    edits = Path(edits)
    if not edits.is_dir():
        raise FileNotFoundError(f"{edits}: edits folder not found")
    folders = sorted(p for p in edits.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{edits}: no item folders (expected {edits}/<name>/source.png and edited.png)")
    return folders


def load_item(folder: Path) -> EditItem:
    """One item; ValueError naming the file and reason when something is missing or corrupt."""
    source = read_rgb(folder / "source.png")
    edited = read_rgb(folder / "edited.png")
    source_params = target_params = None
    edit_json = folder / "edit.json"
    if edit_json.exists():
        try:
            meta = json.loads(edit_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{edit_json}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{edit_json}: expected a JSON object")
        if "source_params" in meta:
            source_params = params_from_json(meta["source_params"], f"{edit_json}: source_params")
        if "target_params" in meta:
            target_params = params_from_json(meta["target_params"], f"{edit_json}: target_params")
    mask = None
    if (folder / "mask.png").exists():
        mask = read_mask(folder / "mask.png")
        if mask.shape != source.shape[:2]:
            raise ValueError(f"{folder / 'mask.png'}: size {mask.shape[::-1]} differs from source.png {source.shape[1::-1]}")
    return EditItem(folder.name, folder, source, edited, source_params, target_params, mask)
