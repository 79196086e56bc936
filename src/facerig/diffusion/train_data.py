"""The training items of a DiffusionRig run: resized to the model's size, held in memory when they fit, and
mirrored at random (``facerig train --flip``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

RESIDENT_BYTES = {"cpu": 4 << 30, "cuda": 0.25}  # CPU: bytes; CUDA: fraction of the GPU's memory

# Channel 0 of the normal buffer: camera-space x, which a horizontal mirror negates (rendered and albedo just mirror).
NORMAL_X = 3


def mirror_half(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Mirror each item with probability 1/2 (drawn from ``generator``): image, buffers and mask left-right,
    the normals' x component negated, so the mirrored buffers are those of the mirrored face."""
    image = batch["image"]
    flip = (torch.rand(image.shape[0], device=image.device, generator=generator) < 0.5).view(-1, 1, 1, 1)
    out = {k: torch.where(flip, v.flip(-1), v) for k, v in batch.items()}
    sign = torch.ones(out["buffers"].shape[1], device=image.device, dtype=out["buffers"].dtype)
    sign[NORMAL_X] = -1
    out["buffers"] = torch.where(flip, out["buffers"] * sign.view(1, -1, 1, 1), out["buffers"])
    return out


class Resized(Dataset):
    """Dataset items resized to ``size`` (bilinear with antialiasing; the mask nearest)."""

    def __init__(self, base: Dataset, indices: list[int], size: int, source_size: int):
        self.base, self.indices, self.size, self.resize = base, indices, size, size != source_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = self.base[self.indices[i]]
        if not self.resize:
            return item
        s = (self.size, self.size)
        lin = lambda x: F.interpolate(x[None], s, mode="bilinear", antialias=True, align_corners=False)[0]  # noqa: E731
        return {"image": lin(item["image"]).clamp(-1, 1), "buffers": lin(item["buffers"]),
                "mask": F.interpolate(item["mask"][None], s, mode="nearest")[0]}


def resident_items(items: Dataset, size: int, device: torch.device, progress: bool = True) -> dict[str, torch.Tensor] | None:
    """Every item's ``image`` (N,3,S,S) and ``buffers`` (N,9,S,S) at ``size``, float16, on ``device``; None
    when they take more than ``RESIDENT_BYTES`` there (the run then streams them through a DataLoader)."""
    s, n = size, len(items)
    need = n * 12 * s * s * 2
    budget = RESIDENT_BYTES.get(device.type, 0)
    if device.type == "cuda":
        budget = budget * torch.cuda.get_device_properties(device).total_memory
    if need > budget:
        return None
    image = torch.empty(n, 3, s, s, dtype=torch.float16)
    buffers = torch.empty(n, 9, s, s, dtype=torch.float16)
    for i in tqdm(range(n), desc="loading training items", disable=not progress or n < 1000, leave=False):
        item = items[i]
        image[i], buffers[i] = item["image"], item["buffers"]
    return {"image": image.to(device), "buffers": buffers.to(device)}
