"""The StyleRig editor: faces drawn from seeds, or real photos projected into W+, rigged by RigNet.

- ``prepare_seed(seed)``: the generator's face for a seed; ``prepare(photo)``: a photo captured as every rig
  captures it, cut to the generator's framing and projected into W+ (Adam on W+ from the mean latent:
  pixel loss plus a pull towards the mean, ``steps`` iterations, reported through ``on_step``).
- ``edit``: ``apply_edit`` on the captured parameters gives the target; the fields the spec changes
  (rotation, expression, light) go to the RigNet of that mode (``all`` when several change), the rest stay
  DFR's own, and one generator pass renders the result. ``latent_from`` mixes the other face's fine layers
  (appearance) into the result, as StyleGAN's style mixing does.

StyleRig's one option is ``steps`` (projection iterations); it has no personal models (no album shape) and
no DDIM, so ``seed``, ``invert``, ``refine`` and ``guidance`` are refused as options it does not declare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facerig.edit import (
    Capabilities, EditProgress, EditResult, EditSpec, Editor, RigContract, RigOption, Session, SessionCapture, Stage,
    StepCallback, apply_edit,
)
from facerig.face3d import MorphableModel, load_model
from facerig.io import to_uint8_image
from facerig.render import Renderer, RenderConfig
from facerig.stylerig.model import StyleRigModel, frame_crop, style_mix, to_frame

DEFAULT_PROJECT_STEPS = 300
MAX_PROJECT_STEPS = 5000
PROJECT_LR = 0.05
PROJECT_PULL = 0.01  # weight of the squared distance to the mean latent, per entry, relative to pixel MSE

CONTRACT = RigContract(
    "stylerig",
    options=(RigOption("steps", int, DEFAULT_PROJECT_STEPS, "W+ projection iterations for a real photo",
                       (1, MAX_PROJECT_STEPS)),),
    capabilities=Capabilities(seeds=True, projection=True, live=True),
    stages=(Stage.PROJECT, Stage.GENERATE),
)

EDIT_FIELDS = {"light": ("light_from", "light_dir", "light_intensity"), "rotation": ("pose_from", "yaw", "pitch", "roll"),
               "expression": ("expression_from", "expression")}


def edited_fields(spec: EditSpec) -> tuple[str, ...]:
    """The parameter fields (rotation, expression, light) an edit changes."""
    return tuple(f for f, names in EDIT_FIELDS.items() if any(getattr(spec, n) not in (None, {}) for n in names))


class StyleRigEditor(Editor):
    contract = CONTRACT

    def __init__(self, model: str | Path, device: str | torch.device = "cpu", face_model: MorphableModel | None = None,
                 shape: torch.Tensor | None = None, precision: str = "auto"):
        if shape is not None:
            raise ValueError("StyleRig has no personal models: --album does not apply")
        if precision not in ("auto", "fp32"):
            raise ValueError(f"StyleRig runs in fp32: --precision {precision} does not apply")
        self.device = torch.device(device)
        self.model = StyleRigModel.from_pretrained(model, self.device)
        self.face = (face_model if face_model is not None else load_model()).to(self.device)
        self.renderer = Renderer(self.face, RenderConfig(self.model.size))
        self.template = self.face.default_params(1)
        self._capture = SessionCapture(self.face, self.device)

    @property
    def size(self) -> int:
        return self.model.size

    @torch.no_grad()
    def prepare_seed(self, seed: int, truncation: float | None = None) -> Session:
        """The generator's face for ``seed``, captured like a photo; its latent is known, nothing to project."""
        w = self.model.latent(seed, truncation).to(self.device)
        image = self.model.generate(w)[0]
        session = self._capture(to_uint8_image(image, (-1, 1)), name=f"seed_{seed}")
        session.cache.w, session.cache.image = w, image
        return session

    def prepare(self, photo: str | Path | np.ndarray, name: str | None = None) -> Session:
        """A photo captured (fitted parameters, FFHQ crop); its W+ is projected on first edit (``project``)."""
        session = self._capture(photo, name)
        session.cache.image = frame_crop(session.aligned.to(self.device), self.model.config.frame, self.size)
        return session

    def project(self, session: Session, on_step: StepCallback | None = None, **options) -> None:
        """Project an uploaded photo into W+ now (``steps``: see ``CONTRACT``), so its edits only generate."""
        with torch.enable_grad():
            self._project(session, self.contract.resolve(options)["steps"], on_step)

    def _project(self, session: Session, steps: int, on_step: StepCallback | None = None) -> torch.Tensor:
        """(1, n_latent, style_dim) W+ whose image matches the session's (cached per step count)."""
        if session.cache.w is not None:
            return session.cache.w
        if steps not in session.cache.projections:
            target = session.cache.image[None]
            avg = self.model.latent_avg
            w = avg[None, None].repeat(1, self.model.generator.n_latent, 1).clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=PROJECT_LR)
            for i in range(steps):
                image = self.model.generate(w)
                loss = (image - target).pow(2).mean() + PROJECT_PULL * (w - avg).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if on_step is not None:
                    on_step(EditProgress(Stage.PROJECT, i, steps, image[0].detach()))
            session.cache.projections[steps] = w.detach()
        return session.cache.projections[steps]

    @torch.no_grad()
    def edit(self, session: Session, spec: EditSpec, targets: dict[str, Session] | None = None,
             on_step: StepCallback | None = None, **options) -> EditResult:
        """Options: see ``CONTRACT``."""
        spec.validate(self.face)
        steps = self.contract.resolve(options)["steps"]
        targets = targets or {}
        missing = set(spec.target_photos()) - set(targets)
        if missing:
            raise ValueError(f"edit needs prepared target photos for {sorted(missing)}")
        with torch.enable_grad():
            w = self._project(session, steps, on_step)
        edited = apply_edit(self.face, session.params, spec, {role: t.params for role, t in targets.items()})
        fields = edited_fields(spec)
        w_edit = self.model.rig(w, edited, fields)[0] if fields else w
        if "latent" in targets:
            with torch.enable_grad():
                w_other = self._project(targets["latent"], steps)
            w_edit = style_mix(w_edit, w_other, "fine")
        out = self.model.generate(w_edit)[0]
        if on_step is not None:
            on_step(EditProgress(Stage.GENERATE, 0, 1, out))
        if not torch.isfinite(out).all():
            raise ValueError("the edit produced non-finite values")
        source = session.cache.image
        frame = self.model.config.frame
        return EditResult(source, out, self.renderer(to_frame(session.params, frame)), self.renderer(to_frame(edited, frame)),
                          session.params, edited, tuple(frame))
