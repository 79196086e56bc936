"""Editing with a trained DiffusionRig: change the 3D face parameters, re-render the buffers, sample.

A source photo is captured on the fly (detect, FFHQ-align, fit). Its parameters are edited from target
photos as the official modes do (``light_from``: SH light; ``pose_from``: global head rotation;
``expression_from``: expression and jaw) or from explicit values (light direction and intensity, head yaw,
pitch and roll in degrees, named expression weights). The global latent comes from the source photo, or
from another photo to mix appearance. Sampling is DDIM from seeded noise, or, with ``invert``, from the
source's own DDIM inversion under its unedited buffers, which keeps background and fine detail.

A personal model (stage 2) was trained on buffers that carry its album's shared identity shape; pass that
``shape`` (``album_shape``) so edits render the same identity. Any photo can be edited with another
person's personal model: that is identity transfer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from facerig.capture.fit import FitResult
from facerig.capture.pipeline import capture_photos, stack_faces
from facerig.dataset import CaptureDataset
from facerig.diffusion.checkpoint import load_checkpoint
from facerig import runtime
from facerig.diffusion.process import ddim_invert, ddim_sample, denoiser_fn
from facerig.face3d import FaceParams, MorphableModel, load_model
from facerig.face3d.rotation import axis_angle_to_euler, euler_to_axis_angle
from facerig.render import Buffers, Renderer, RenderConfig, directional_light, project
from facerig.render.sh import split_light

CAPTURE_SIZE = 256  # photos are fitted at this size; buffers are rendered at the model's


@dataclass
class EditSpec:
    light_from: str | None = None
    pose_from: str | None = None
    expression_from: str | None = None
    latent_from: str | None = None
    light_dir: tuple[float, float, float] | None = None  # camera space: x right, y up, z towards the camera
    light_intensity: float | None = None
    yaw: float | None = None  # degrees, absolute head pose
    pitch: float | None = None
    roll: float | None = None
    expression: dict[str, float] = field(default_factory=dict)  # ARKit blendshape name -> weight

    def target_photos(self) -> dict[str, str]:
        return {k: v for k, v in (("light", self.light_from), ("pose", self.pose_from),
                                  ("expression", self.expression_from), ("latent", self.latent_from)) if v}


@dataclass
class EditResult:
    source: torch.Tensor  # (3,S,S) the aligned source photo at the model's size, [-1,1]
    edited: torch.Tensor  # (3,S,S) [-1,1]
    source_buffers: Buffers
    target_buffers: Buffers
    source_params: FaceParams
    target_params: FaceParams
    aligned_photo: torch.Tensor  # (3,256,256) the aligned source at capture size, [0,1]


def alignment_centre(model: MorphableModel, params: FaceParams, size: int) -> torch.Tensor:
    """FFHQ's crop centre (eye midpoint + 0.1 eye-to-mouth) of the projected model landmarks, pixels."""
    lmk = project(model(params).landmarks, params, "orthographic", size)[..., :2]
    eyes = (lmk[:, 36:42].mean(1) + lmk[:, 42:48].mean(1)) / 2
    mouth = (lmk[:, 48] + lmk[:, 54]) / 2
    return eyes + 0.1 * (mouth - eyes)


def apply_edit(model: MorphableModel, source: FaceParams, spec: EditSpec, targets: dict[str, FaceParams]) -> FaceParams:
    """The edited parameters: target photos' parts first, then explicit values on top."""
    p = source.clone()
    if "light" in targets:
        p.light = targets["light"].light.clone()
    if spec.light_dir is not None or spec.light_intensity is not None:
        direction, intensity, ambient = split_light(p.light)
        if spec.light_dir is not None:
            direction = torch.tensor([spec.light_dir], dtype=p.light.dtype, device=p.light.device).expand_as(direction)
        if spec.light_intensity is not None:
            intensity = torch.full_like(intensity, spec.light_intensity)
        p.light = directional_light(direction, intensity, ambient)
    if "pose" in targets:
        p.rotation = targets["pose"].rotation.clone()
    if any(a is not None for a in (spec.yaw, spec.pitch, spec.roll)):
        euler = axis_angle_to_euler(p.rotation)
        for i, value in enumerate((spec.yaw, spec.pitch, spec.roll)):
            if value is not None:
                euler[:, i] = value
        p.rotation = euler_to_axis_angle(euler[:, 0], euler[:, 1], euler[:, 2]).to(p.rotation)
    if "expression" in targets:
        p.expression = targets["expression"].expression.clone()
        p.jaw = targets["expression"].jaw.clone()
    for name, weight in spec.expression.items():
        p.expression[:, model.expression_index(name)] = weight
    if not torch.equal(p.rotation, source.rotation):
        # Keep the face where FFHQ alignment would put it: turning the head about the model origin (the
        # neck) would otherwise slide the face across the crop.
        scale = p.cam[:, :1]
        shift_px = alignment_centre(model, source, CAPTURE_SIZE) - alignment_centre(model, p, CAPTURE_SIZE)
        shift_ndc = torch.stack([shift_px[:, 0], -shift_px[:, 1]], -1) / (CAPTURE_SIZE / 2)
        p.cam = torch.cat([scale, p.cam[:, 1:] + shift_ndc / scale], 1)
    return p


