"""FaceParams: the batched parameters of one or more faces, shared by every face model and the renderer."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from facerig.io import atomic_write_json


@dataclass
class FaceParams:
    """Batched face parameters; every field is a tensor whose first dimension is the batch.

    shape       (B, n_shape)   identity coefficients of the model's shape basis
    expression  (B, n_expr)    expression coefficients (ICT: ARKit blendshape weights, usually in [0, 1])
    rotation    (B, 3)         global head rotation, axis-angle radians (see ``face3d.rotation``)
    translation (B, 3)         camera-space offset of the head, metres: the pinhole camera sits at the origin
                               looking down -z; the orthographic camera uses only its z, for depth
    jaw         (B, 3)         jaw rotation, axis-angle (FLAME; models without a jaw joint ignore it)
    albedo      (B, n_albedo)  albedo basis coefficients (may be 0 wide)
    light       (B, 9, 3)      spherical-harmonics light, DECA's basis order and constants
    cam         (B, 3)         orthographic camera [scale, tx, ty] as in DECA: ndc = scale * (xy + t)
    focal       (B, 1)         perspective focal length in units of half the image size
    """

    shape: torch.Tensor
    expression: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    jaw: torch.Tensor
    albedo: torch.Tensor
    light: torch.Tensor
    cam: torch.Tensor
    focal: torch.Tensor

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @property
    def batch_size(self) -> int:
        return self.shape.shape[0]

    @property
    def device(self) -> torch.device:
        return self.shape.device

    def map(self, fn) -> "FaceParams":
        """A new FaceParams with ``fn`` applied to every field tensor."""
        return FaceParams(**{k: fn(v) for k, v in self.to_dict().items()})

    def to(self, *args, **kwargs) -> "FaceParams":
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "FaceParams":
        return self.map(torch.Tensor.detach)

    def clone(self) -> "FaceParams":
        return self.map(torch.Tensor.clone)

    def __getitem__(self, index) -> "FaceParams":
        """Index the batch; an int keeps the batch dimension."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self.map(lambda t: t[index])

    def replace(self, **changes: torch.Tensor) -> "FaceParams":
        return FaceParams(**{**self.to_dict(), **changes})

    @staticmethod
    def cat(items: list["FaceParams"]) -> "FaceParams":
        return FaceParams(**{k: torch.cat([getattr(p, k) for p in items]) for k in FaceParams.field_names()})

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.field_names()}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor], source: str = "params") -> "FaceParams":
        missing = set(cls.field_names()) - set(d)
        if missing:
            raise ValueError(f"{source}: missing face parameter fields {sorted(missing)}")
        out = cls(**{k: torch.as_tensor(d[k], dtype=torch.float32) for k in cls.field_names()})
        out.validate(source)
        return out

    def validate(self, source: str = "params") -> None:
        b = self.batch_size
        expect = {"rotation": (b, 3), "translation": (b, 3), "jaw": (b, 3), "light": (b, 9, 3), "cam": (b, 3), "focal": (b, 1)}
        for k, shp in expect.items():
            if tuple(getattr(self, k).shape) != shp:
                raise ValueError(f"{source}: field {k!r} has shape {tuple(getattr(self, k).shape)}, expected {shp}")
        for k in ("shape", "expression", "albedo"):
            t = getattr(self, k)
            if t.dim() != 2 or t.shape[0] != b:
                raise ValueError(f"{source}: field {k!r} has shape {tuple(t.shape)}, expected ({b}, n)")

    def to_json(self, path: str | Path) -> None:
        atomic_write_json(path, {k: v.detach().cpu().tolist() for k, v in self.to_dict().items()})

    @classmethod
    def from_json(cls, path: str | Path) -> "FaceParams":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such parameter file") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=str(path))
