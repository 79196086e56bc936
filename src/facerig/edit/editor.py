"""The rig contract every editor implements, the prepared photo (``Session``) and the edit outputs.

    editor = load_editor(rig, model)                            # a rig registered in RIGS
    editor.contract                                             # the options, capabilities and stages it declares
    session = editor.prepare(photo or array)                    # capture once: fitted params, aligned crop
    editor.edit(session, spec, targets, on_step, **options)     # -> EditResult; targets: role -> Session
    write_edit(folder, result, spec, face, options)             # source.png, edited.png, sheet.png, edit.json

A rig's ``contract`` is all a client needs: the ``facerig edit`` flags, the UI's generation controls and
their ranges are built from its options, the UI's seed panel and live results from its capabilities, its
progress display from its stages. ``edit`` refuses an option the rig does not declare. A ``Session`` keeps
what its photo costs to compute (the fit; a rig's encodings and inversions in ``session.cache``), so an
interactive rig re-edits the same photo without capturing it again. Nothing here imports a rig:
``facerig.diffusion`` and ``facerig.stylerig`` import this module, not the other way round.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from facerig.edit.spec import CAPTURE_SIZE, EditSpec
from facerig.face3d import FaceParams, MorphableModel
from facerig.render import Buffers

FULL_FRAME = (0.5, 0.5, 1.0)  # an edit that is the FFHQ-aligned crop itself


class Stage(StrEnum):
    """What an edit is doing when it reports progress (``EditProgress.stage``)."""

    INVERT = "invert"  # DDIM inversion of the source under its own buffers; previews estimate the source
    SAMPLE = "sample"  # DDIM sampling under the edited buffers; previews estimate the result
    PROJECT = "project"  # a photo projected into a generator's latent space; previews are the projection
    GENERATE = "generate"  # one generator pass; its preview is the result

    @property
    def shows_result(self) -> bool:
        """Whether this stage's previews are (estimates of) the edited image."""
        return self in (Stage.SAMPLE, Stage.GENERATE)


