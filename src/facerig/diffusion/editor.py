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

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facerig import runtime
from facerig.diffusion.checkpoint import load_checkpoint
from facerig.diffusion.process import DEFAULT_SCHEDULE, ddim_invert, ddim_sample, denoiser_fn, guided_denoiser_fn
from facerig.edit import EditProgress, EditResult, EditSpec, Session, SessionCapture, StepCallback, apply_edit
from facerig.face3d import MorphableModel, load_model
from facerig.render import Renderer, RenderConfig

MIN_STEPS, MAX_STEPS = 2, 1000
MAX_REFINE = 10
MAX_GUIDANCE = 20.0
# Fixed-point iterations per inversion step. Measured on the shipped model, 4 FFHQ photos, no edit, bf16:
# round trip 18.7 / 29.0 / 39.1 dB at 20 steps with 0 / 1 / 2 iterations, 24.5 / 41.9 / 56.8 dB at 50.
DEFAULT_REFINE = 1


class DiffusionRigEditor:
    """A trained DiffusionRig (generic or personal) plus the face model and renderer that feed it."""

    rig = "diffusion"

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

    @staticmethod
    def check_options(steps: int = 20, seed: int = 0, invert: bool = False, refine: int = DEFAULT_REFINE,
                      guidance: float = 1.0) -> None:
        """Refuse options no edit can run with (before anything is loaded)."""
        if not (math.isfinite(guidance) and 0.0 <= guidance <= MAX_GUIDANCE):
            raise ValueError(f"--guidance must be in [0, {MAX_GUIDANCE:g}], not {guidance}")
        if not MIN_STEPS <= steps <= MAX_STEPS:
            raise ValueError(f"--steps must be in [{MIN_STEPS}, {MAX_STEPS}], not {steps}")
        DEFAULT_SCHEDULE.ddim_timesteps(steps)  # e.g. 700: no respacing of 1000 steps gives exactly that
        if not 0 <= refine <= MAX_REFINE:
            raise ValueError(f"--refine must be in [0, {MAX_REFINE}], not {refine}")
        if not 0 <= seed < 2**63:
            raise ValueError(f"--seed must be in [0, 2^63), not {seed}")

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
        if "diffusion.image" not in session.cache:
            small = F.interpolate(session.aligned[None].to(self.device), size=(self.size,) * 2, mode="area")
            session.cache["diffusion.image"] = small * 2 - 1
        return session.cache["diffusion.image"]

    @torch.no_grad()
    def _latent(self, session: Session) -> torch.Tensor:
        if "diffusion.latent" not in session.cache:
            with runtime.autocast(self.device, self.precision):
                session.cache["diffusion.latent"] = self.net.encode(self._image(session)).float()
        return session.cache["diffusion.latent"]

    @torch.no_grad()
    def edit(self, session: Session, spec: EditSpec, targets: dict[str, Session] | None = None,
             on_step: StepCallback | None = None, *, steps: int = 20, seed: int = 0, invert: bool = False,
             refine: int = DEFAULT_REFINE, guidance: float = 1.0) -> EditResult:
        spec.validate(self.face)
        self.check_options(steps, seed, invert, refine, guidance)
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

        def report(stage: str):
            if on_step is None:
                return None
            return lambda s: on_step(EditProgress(stage, s.index, s.total, s.denoised[0].clamp(-1, 1)))

        with runtime.autocast(self.device, self.precision):
            if invert:
                key = ("diffusion.inversion", steps, refine, latent_session.name, guidance)
                if key not in session.cache:
                    session.cache[key] = ddim_invert(fn, image, {"buffers": src_buf.condition(), "latent": latent},
                                                     steps, refine=refine, callback=report("invert"))
                x_T = session.cache[key]
            else:
                gen = torch.Generator(device=self.device).manual_seed(seed)
                x_T = torch.randn(image.shape, generator=gen, device=self.device)
            out = ddim_sample(fn, x_T, {"buffers": tgt_buf.condition(), "latent": latent}, steps,
                              clip_denoised=not invert, callback=report("sample"))
        if not torch.isfinite(out).all():
            raise ValueError("the edit produced non-finite values")
        return EditResult(image[0], out[0].clamp(-1, 1), src_buf, tgt_buf, session.params, edited)