def parse_expression(text: str) -> dict[str, float]:
    """'mouthSmile_L=0.8,jawOpen=0.3' -> {'mouthSmile_L': 0.8, 'jawOpen': 0.3}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expression {item!r} is not NAME=WEIGHT")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"expression weight {value!r} for {name!r} is not a number") from None
    return out


def album_shape(dataset: str | Path) -> torch.Tensor:
    """The identity shape (1,S) a personal model was trained with: the mean over its album dataset."""
    data = CaptureDataset(dataset)
    if len(data) == 0:
        raise ValueError(f"{dataset}: album dataset has no captured photos")
    return torch.stack([data.get(i).params["shape"] for i in range(len(data))]).mean(0, keepdim=True)


class Editor:
    """A trained DiffusionRig (generic or personal) plus the face model and renderer that feed it."""

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu", face_model: MorphableModel | None = None,
                 shape: torch.Tensor | None = None, precision: str = "auto"):
        self.device = torch.device(device)
        self.precision = runtime.resolve_precision(precision, self.device)
        self.net, self.config = load_checkpoint(checkpoint, device=self.device)
        self.net.use_memory_format(runtime.memory_format(self.precision))
        self.face = (face_model if face_model is not None else load_model()).to(self.device)
        self.renderer = Renderer(self.face, RenderConfig(self.config.image_size))
        self.shape = shape.to(self.device) if shape is not None else None

    def to_model_size(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] capture-size crops -> [-1,1] at the model's size."""
        return F.interpolate(images, size=(self.config.image_size,) * 2, mode="area") * 2 - 1

    def capture(self, photos: list[str]) -> FitResult:
        return capture_photos(photos, CAPTURE_SIZE, self.face, self.device)

    def edit(self, photo: str, spec: EditSpec, steps: int = 20, seed: int = 0, invert: bool = False) -> EditResult:
        targets = spec.target_photos()
        photos = [photo, *targets.values()]
        items, fitted = self.capture(photos)
        aligned = stack_faces(items)[1].to(self.device)
        params = fitted.params
        if self.shape is not None:
            params = params.replace(shape=self.shape.expand(params.batch_size, -1))
        source = params[0]
        target_params = {role: params[i + 1] for i, role in enumerate(targets)}
        edited = apply_edit(self.face, source, spec, target_params)
        images = self.to_model_size(aligned)
        with torch.no_grad():
            src_buf, tgt_buf = self.renderer(source), self.renderer(edited)
            latent_image = images[1 + list(targets).index("latent")][None] if "latent" in targets else images[:1]
            latent = self.net.encode(latent_image)
            fn = denoiser_fn(self.net)
            with runtime.autocast(self.device, self.precision):
                if invert:
                    x_T = ddim_invert(fn, images[:1], {"buffers": src_buf.condition(), "latent": latent}, steps)
                else:
                    gen = torch.Generator(device=self.device).manual_seed(seed)
                    x_T = torch.randn(images[:1].shape, generator=gen, device=self.device)
                out = ddim_sample(fn, x_T, {"buffers": tgt_buf.condition(), "latent": latent}, steps,
                                  clip_denoised=not invert)
        return EditResult(images[0], out[0].clamp(-1, 1), src_buf, tgt_buf, source, edited, aligned[0])


def write_edit(folder: str | Path, result: EditResult, spec: EditSpec, face: MorphableModel) -> None:
    """source.png, edited.png, sheet.png (photo | source buffers | edited buffers | edit) and edit.json."""
    from dataclasses import asdict

    import numpy as np
    from PIL import Image

    from facerig.io import atomic_write_json, contact_sheet, to_uint8_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_image(result.source, (-1, 1))).save(folder / "source.png")
    Image.fromarray(to_uint8_image(result.edited, (-1, 1))).save(folder / "edited.png")

    def row(buf: Buffers, photo: torch.Tensor) -> list[np.ndarray]:
        return [to_uint8_image(photo, (-1, 1)), to_uint8_image(buf.rendered[0]), to_uint8_image(buf.normal[0], (-1, 1)),
                to_uint8_image(buf.albedo[0])]

    Image.fromarray(contact_sheet([row(result.source_buffers, result.source), row(result.target_buffers, result.edited)])).save(folder / "sheet.png")
    as_lists = lambda p: {k: v[0].tolist() for k, v in p.to_dict().items()}  # noqa: E731
    atomic_write_json(folder / "edit.json", {
        "edit": asdict(spec), "model_face": face.name,
        "source_params": as_lists(result.source_params), "target_params": as_lists(result.target_params),
    })