@dataclass(frozen=True)
class RigOption:
    """One setting of a rig's edits, given as ``--NAME`` on the command line and by name to ``edit``."""

    name: str
    type: type  # int, float or bool
    default: int | float | bool
    help: str
    range: tuple[int | float, int | float] | None = None  # inclusive bounds of a number
    check: Callable[[Any], None] | None = None  # a further rule (e.g. DDIM's respacing); raises ValueError

    def parse(self, value: Any) -> int | float | bool:
        """``value`` as this option's type within its range, or one ValueError naming the option."""
        flag = f"--{self.name}"
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be true or false, not {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{flag} must be a number, not {value!r}")
        if self.type is int:
            if not float(value).is_integer():
                raise ValueError(f"{flag} must be a whole number, not {value!r}")
            value = int(value)
        else:
            value = float(value)
        low, high = self.range
        if not low <= value <= high:  # NaN fails too
            raise ValueError(f"{flag} must be in [{low:g}, {high:g}], not {value}" if self.type is float else
                             f"{flag} must be in [{low}, {high}], not {value}")
        if self.check is not None:
            self.check(value)
        return value

    def describe(self) -> dict:
        low, high = self.range or (None, None)
        return {"name": self.name, "type": self.type.__name__, "default": self.default, "min": low, "max": high,
                "help": self.help}


@dataclass(frozen=True)
class Capabilities:
    """What a rig can do beyond ``prepare`` and ``edit``. Inversion and guidance are options (``invert``,
    ``guidance``): a rig has them when it declares them."""

    seeds: bool = False  # prepare_seed(seed): faces drawn from the model itself
    albums: bool = False  # personal models: edits render an album's shared identity shape (load_editor's album)
    projection: bool = False  # project(session): a photo's latent is fitted once, up front, on upload
    live: bool = False  # an edit is one cheap pass: an interactive client edits on every control move


@dataclass(frozen=True)
class RigContract:
    rig: str
    options: tuple[RigOption, ...]
    capabilities: Capabilities
    stages: tuple[Stage, ...]  # every stage an edit may report, in the order it reports them

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every declared option's value: the given ones checked, the others their defaults. An option this
        rig does not declare is refused, never ignored."""
        names = [o.name for o in self.options]
        unknown = [k for k in given if k not in names]
        if unknown:
            known = ", ".join(f"--{n}" for n in names) or "none"
            raise ValueError(f"--{unknown[0]}: the {self.rig} rig has no such option (its options: {known})")
        return {o.name: o.parse(given[o.name]) if o.name in given else o.default for o in self.options}

    def declares(self, name: str) -> bool:
        return any(o.name == name for o in self.options)

    def describe(self) -> dict:
        """The contract as JSON (what the UI builds its controls from)."""
        return {"rig": self.rig, "options": [o.describe() for o in self.options],
                "capabilities": {**asdict(self.capabilities), "inversion": self.declares("invert"),
                                 "guidance": self.declares("guidance")},
                "stages": [{"name": s.value, "shows_result": s.shows_result} for s in self.stages]}


@dataclass
class SessionCache:
    """What the rig that prepared a session computed from its photo, kept so re-editing it only pays for
    the edit."""

    image: torch.Tensor | None = None  # (3,S,S) the photo at the rig's size and framing, [-1,1]
    latent: torch.Tensor | None = None  # (1,D) DiffusionRig: the photo's global latent
    # DiffusionRig: x_T of the photo's DDIM inversion by (steps, refine, latent source name, guidance)
    inversions: dict[tuple, torch.Tensor] = field(default_factory=dict)
    w: torch.Tensor | None = None  # (1,L,D) StyleRig: the face's own W+, known for a face drawn from a seed
    projections: dict[int, torch.Tensor] = field(default_factory=dict)  # StyleRig: projected W+ by step count


@dataclass
class Session:
    """One prepared photo: its aligned crop and fitted parameters, computed once and reused by every edit."""

    name: str
    aligned: torch.Tensor  # (3,S,S) the aligned crop at capture size, [0,1]
    params: FaceParams  # batch of one
    transform: torch.Tensor | None = None  # (3,3) aligned-pixel <- photo-pixel affine
    cache: SessionCache = field(default_factory=SessionCache)
    # edit.photo_scale.PhotoCrop: the face cut at the photo's own scale, where a client keeps it for its edits
    photo_crop: Any = None


@dataclass(frozen=True)
class EditProgress:
    """Reported while an edit runs: its ``stage``, step ``index`` (from 0) of ``total``, and the stage's
    current output (3,S,S) in [-1,1]: an estimate of the result where ``stage.shows_result``."""

    stage: Stage
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


class Editor(ABC):
    """What every rig implements; the CLI, the UI and the contract test call nothing else."""

    contract: ClassVar[RigContract]
    face: MorphableModel

    @classmethod
    def check_options(cls, **options) -> dict[str, Any]:
        """Every option's value (defaults filled in), or a ValueError, before anything is loaded."""
        return cls.contract.resolve(options)

    @abstractmethod
    def prepare(self, photo: str | Path | np.ndarray, name: str | None = None) -> Session:
        """A photo file or an (H,W,3) uint8 RGB array captured into a Session (a ValueError naming the photo
        when it cannot be read or has no face)."""

    def prepare_seed(self, seed: int) -> Session:
        """The model's own face for ``seed``, captured like a photo (capability ``seeds``)."""
        raise ValueError(f"the {self.contract.rig} rig draws no faces from seeds; give it a photo")

    def project(self, session: Session, on_step: StepCallback | None = None, **options) -> None:
        """Fit the session's latent now (capability ``projection``), so that its edits only generate."""
        raise ValueError(f"the {self.contract.rig} rig has no projection")

    @abstractmethod
    def edit(self, session: Session, spec: EditSpec, targets: dict[str, Session] | None = None,
             on_step: StepCallback | None = None, **options) -> EditResult:
        """``spec`` applied to the session (``targets`` by role for the spec's target photos), reporting
        ``contract.stages`` through ``on_step``; ``options`` are checked against ``contract.options``."""


# rig name -> (module, editor class); a rig registers here when it exists. Imported by name, so this
# module never imports a rig.
RIGS = {"diffusion": ("facerig.diffusion.editor", "DiffusionRigEditor"),
        "stylerig": ("facerig.stylerig.editor", "StyleRigEditor")}


def editor_class(rig: str) -> type[Editor]:
    if rig not in RIGS:
        raise ValueError(f"unknown rig {rig!r}; choose from {sorted(RIGS)}")
    module, name = RIGS[rig]
    return getattr(importlib.import_module(module), name)


def load_editor(rig: str, model: str, device: str = "cpu", album: str | None = None, precision: str = "auto") -> Editor:
    """The ``rig``'s editor for a trained ``model``; with ``album``, a personal model's shared shape."""
    from facerig.dataset import album_shape

    cls = editor_class(rig)
    if album and not cls.contract.capabilities.albums:
        raise ValueError(f"the {rig} rig has no personal models: --album does not apply")
    return cls(model, device, shape=album_shape(album) if album else None, precision=precision)


class SessionCapture:
    """Photos -> Sessions through capture's single-photo API, with one face model and fitter (loaded once)."""

    def __init__(self, face: MorphableModel, device: str | torch.device = "cpu", size: int = CAPTURE_SIZE):
        from facerig.capture.photo import PhotoCapture

        self.capture = PhotoCapture(face, device, size)

    def __call__(self, photo: str | Path | np.ndarray, name: str | None = None) -> Session:
        """A photo file or an (H,W,3) uint8 RGB array -> Session; a CaptureError (a ValueError naming the
        photo and the reason) when it cannot be read or has no face."""
        captured = self.capture(photo, name)
        aligned = torch.from_numpy(np.ascontiguousarray(captured.aligned.image)).permute(2, 0, 1).float() / 255.0
        return Session(captured.name, aligned, captured.params, torch.as_tensor(captured.aligned.transform, dtype=torch.float32))


def prepare_targets(editor: Editor, spec: EditSpec, known: dict[str, Session] | None = None) -> dict[str, Session]:
    """The spec's target photos as Sessions by role, prepared once each (``known``: path -> Session cache)."""
    known = {} if known is None else known
    out = {}
    for role, photo in spec.target_photos().items():
        if photo not in known:
            known[photo] = editor.prepare(photo)
        out[role] = known[photo]
    return out


def edit_record(result: EditResult, spec: EditSpec, face: MorphableModel, options: dict | None = None,
                sizes: dict[str, list[int]] | None = None) -> dict:
    """edit.json: the spec, the options (rig, model and the rig's options), the face model, source and target
    parameters, and ``sizes`` (image name -> [width, height]) where given. ``facerig edit`` writes it, the UI
    offers it for download, ``facerig eval`` reads it."""
    as_lists = lambda p: {k: v[0].tolist() for k, v in p.to_dict().items()}  # noqa: E731
    record = {"edit": spec.to_dict(), "options": options or {}, "model_face": face.name,
              "source_params": as_lists(result.source_params), "target_params": as_lists(result.target_params)}
    return {**record, "sizes": sizes} if sizes else record


def write_edit(folder: str | Path, result: EditResult, spec: EditSpec, face: MorphableModel,
               options: dict | None = None, images: dict[str, np.ndarray] | None = None) -> Path:
    """source.png, edited.png, sheet.png (photo | rendered | normal | albedo, source row then edited row) and
    edit.json (``edit_record``, with every image's size); returns the folder. ``images`` ("source" and
    "edited", (H,W,3) uint8: the edit at the photo's scale, ``edit.photo_scale``) replace the rig-size
    source.png and edited.png; edited_rig.png is always the rig's own output."""
    from PIL import Image

    from facerig.io import atomic_write_json, contact_sheet, to_uint8_image, writable_folder

    if not (torch.isfinite(result.edited).all() and torch.isfinite(result.target_params.light).all()):
        raise ValueError("the edit produced non-finite values; nothing written")
    folder = writable_folder(folder)
    rig = {"source": to_uint8_image(result.source, (-1, 1)), "edited": to_uint8_image(result.edited, (-1, 1))}
    written = {**rig, **(images or {}), "edited_rig": rig["edited"]}
    for name, image in written.items():
        Image.fromarray(image).save(folder / f"{name}.png")

    def row(buf: Buffers, photo: torch.Tensor) -> list[np.ndarray]:
        return [to_uint8_image(photo, (-1, 1)), to_uint8_image(buf.rendered[0]), to_uint8_image(buf.normal[0], (-1, 1)),
                to_uint8_image(buf.albedo[0])]

    sheet = contact_sheet([row(result.source_buffers, result.source), row(result.target_buffers, result.edited)])
    Image.fromarray(sheet).save(folder / "sheet.png")
    sizes = {name: [image.shape[1], image.shape[0]] for name, image in written.items()}
    atomic_write_json(folder / "edit.json", edit_record(result, spec, face, options, sizes))
    return folder
