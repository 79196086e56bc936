"""The editor protocol both rigs implement, the prepared photo (``Session``) and the edit outputs.

    editor.prepare(photo or array) -> Session            # capture once: fitted params, aligned crop
    editor.edit(session, spec, targets, on_step=...)     # -> EditResult; targets: role -> Session
    write_edit(folder, result, spec, face, options)      # source.png, edited.png, sheet.png, edit.json

A ``Session`` keeps what its photo costs to compute (the fit; a rig caches its encodings and inversions in
``session.cache``), so an interactive rig re-edits the same photo without capturing it again. Nothing here
imports a rig: ``facerig.diffusion`` and ``facerig.stylerig`` import this module, not the other way round.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from facerig.edit.spec import CAPTURE_SIZE, EditSpec
from facerig.face3d import FaceParams, MorphableModel
from facerig.render import Buffers

FULL_FRAME = (0.5, 0.5, 1.0)  # an edit that is the FFHQ-aligned crop itself


@dataclass
class Session:
    """One prepared photo: its aligned crop and fitted parameters, computed once and reused by every edit."""

    name: str
    aligned: torch.Tensor  # (3,S,S) the aligned crop at capture size, [0,1]
    params: FaceParams  # batch of one
    transform: torch.Tensor | None = None  # (3,3) aligned-pixel <- original-pixel affine; None for arrays
    cache: dict[Any, Any] = field(default_factory=dict)  # rig-specific, e.g. encodings and inversions


@dataclass(frozen=True)
class EditProgress:
    """Reported while an edit runs: ``stage`` ("invert" or "sample"), step ``index`` of ``total``, and the
    current estimate of the result (3,S,S) in [-1,1]."""

    stage: str
    index: int
    total: int
    preview: torch.Tensor


StepCallback = Callable[[EditProgress], None]


@dataclass
class EditResult:
    source: torch.Tensor  # (3,S,S) the source at the rig's size, [-1,1]
    edited: torch.Tensor  # (3,S,S) [-1,1]
    source_buffers: Buffers
    target_buffers: Buffers
    source_params: FaceParams
    target_params: FaceParams
    # Where the FFHQ-aligned crop lies in ``edited`` (centre x, centre y, side; units of its side): the crop
    # itself for DiffusionRig, the generator's framing for StyleRig. Paste-back maps through it.
    frame: tuple[float, float, float] = FULL_FRAME


class Editor(Protocol):
    face: MorphableModel

    @staticmethod
    def check_options(**options) -> None:
        """Raise a ValueError for options no edit can run with, before anything is loaded."""

    def prepare(self, photo: str | Path | np.ndarray, name: str | None = None) -> Session: ...

    def edit(self, session: Session, spec: EditSpec, targets: dict[str, Session] | None = None,
             on_step: StepCallback | None = None, **options) -> EditResult: ...


# rig name -> (module, editor class); a rig registers here when it exists. Imported by name, so this
# module never imports a rig.
RIGS = {"diffusion": ("facerig.diffusion.editor", "DiffusionRigEditor"),
        "stylerig": ("facerig.stylerig.editor", "StyleRigEditor")}


def editor_class(rig: str) -> type:
    if rig not in RIGS:
        raise ValueError(f"unknown rig {rig!r}; choose from {sorted(RIGS)}")
    module, name = RIGS[rig]
    return getattr(importlib.import_module(module), name)


def load_editor(rig: str, model: str, device: str = "cpu", album: str | None = None, precision: str = "auto") -> Editor:
    """The ``rig``'s editor for a trained ``model``; with ``album``, a personal model's shared shape."""
    from facerig.dataset import album_shape

    return editor_class(rig)(model, device, shape=album_shape(album) if album else None, precision=precision)


class SessionCapture:
    """Captures photos into Sessions with one face model and fitter (loaded once)."""

    def __init__(self, face: MorphableModel, device: str | torch.device = "cpu", size: int = CAPTURE_SIZE):
        from facerig.capture.pipeline import ModelFitter

        self.fitter = ModelFitter(size, device, face)

    def __call__(self, photo: str | Path | np.ndarray, name: str | None = None) -> Session:
        """A photo file or an (H,W,3) uint8 RGB array -> Session; a CaptureError (a ValueError naming the
        photo and the reason) when it cannot be read or has no face."""
        from facerig.capture.pipeline import CaptureConfig, Source, prepare, prepare_image

        if isinstance(photo, np.ndarray):
            name = name or "image"
            item = prepare_image(photo, self.fitter.size, name)
        else:
            path = Path(photo)
            name = name or path.stem
            item = prepare(Source(path, path.name), CaptureConfig(size=self.fitter.size, device=str(self.fitter.device)))[0]
        fitted = self.fitter.fit_items([item])
        aligned = torch.from_numpy(np.ascontiguousarray(item.image)).permute(2, 0, 1).float() / 255.0
        transform = torch.as_tensor(item.transform, dtype=torch.float32) if item.transform is not None else None
        return Session(name, aligned, fitted.params, transform)


def prepare_targets(editor: Editor, spec: EditSpec, known: dict[str, Session] | None = None) -> dict[str, Session]:
    """The spec's target photos as Sessions by role, prepared once each (``known``: path -> Session cache)."""
    known = {} if known is None else known
    out = {}
    for role, photo in spec.target_photos().items():
        if photo not in known:
            known[photo] = editor.prepare(photo)
        out[role] = known[photo]
    return out


def write_edit(folder: str | Path, result: EditResult, spec: EditSpec, face: MorphableModel,
               options: dict | None = None) -> Path:
    """source.png, edited.png, sheet.png (photo | rendered | normal | albedo, source row then edited row) and
    edit.json (the spec, the rig's options, source and target parameters); returns the folder."""
    from PIL import Image

    from facerig.io import atomic_write_json, contact_sheet, to_uint8_image, writable_folder

    if not (torch.isfinite(result.edited).all() and torch.isfinite(result.target_params.light).all()):
        raise ValueError("the edit produced non-finite values; nothing written")
    folder = writable_folder(folder)
    Image.fromarray(to_uint8_image(result.source, (-1, 1))).save(folder / "source.png")
    Image.fromarray(to_uint8_image(result.edited, (-1, 1))).save(folder / "edited.png")

    def row(buf: Buffers, photo: torch.Tensor) -> list[np.ndarray]:
        return [to_uint8_image(photo, (-1, 1)), to_uint8_image(buf.rendered[0]), to_uint8_image(buf.normal[0], (-1, 1)),
                to_uint8_image(buf.albedo[0])]

    sheet = contact_sheet([row(result.source_buffers, result.source), row(result.target_buffers, result.edited)])
    Image.fromarray(sheet).save(folder / "sheet.png")
    as_lists = lambda p: {k: v[0].tolist() for k, v in p.to_dict().items()}  # noqa: E731
    atomic_write_json(folder / "edit.json", {
        "edit": spec.to_dict(), "options": options or {}, "model_face": face.name,
        "source_params": as_lists(result.source_params), "target_params": as_lists(result.target_params),
    })
    return folder
