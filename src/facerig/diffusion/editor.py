"""The DiffusionRig editor: change a captured photo's 3D face parameters, re-render its buffers, sample.

The global latent comes from the source photo, or from the ``latent`` target to mix appearance. Sampling
is DDIM from seeded noise, or, with ``invert``, from the source's own DDIM inversion under its unedited
buffers, which keeps background and fine detail; ``refine`` fixed-point iterations per inversion step make
the inversion the sampler's exact inverse (see ``process.ddim_invert``). A Session caches its model-size
image, its latent and its inversions (per step count, refinement and latent source), so re-editing a photo
only samples.

A personal model (stage 2) was trained on buffers that carry its album's shared identity shape; pass that
``shape`` (``facerig.dataset.album_shape``) so edits render the same identity. Any photo can be edited
with another person's personal model: that is identity transfer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facerig import runtime
from facerig.diffusion.checkpoint import load_checkpoint
from facerig.diffusion.process import DEFAULT_SCHEDULE, ddim_invert, ddim_sample, denoiser_fn, guided_denoiser_fn
from facerig.edit import (
    Capabilities, EditProgress, EditResult, EditSpec, Editor, RigContract, RigOption, Session, SessionCapture, Stage,
    StepCallback, apply_edit,
)
from facerig.face3d import MorphableModel, load_model
from facerig.render import Renderer, RenderConfig

MIN_STEPS, MAX_STEPS = 2, 1000
MAX_REFINE = 10
MAX_GUIDANCE = 20.0
# Fixed-point iterations per inversion step. Measured on the shipped model, 4 FFHQ photos, no edit, bf16:
# round trip 18.7 / 29.0 / 39.1 dB at 20 steps with 0 / 1 / 2 iterations, 24.5 / 41.9 / 56.8 dB at 50.
DEFAULT_REFINE = 1

CONTRACT = RigContract(
    "diffusion",
    options=(
        RigOption("steps", int, 20, "DDIM steps", (MIN_STEPS, MAX_STEPS),
                  check=DEFAULT_SCHEDULE.ddim_timesteps),  # e.g. 700: no respacing of 1000 steps gives exactly that
        RigOption("seed", int, 0, "noise seed: same seed, same output", (0, 2**63 - 1)),
        RigOption("invert", bool, False, "start from the source's DDIM inversion (keeps background)"),
        RigOption("refine", int, DEFAULT_REFINE,
                  "fixed-point iterations per inversion step: 1 brings a no-edit round trip at 50 steps from 24.5 to "
                  "42 dB, 2 at 20 steps to 39 dB; each costs one more model call per step", (0, MAX_REFINE)),
        RigOption("guidance", float, 1.0,
                  "classifier-free guidance on the buffers (1 = off; above 1 pushes the edit harder); needs a model "
                  "trained with --cond-dropout", (0.0, MAX_GUIDANCE)),
    ),
    capabilities=Capabilities(albums=True),
    stages=(Stage.INVERT, Stage.SAMPLE),
)


class DiffusionRigEditor(Editor):
    """A trained DiffusionRig (generic or personal) plus the face model and renderer that feed it."""

    contract = CONTRACT

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu", face_model: MorphableModel | None = None,
                 shape: torch.Tensor | None = None, precision: str = "auto"):
        self.device = torch.device(device)
        self.precision = runtime.resolve_precision(precision, self.device)
        self.net, self.config = load_checkpoint(checkpoint, device=self.device)
        self.net.use_memory_format(runtime.memory_format(self.precision))
        self.face = (face_model if face_model is not None else load_model()).to(self.device)
        self.renderer = Renderer(self.face, RenderConfig(self.config.image_size))
        self.shape = shape.to(self.device) if shape is not None else None
        self._capture = SessionCapture(self.face, self.device)

    @property
    def size(self) -> int:
        return self.config.image_size

    def prepare(self, photo: str | Path | np.ndarray, name: str | None = None) -> Session:
        session = self._capture(photo, name)
        if self.shape is not None:
            session.params = session.params.replace(shape=self.shape.expand(session.params.batch_size, -1))
        return session

    def _image(self, session: Session) -> torch.Tensor:
        """(1,3,S,S) the aligned photo at the model's size in [-1,1] (cached)."""
        if session.cache.image is None:
            small = F.interpolate(session.aligned[None].to(self.device), size=(self.size,) * 2, mode="area")
            session.cache.image = (small * 2 - 1)[0]
        return session.cache.image[None]

    @torch.no_grad()
    def _latent(self, session: Session) -> torch.Tensor:
        if session.cache.latent is None:
            with runtime.autocast(self.device, self.precision):
                session.cache.latent = self.net.encode(self._image(session)).float()
        return session.cache.latent

    @torch.no_grad()
    def edit(self, session: Session, spec: EditSpec, targets: dict[str, Session] | None = None,
             on_step: StepCallback | None = None, **options) -> EditResult:
        """Options: see ``CONTRACT``."""
        spec.validate(self.face)
        o = self.contract.resolve(options)
        steps, seed, invert, refine, guidance = (o[k] for k in ("steps", "seed", "invert", "refine", "guidance"))
        if guidance != 1.0 and not self.config.null_condition:
            raise ValueError("--guidance needs a model trained with condition dropout (facerig train --cond-dropout); "
                             "this one was not")
        targets = targets or {}
        missing = set(spec.target_photos()) - set(targets)
        if missing:
            raise ValueError(f"edit needs prepared target photos for {sorted(missing)}")
        edited = apply_edit(self.face, session.params, spec, {role: t.params for role, t in targets.items()})
        src_buf, tgt_buf = self.renderer(session.params), self.renderer(edited)
        latent_session = targets.get("latent", session)
        latent = self._latent(latent_session)
        image = self._image(session)
        # Guided or not, inversion and sampling use the same function, so a do-nothing edit still round-trips.
        fn = denoiser_fn(self.net) if guidance == 1.0 else guided_denoiser_fn(self.net, guidance)

        def report(stage: Stage):
            if on_step is None:
                return None
            return lambda s: on_step(EditProgress(stage, s.index, s.total, s.denoised[0].clamp(-1, 1)))

        with runtime.autocast(self.device, self.precision):
            if invert:
                key, inversions = (steps, refine, latent_session.name, guidance), session.cache.inversions
                if key not in inversions:
                    inversions[key] = ddim_invert(fn, image, {"buffers": src_buf.condition(), "latent": latent},
                                                  steps, refine=refine, callback=report(Stage.INVERT))
                x_T = inversions[key]
            else:
                gen = torch.Generator(device=self.device).manual_seed(seed)
                x_T = torch.randn(image.shape, generator=gen, device=self.device)
            out = ddim_sample(fn, x_T, {"buffers": tgt_buf.condition(), "latent": latent}, steps,
                              clip_denoised=not invert, callback=report(Stage.SAMPLE))
        if not torch.isfinite(out).all():
            raise ValueError("the edit produced non-finite values")
        return EditResult(image[0], out[0].clamp(-1, 1), src_buf, tgt_buf, session.params, edited)
