"""The images a StyleGAN2 trains on (``facerig gan train``): a ``facerig capture`` folder's aligned crops or a
folder of PNG/JPG images, each's centre square (the part ``--frame`` names) at the generator's size, uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from facerig.dataset import CaptureDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _framed_uint8(img: Image.Image, size: int, frame_box: tuple[float, ...]) -> Tensor:
    """``frame_box`` (unit coordinates) of an image's centre square, resized to ``size`` (Lanczos), as
    (3,size,size) uint8."""
    w, h = img.size
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    left, top, right, bottom = frame_box
    box = (x0 + s * left, y0 + s * top, x0 + s * right, y0 + s * bottom)
    return torch.from_numpy(np.array(img.convert("RGB").resize((size, size), Image.LANCZOS, box=box))).permute(2, 0, 1)


def load_images(data: str | Path, size: int, frame_box: tuple[float, ...] = (0.0, 0.0, 1.0, 1.0)) -> Tensor:
    """Every training image of ``data`` at ``size``: (N,3,size,size) uint8. A capture dataset folder (with its
    info.json) gives its aligned crops; any other folder its PNG/JPG files, recursively, in name order.
    ``frame_box`` is the part of each image's centre square kept (``GanTrainConfig.frame_box``)."""
    root = Path(data)
    if (root / "info.json").exists():
        ds = CaptureDataset(root)
        crops = (((ds[i]["image"] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy() for i in range(len(ds)))
        images = [_framed_uint8(Image.fromarray(c), size, frame_box)
                  for c in tqdm(crops, total=len(ds), desc="loading", leave=False)]
    elif root.is_dir():
        images = []
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in tqdm(files, desc="loading", leave=False, disable=len(files) < 1000):
            try:
                with Image.open(path) as img:
                    images.append(_framed_uint8(img, size, frame_box))
            except OSError as exc:
                raise ValueError(f"{path}: unreadable image ({exc})") from None
    else:
        raise FileNotFoundError(f"{root}: no such folder")
    if not images:
        raise ValueError(f"{root}: no training images (a capture dataset folder or PNG/JPG files)")
    return torch.stack(images)
