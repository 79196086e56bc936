"""Build a StyleRig over a trained generator: ``facerig stylerig train``.

Three resumable stages in one run folder (each skipped when its output exists):

1. ``data/chunk_NNNN.safetensors``: ``samples`` generated faces in chunks, each with its W+ latent (style
   mixing with probability ``mixing``, so the DFR also sees W+ that are not one repeated w), captured by
   facerig's capture exactly as a photo would be: the fitted parameters, the landmark error, and where the
   FFHQ crop lies in the generated image. Faces dlib does not find are kept as misses (the detection rate).
   With ``steered``, ``data/steered_NNNN.safetensors`` adds faces moved along the captures' own attribute
   directions (``attribute_directions``), for the DFR only; with ``edited``, ``data/edited_NNNN.safetensors``
   (``edited2_NNNN`` ... for further rigs) adds faces edited by other rigs over the same generator
   (``rig_edits``), for the DFR only.
2. ``dfr_KIND.safetensors``: the DFR regressed onto those captures (``face_distance`` + a small L2 on the
   normalised vector); ``dfr_KIND.json`` holds its error on held-out samples, per parameter, in ``facerig eval``'s
   units: the "DFR's own error" that unedited parameters are compared against. With ``dfr_augment`` the image
   DFR trains on randomly shifted, scaled, blurred and noisy images (``dfr_image_eot``).
   With an identity weight, ``identity/embed_NNNN.safetensors`` holds dlib's embeddings of a random subset of
   those captures and ``identity_net.safetensors`` a network distilled from them (generated image -> dlib
   embedding; its held-out error in ``identity_net.json``), through which RigNet's identity loss runs.
3. ``rignet_MODE.safetensors`` for each mode: RigNet trained self-supervised through the frozen DFR on fresh
   latents (no images needed: the paper's losses live in parameter space once the DFR exists).

``model/`` then holds the whole rig (generator, DFR, parameter space, RigNets, framing) as ``config.json`` +
``model.safetensors`` for ``facerig edit --rig stylerig`` and ``facerig stylerig sample``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from facerig import runtime
from facerig.face3d.light import dominant_direction
from facerig.face3d.rotation import axis_angle_to_euler
from facerig.io import atomic_save_safetensors, atomic_write_json, writable_folder
from facerig.stylerig.augment import geometric_blur_noise
from facerig.stylerig.rig import (
    DFR, MODES, FaceDistance, ImageDFR, LossWeights, ParamSpace, RigNet, TargetSampler, field_sizes, principal_directions,
    rignet_losses,
)
from facerig.stylerig.stylegan2 import render_latents
from facerig.training import option
from facerig.weights import read_tensors

CHUNK = 64
MIN_FACES = 32  # captured faces below which there is nothing to train a DFR on
HOLDOUT = 0.1  # fraction of captured samples the DFR never trains on
DFR_WEIGHT_DECAY = 1e-4
DFR_VALIDATE_EVERY = 250
STEER_SPAN = 2.5  # steered samples move up to this many class-mean differences either way
IDENTITY_DIM = 128  # dlib's face embedding


@dataclass
class RigTrainConfig:
    generator: str = field(metadata={"help": "trained generator: GAN run folder, checkpoint folder or g_ema .safetensors",
                                     "positional": True})
    out: str = field(metadata={"help": "run folder (stages, logs) whose model/ is the rig"})
    samples: int = option(3000, "generated faces captured for the DFR")
    truncation: float = option(0.8, "truncation psi of sampled latents (data, RigNet training, seeds)")
    mixing: float = option(0.5, "probability a data sample mixes two latents at a random layer")
    dfr: str = option("image", "DFR kind: image (a CNN on the generated image, composed with the frozen generator) or "
                               "mlp (the paper's MLP on W+)", choices=("image", "mlp"))
    dfr_steps: int = option(6000, "DFR Adam steps")
    rig_steps: int = option(3000, "Adam steps per RigNet (an image DFR puts the generator in every step: ~1000)")
    batch_size: int = option(64, "captures per DFR step")
    rig_batch_size: int = option(64, "latent pairs per RigNet step")
    lr: float = option(1e-3, "Adam learning rate (DFR and RigNet)")
    modes: str = option(",".join(MODES), "RigNets to train: comma-separated of " + ", ".join(MODES))
    w_rec: float = option(LossWeights.rec, "L_rec weight (W+ units)")
    w_edit: float = option(LossWeights.edit, "L_edit weight (0: the no-L_edit ablation)")
    w_consist: float = option(LossWeights.consist, "L_consist weight (0: the no-L_consist ablation)")
    w_real: float = option(LossWeights.real, "realism weight: softplus(-D) of the GAN's discriminator on edited "
                                             "images (not in the paper; needs the GAN run or checkpoint folder)")
    w_identity: float = option(LossWeights.identity, "identity weight: squared distance between the face embeddings "
                                                     "of the edited and the source image, read by a network "
                                                     "distilled from dlib's on the captures (not in the paper; "
                                                     "needs --dfr image)")
    identity_samples: int = option(4000, "captured faces dlib embeds to distil the identity network from")
    identity_steps: int = option(2000, "identity network Adam steps")
    mode_weights: str = option("", "per-mode loss weights over the --w-* ones: MODE:TERM=W[,TERM=W][;MODE:...], "
                                   "e.g. 'expression:consist=0.2' (terms: rec, edit, consist, real, identity)")
    dfr_augment: bool = option(False, "image DFR: train it on shifted / scaled / blurred / noisy images and let RigNet "
                                      "see it only through such random transformations (expectation over "
                                      "transformation), so edits must change the face, not fool the DFR")
    target_spread: float = option(0.0, "RigNet edit targets moved past the other face's parameters by a factor "
                                        "up to 1 + S (uniform), for edits larger than random pairs of faces make")
    steered: int = option(0, "extra captured faces for the DFR: generated ones moved along the captures' own W+ "
                             "directions of yaw, pitch, smile, jaw opening and light, so that the DFR also knows the "
                             "edges of what the generator makes (where edits go)")
    edited: int = option(0, "extra captured faces for the DFR: generated ones edited by the rig of --edited-by "
                            "toward sampled pose, light and expression targets, so that the DFR learns what such "
                            "edits really do to the image where they fooled it (a round of adversarial training)")
    edited_by: str | None = option(None, "rig model folders (comma-separated: one per round) over the same generator "
                                         "whose edits --edited captures, N faces each")
    edit_targets: str = option("0", "fraction of RigNet targets that are the source's own parameters with a sampled "
                                    "edit (yaw +-35 deg, a light direction, a smile...) instead of the other face's "
                                    "(generated faces rarely differ by the edits people ask for): F for every "
                                    "RigNet, or MODE=F[,MODE=F] (others 0)")
    steering: bool = option(False, "train the steering baseline instead (delta p -> delta w, no w input)")
    relative: bool = option(False, "relative RigNets: w' = w + delta(w, target) - delta(w, source), so a pass asked for "
                                   "the source's own parameters is exact (L_rec is 0 by construction; not in the paper)")
    subspace: int = option(0, "RigNets write delta w in this many leading principal directions of the generator's W "
                              "(0: all of W; not in the paper), so edits move the face along directions the "
                              "generator's own faces vary in")
    reuse: str | None = option(None, "another run folder whose captures and DFR to use (ablations: same data, same DFR)")
    threads: int | None = option(None, "CPU threads (default: OMP_NUM_THREADS, else every usable core)")
    seed: int = option(0, "seed of the sampled latents and the networks")

    def __post_init__(self):
        for name in ("samples", "dfr_steps", "rig_steps", "batch_size", "rig_batch_size", "identity_samples",
                     "identity_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.steered < 0:
            raise ValueError(f"steered must be >= 0, not {self.steered}")
        if self.edited < 0:
            raise ValueError(f"edited must be >= 0, not {self.edited}")
        if (self.steered or self.edited) and self.reuse:
            raise ValueError("steered and edited faces are captured into the run's own data: not with --reuse")
        if bool(self.edited) != bool(self.edited_rigs):
            raise ValueError("--edited N and --edited-by MODEL go together")
        if not 0 < self.truncation <= 1 or not 0 <= self.mixing <= 1:
            raise ValueError("truncation must be in (0, 1] and mixing in [0, 1]")
        unknown = set(self.mode_list) - set(MODES)
        if unknown or not self.mode_list:
            raise ValueError(f"modes must be some of {', '.join(MODES)}, not {self.modes!r}")
        if self.subspace < 0:
            raise ValueError(f"subspace must be >= 0, not {self.subspace}")
        if self.steering and self.relative:
            raise ValueError("steering and relative are two different RigNets: choose one")
        if self.dfr_augment and self.dfr != "image":
            raise ValueError("dfr_augment is for the image DFR (--dfr image)")
        if min(self.w_rec, self.w_edit, self.w_consist, self.w_real, self.w_identity, self.target_spread) < 0:
            raise ValueError("loss weights and target_spread must be >= 0")
        for mode in MODES:
            self.edit_targets_for(mode)
        for mode in MODES:
            self.weights_for(mode)
        if self.identity_weighted and self.dfr != "image":
            raise ValueError("the identity loss reads the generated image: it needs --dfr image")

    @property
    def identity_weighted(self) -> bool:
        return any(self.weights_for(mode).identity for mode in self.mode_list)

    @property
    def edited_rigs(self) -> list[str]:
        return [d.strip() for d in (self.edited_by or "").split(",") if d.strip()]

    @property
    def mode_list(self) -> list[str]:
        return [m.strip() for m in self.modes.split(",") if m.strip()]

    def edit_targets_for(self, mode: str) -> float:
        """``mode``'s fraction of sampled-edit targets, from ``edit_targets``."""
        text, value = self.edit_targets.strip(), 0.0
        if "=" not in text:
            text = ",".join(f"{m}={text or 0}" for m in MODES)
        for item in text.split(","):
            name, _, number = item.partition("=")
            fraction = _number(number)
            if name.strip() not in MODES or not 0 <= fraction <= 1:
                raise ValueError(f"edit_targets: {item.strip()!r} in {self.edit_targets!r} is not MODE=F with MODE one of "
                                 f"{', '.join(MODES)} and F in [0, 1] (or one F for every mode)")
            if name.strip() == mode:
                value = fraction
        return value

    def weights_for(self, mode: str) -> LossWeights:
        """The loss weights of ``mode``'s RigNet: the --w-* ones with ``mode_weights``' overrides."""
        weights = LossWeights(self.w_rec, self.w_edit, self.w_consist, self.w_real, self.w_identity)
        for item in filter(None, (part.strip() for part in self.mode_weights.split(";"))):
            name, _, assignments = item.partition(":")
            name = name.strip()
            if name not in MODES:
                raise ValueError(f"mode_weights: unknown mode {name!r} in {item!r}")
            for assignment in assignments.split(","):
                term, _, value = assignment.partition("=")
                term = term.strip()
                number = _number(value)
                if term not in LossWeights.__dataclass_fields__ or not number >= 0 or math.isinf(number):
                    raise ValueError(f"mode_weights: {assignment.strip()!r} in {item!r} is not TERM=W with TERM one of "
                                     f"{', '.join(LossWeights.__dataclass_fields__)} and a finite W >= 0")
                if name == mode:
                    weights = replace(weights, **{term: number})
        return weights


def _number(text: str) -> float:
    """A float from an option's text; NaN (which every range check refuses) when it is not one."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def sample_latents(generator, n: int, gen: torch.Generator, truncation: float, latent_avg: torch.Tensor,
                   mixing: float = 0.0) -> torch.Tensor:
    """(n, n_latent, style_dim) truncated W+ latents; with probability ``mixing`` two w split at a random layer."""
    w = generator.style(torch.randn(2 * n, generator.style_dim, generator=gen))
    w = latent_avg + truncation * (w - latent_avg)
    a, b = w[:n, None].repeat(1, generator.n_latent, 1), w[n:, None]
    cut = torch.randint(1, generator.n_latent, (n,), generator=gen)
    mixed = torch.rand(n, generator=gen) < mixing
    layer = torch.arange(generator.n_latent)
    take_b = (mixed[:, None] & (layer[None] >= cut[:, None]))[..., None]
    return torch.where(take_b, b.expand_as(a), a)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B,3,S,S) in [-1,1] -> (B,S,S,3) uint8."""
    return ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def crop_frame(transform: np.ndarray, image_size: int, upsampled: int) -> np.ndarray:
    """Where the FFHQ crop (unit square) lies in the generated image: (centre x, centre y, side), in units of
    the image side, from capture's aligned <- upsampled-image transform."""
    to_aligned = transform @ np.diag([upsampled / image_size, upsampled / image_size, 1.0])
    back = np.linalg.inv(to_aligned)
    centre = back[:2, :2] @ np.array([upsampled / 2, upsampled / 2]) + back[:2, 2]
    side = np.linalg.norm(back[:2, 0]) * upsampled
    return np.array([centre[0] / image_size, centre[1] / image_size, side / image_size])


class RigTrainer:
    def __init__(self, cfg: RigTrainConfig):
        from facerig.face3d import load_model
        from facerig.stylerig.gan_train import load_discriminator, load_generator, truncation_centre

        self.cfg = cfg
        self.threads = runtime.configure_threads(cfg.threads)
        self.out = writable_folder(cfg.out)
        source = Path(cfg.reuse) if cfg.reuse else self.out
        if cfg.reuse and not (source / "data").is_dir():
            raise FileNotFoundError(f"{source}: no data/ to reuse")
        # Another run's captures, and its DFR when it trained one of this kind.
        name = f"dfr_{cfg.dfr}{'_eot' if cfg.dfr_augment else ''}.safetensors"
        self.data_dir = source / "data"
        self.dfr_path = source / name if (source / name).exists() else self.out / name
        self.generator = load_generator(cfg.generator).requires_grad_(False)
        self.discriminator = None
        if any(cfg.weights_for(mode).real for mode in cfg.mode_list):  # before any work: it may be missing
            self.discriminator = load_discriminator(cfg.generator).requires_grad_(False)
        self.latent_avg = truncation_centre(self.generator)
        self.face = load_model()
        self.space = ParamSpace(field_sizes(self.face))
        self.template = self.face.default_params(1)
        self.distance = FaceDistance(self.face)
        self.precision = runtime.resolve_precision("auto", "cpu")
        self.edit_rigs = [self.load_edit_rig(d) for d in cfg.edited_rigs]  # before any work: they may not fit
        self._check_settings()

    def _check_settings(self) -> None:
        """A run continues only with the settings that made its finished stages (threads aside)."""
        import json

        path, now = self.out / "config.json", asdict(self.cfg)
        if path.exists():
            # A setting added after the run was made counts as its default.
            before = {**{f.name: f.default for f in fields(self.cfg) if f.default is not MISSING},
                      **json.loads(path.read_text())}
            changed = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in now.items() if k != "threads" and before.get(k) != v]
            if changed:
                raise ValueError(f"{self.out} was made with other settings ({'; '.join(changed)}); use a new --out")
        else:
            atomic_write_json(path, now)

    # ---- stage 1: captured samples ----
    def build_data(self) -> dict[str, torch.Tensor]:
        from facerig.capture.photo import PhotoCapture
        from facerig.edit.spec import CAPTURE_SIZE

        cfg, folder = self.cfg, self.data_dir
        folder.mkdir(exist_ok=True)
        capture = PhotoCapture(self.face, "cpu", CAPTURE_SIZE)

        def capture_chunks(prefix: str, total: int, seed: int, move=None) -> list[dict[str, torch.Tensor]]:
            n_chunks = math.ceil(total / CHUNK)
            for index in tqdm(range(n_chunks), desc=f"capturing generated faces ({prefix})"):
                path = folder / f"{prefix}_{index:04d}.safetensors"
                if path.exists():
                    continue
                gen = torch.Generator().manual_seed(seed + index)
                n = min(CHUNK, total - index * CHUNK)
                with torch.no_grad():
                    w_plus = sample_latents(self.generator, n, gen, cfg.truncation, self.latent_avg, cfg.mixing)
                    w_plus = move(w_plus, gen) if move else w_plus
                images = to_uint8(render_latents(self.generator, w_plus))
                items, found, fit = capture.many(images)
                found = torch.from_numpy(found)
                tensors = {"w_plus": w_plus[found].contiguous(), "found": found}
                if fit is not None:
                    tensors.update({f"params.{k}": v.detach().float().contiguous() for k, v in fit.params.to_dict().items()})
                    tensors["landmark_error"] = fit.landmark_error.detach()
                    tensors["frame"] = torch.tensor(np.stack([crop_frame(it.transform, images.shape[1], CAPTURE_SIZE)
                                                              for it in items]), dtype=torch.float32)
                atomic_save_safetensors(tensors, path)
            return [read_tensors(folder / f"{prefix}_{i:04d}.safetensors")[0] for i in range(n_chunks)]

        def merged(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            keys = dict.fromkeys(k for c in chunks for k in c)  # a chunk where dlib found no face has no fit
            return {key: torch.cat([c[key] for c in chunks if key in c]) for key in keys}

        data = merged(capture_chunks("chunk", cfg.samples, cfg.seed * 1_000_003))
        if int(data["found"].sum()) < MIN_FACES:
            raise ValueError(f"{cfg.generator}: dlib found a face in only {int(data['found'].sum())} of "
                             f"{data['found'].numel()} generated samples (need {MIN_FACES}); train the generator longer")
        extra = {}
        if cfg.steered:
            directions = attribute_directions(self.face, data)

            def move(w_plus: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
                which = torch.randint(len(directions), (len(w_plus),), generator=gen)
                amount = STEER_SPAN * (2 * torch.rand(len(w_plus), 1, 1, generator=gen) - 1)
                return w_plus + amount * directions[which]

            extra["steered"] = merged(capture_chunks("steered", cfg.steered, cfg.seed * 1_000_003 + 500_009, move))
        for k, rig in enumerate(self.edit_rigs):
            prefix = "edited" if k == 0 else f"edited{k + 1}"
            extra[prefix] = merged(capture_chunks(prefix, cfg.edited, cfg.seed * 1_000_003 + 700_001 + 10_007 * k,
                                                  self.rig_edits(rig)))
        # The DFR trains on all; the face rate, landmark error and framing stay the natural samples'.
        found: dict[str, list[torch.Tensor]] = {}  # per kind: "steered", "edited" (every rig's)
        for prefix, faces in extra.items():
            for key in faces:
                if key == "w_plus" or key.startswith("params."):
                    data[key] = torch.cat([data[key], faces[key]])
            found.setdefault(prefix.rstrip("0123456789"), []).append(faces["found"])
        data.update({f"{kind}_found": torch.cat(parts) for kind, parts in found.items()})
        return data

    def load_edit_rig(self, model_dir: str):
        """The rig in ``model_dir`` whose edits ``edited`` captures; it must be built over this run's generator
        and have a pose, light or expression RigNet."""
        from facerig.stylerig.model import StyleRigModel

        rig = StyleRigModel.from_pretrained(model_dir)
        mine, theirs = self.generator.state_dict(), rig.generator.state_dict()
        if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k].to(mine[k].dtype)) for k in mine):
            raise ValueError(f"{model_dir}: that rig was built over another generator than {self.cfg.generator}")
        if not {"pose", "light", "expression"} & set(rig.rignets):
            raise ValueError(f"{model_dir}: that rig has no pose, light or expression RigNet")
        return rig

    def rig_edits(self, rig):
        """``(w_plus, gen) -> edited w_plus``: each latent edited by ``rig`` with one of its pose / light /
        expression RigNets, toward the DFR's parameters of it with a sampled edit of that mode's fields
        (``TargetSampler.sample_edits``)."""
        modes = [m for m in ("pose", "light", "expression") if m in rig.rignets]

        def edit(w_plus: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            which, out = torch.randint(len(modes), (len(w_plus),), generator=gen), w_plus.clone()
            for i, mode in enumerate(modes):
                index = torch.nonzero(which == i).flatten()
                if len(index):
                    source = rig.face_params(w_plus[index], self.template)
                    target = TargetSampler(self.face, rig.space, self.template, mode, 1.0, generator=gen).sample_edits(source)
                    out[index] = rig.rig(w_plus[index], target, MODES[mode])[0]
            return out

        return edit

    # ---- stage 2: DFR ----
    def train_dfr(self, data: dict[str, torch.Tensor]) -> DFR:
        from facerig.face3d import FaceParams

        cfg, path = self.cfg, self.dfr_path
        params = FaceParams(**{k: data[f"params.{k}"] for k in FaceParams.field_names()})
        raw = torch.cat([getattr(params, k).reshape(params.batch_size, -1) for k in self.space.sizes], 1)
        n = raw.shape[0]
        gen = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(n, generator=gen)
        n_val = max(1, int(n * HOLDOUT))
        val, train = order[:n_val], order[n_val:]
        torch.manual_seed(cfg.seed)
        g = self.generator
        dfr = DFR(g.n_latent, g.style_dim, self.space.dim) if cfg.dfr == "mlp" else ImageDFR(g.size, self.space.dim)
        if path.exists():
            state, _ = read_tensors(path)
            dfr.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("dfr.")})
            self.space.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("space.")})
            return dfr.eval().requires_grad_(False)
        self.space.mean.copy_(raw[train].mean(0))
        self.space.std.copy_(raw[train].std(0).clamp_min(1e-3))
        target = self.space.encode(params)
        if cfg.dfr == "mlp":
            inputs = data["w_plus"]
        else:  # the images the latents render (fixed noise), computed once
            with torch.no_grad():
                inputs = torch.cat([render_latents(g, w) for w in data["w_plus"].split(256)])
        truth_val = params[val]

        def losses(pred: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rendered = self.distance(self.space.decode(pred, self.template), self.space.decode(target[index], self.template))
            return rendered.mean(), (pred - target[index]).pow(2).mean()

        def train_losses() -> dict[str, torch.Tensor]:
            batch = train[torch.randint(len(train), (cfg.batch_size,), generator=gen)]
            x = inputs[batch]
            return dict(zip(("render", "l2"), losses(dfr(geometric_blur_noise(x, gen) if cfg.dfr_augment else x), batch)))

        # A few thousand captures for a 1M-parameter network: weight decay, and the best held-out weights.
        log = fit_keeping_best(dfr, cfg.dfr_steps, cfg.lr, train_losses, lambda: float(losses(dfr(inputs[val]), val)[0]),
                               "heldout_render", "DFR")
        with torch.no_grad():
            pred = self.space.decode(dfr(inputs[val]), self.template)
        report = {"train_samples": len(train), "heldout_samples": n_val, "log": log,
                  "heldout_error": dfr_error(pred, truth_val),
                  "heldout_render_distance": float(self.distance(pred, truth_val).mean())}
        atomic_write_json(self.dfr_path.with_suffix(".json"), report)
        atomic_save_safetensors({**{f"dfr.{k}": v for k, v in dfr.state_dict().items()},
                                 "space.mean": self.space.mean, "space.std": self.space.std}, path)
        return dfr

    # ---- stage 2b: identity network ----
    def identity_embeddings(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """dlib's embeddings of a fixed random subset of the captured latents (natural and edited alike):
        (index into ``data["w_plus"]``, (N,128) embedding) of the faces dlib found, resumable per chunk."""
        from facerig.eval.identity import analyze_face

        cfg, folder = self.cfg, self.out / "identity"
        folder.mkdir(exist_ok=True)
        latents = data["w_plus"]
        order = torch.randperm(len(latents), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.identity_samples]
        chunks = []
        for i, start in enumerate(tqdm(range(0, len(order), CHUNK), desc="embedding captured faces (dlib)")):
            path = folder / f"embed_{i:04d}.safetensors"
            if not path.exists():
                index = order[start:start + CHUNK]
                with torch.no_grad():
                    images = to_uint8(render_latents(self.generator, latents[index]))
                embeddings = [analyze_face(image).embedding for image in images]
                found = torch.tensor([e is not None for e in embeddings])
                vectors = [torch.from_numpy(e).float() for e in embeddings if e is not None]
                atomic_save_safetensors({"index": index[found].contiguous(), "embedding": torch.stack(vectors) if vectors
                                         else torch.zeros(0, IDENTITY_DIM)}, path)
            chunks.append(read_tensors(path)[0])
        return torch.cat([c["index"] for c in chunks]), torch.cat([c["embedding"] for c in chunks])

    def train_identity(self, data: dict[str, torch.Tensor]) -> ImageDFR:
        """Generated image -> dlib's embedding, regressed on ``identity_embeddings`` (squared distance; the
        weights that did best on held-out faces are kept). dlib itself cannot pass a gradient; this can."""
        cfg, path, g = self.cfg, self.out / "identity_net.safetensors", self.generator
        torch.manual_seed(cfg.seed)
        net = ImageDFR(g.size, IDENTITY_DIM)
        if path.exists():
            net.load_state_dict(read_tensors(path)[0])
            return net.eval().requires_grad_(False)
        index, target = self.identity_embeddings(data)
        if len(index) < MIN_FACES:
            raise ValueError(f"{self.out}: dlib embedded only {len(index)} captured faces (need {MIN_FACES})")
        with torch.no_grad():
            images = torch.cat([render_latents(g, w) for w in data["w_plus"][index].split(256)])
        gen = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(index), generator=gen)
        n_val = max(2, int(len(index) * HOLDOUT))
        val, train = order[:n_val], order[n_val:]
        squared = lambda index: (net(images[index]) - target[index]).pow(2).sum(1).mean()  # noqa: E731
        log = fit_keeping_best(
            net, cfg.identity_steps, cfg.lr,
            lambda: {"loss": squared(train[torch.randint(len(train), (cfg.batch_size,), generator=gen)])},
            lambda: float(squared(val)), "heldout", "identity network")
        with torch.no_grad():
            pred = net(images[val])
        truth = target[val]
        # Held-out faces paired with their neighbours in the list: is a distance read as dlib reads it?
        pair = lambda x: (x - x.roll(1, 0)).norm(dim=1)  # noqa: E731
        report = {"train_faces": len(train), "heldout_faces": n_val, "log": log,
                  "heldout_median_error": float((pred - truth).norm(dim=1).median()),
                  "heldout_pair_distance_median": float(pair(truth).median()),
                  "heldout_pair_distance_correlation": float(torch.corrcoef(torch.stack([pair(pred), pair(truth)]))[0, 1])}
        atomic_write_json(path.with_suffix(".json"), report)
        atomic_save_safetensors(net.state_dict(), path)
        return net

    # ---- stage 3: RigNets ----
    def latent_dfr(self, dfr: DFR | ImageDFR, identity: ImageDFR | None = None):
        """W+ -> normalised parameters: the MLP itself, or the image DFR over the frozen generator (bf16 where
        the CPU computes it; with ``dfr_augment`` through a fresh random transformation per call), through
        which RigNet's gradient then runs. With ``identity``, its embedding of the same image follows the
        parameters (one generator pass for both)."""
        if isinstance(dfr, DFR):
            return dfr

        def through_generator(w_plus: torch.Tensor) -> torch.Tensor:
            with runtime.autocast("cpu", self.precision):
                images = render_latents(self.generator, w_plus)
                images = geometric_blur_noise(images) if self.cfg.dfr_augment else images
                read = dfr(images)
                if identity is not None:
                    read = torch.cat([read, identity(images)], 1)
                return read.float()

        return through_generator

    def realism(self, w_plus: torch.Tensor) -> torch.Tensor:
        """Per-item softplus(-D(G(w))) with the discriminator trained beside the generator."""
        with runtime.autocast("cpu", self.precision):
            return F.softplus(-self.discriminator(render_latents(self.generator, w_plus)).float()).flatten()

    def train_rignet(self, dfr: DFR | ImageDFR, mode: str, identity: ImageDFR | None = None) -> RigNet:
        cfg = self.cfg
        path = self.out / f"rignet_{mode}.safetensors"
        n_params = sum(s.stop - s.start for s in self.space.slices(MODES[mode]))
        torch.manual_seed(cfg.seed)
        rignet = RigNet(self.generator.n_latent, self.generator.style_dim, n_params, steering=cfg.steering,
                        relative=cfg.relative, subspace=cfg.subspace)
        if path.exists():
            state, _ = read_tensors(path)
            rignet.load_state_dict(state)
            return rignet.eval()
        if cfg.subspace:
            rignet.basis.copy_(principal_directions(self.generator, cfg.subspace))
        gen = torch.Generator().manual_seed(cfg.seed + 1 + list(MODES).index(mode))
        weights = cfg.weights_for(mode)
        latent_dfr = self.latent_dfr(dfr, identity if weights.identity else None)
        realism = self.realism if weights.real else None
        edits, targets = cfg.edit_targets_for(mode), None
        if edits or cfg.target_spread:
            targets = TargetSampler(self.face, self.space, self.template, mode, edits, cfg.target_spread, gen)
        opt = torch.optim.Adam(rignet.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.rig_steps)
        log, bar = [], tqdm(range(cfg.rig_steps), desc=f"RigNet {mode}")
        for step in bar:
            with torch.no_grad():
                w = sample_latents(self.generator, cfg.rig_batch_size, gen, cfg.truncation, self.latent_avg, cfg.mixing)
                v = sample_latents(self.generator, cfg.rig_batch_size, gen, cfg.truncation, self.latent_avg, cfg.mixing)
            losses = rignet_losses(rignet, latent_dfr, self.space, self.distance, self.template, w, v, mode,
                                   weights, realism, targets)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            sched.step()
            if step % 100 == 0 or step == cfg.rig_steps - 1:
                entry = {"step": step, **{k: float(v.detach()) for k, v in losses.items()}}
                if not math.isfinite(entry["total"]):
                    raise FloatingPointError(f"RigNet {mode}: non-finite loss at step {step}")
                log.append(entry)
                bar.set_postfix(edit=f"{entry['edit']:.2f}", consist=f"{entry['consist']:.2f}", rec=f"{entry['rec']:.4f}",
                                real=f"{entry['real']:.3f}", identity=f"{entry['identity']:.3f}")
        atomic_write_json(self.out / f"rignet_{mode}.json", {"log": log})
        rignet.eval()
        atomic_save_safetensors(rignet.state_dict(), path)
        return rignet

    def run(self) -> Path:
        from facerig.stylerig.model import StyleRigModel

        start = time.time()
        data = self.build_data()
        found = data["found"]
        dfr = self.train_dfr(data)
        identity = self.train_identity(data) if self.cfg.identity_weighted else None
        rignets = {mode: self.train_rignet(dfr, mode, identity) for mode in self.cfg.mode_list}
        frame = data["frame"].median(0).values.tolist()
        model = StyleRigModel.build(self.generator, self.latent_avg, dfr, self.space, rignets, self.cfg.truncation, frame)
        folder = model.save_pretrained(self.out / "model")
        atomic_write_json(self.out / "summary.json", {
            "samples": int(found.numel()), "faces_found": int(found.sum()), "face_rate": float(found.float().mean()),
            "median_landmark_error_px": float(data["landmark_error"].median()), "frame": frame,
            **{k: v for prefix in ("steered", "edited") if f"{prefix}_found" in data
               for k, v in ((prefix, int(data[f"{prefix}_found"].numel())),
                            (f"{prefix}_faces_found", int(data[f"{prefix}_found"].sum())))},
            "seconds_this_run": round(time.time() - start, 1), "threads": self.threads,
        })
        return folder


def fit_keeping_best(net: torch.nn.Module, steps: int, lr: float, losses: Callable[[], dict[str, torch.Tensor]],
                     heldout: Callable[[], float], heldout_key: str, desc: str) -> list[dict]:
    """AdamW with weight decay and a cosine schedule on the sum of ``losses()`` (a fresh batch per call),
    scored by ``heldout()`` every ``DFR_VALIDATE_EVERY`` steps; ``net`` ends frozen with the weights that
    scored best there. Returns the log (the losses and ``heldout_key`` per validation)."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=DFR_WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    log, best, best_state = [], math.inf, None
    bar = tqdm(range(steps), desc=desc)
    for step in bar:
        terms = losses()
        opt.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        opt.step()
        sched.step()
        if step % DFR_VALIDATE_EVERY == 0 or step == steps - 1:
            with torch.no_grad():
                score = heldout()
            log.append({"step": step, **{k: float(v.detach()) for k, v in terms.items()}, heldout_key: score})
            if score < best:
                best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
            bar.set_postfix({k: f"{v:.3f}" for k, v in log[-1].items() if k != "step"})
    net.load_state_dict(best_state)
    net.eval().requires_grad_(False)
    return log


def attribute_directions(face, data: dict[str, torch.Tensor]) -> torch.Tensor:
    """(K, n_latent, style_dim) W+ directions of yaw, pitch, smile, jaw opening and the light's direction (x,
    y) in captured generated faces: the mean W+ of the top tenth minus that of the bottom tenth (class means,
    as InterFaceGAN's boundaries but without a classifier), so a step of 1 moves a face by about the spread
    of its attribute among the generator's samples."""
    euler = axis_angle_to_euler(data["params.rotation"])
    expression, light = data["params.expression"], dominant_direction(data["params.light"])
    names = face.expression_names
    smile = [face.expression_index(n) for n in ("mouthSmile_L", "mouthSmile_R") if n in names]
    attributes = [euler[:, 0], euler[:, 1], light[:, 0], light[:, 1]]
    if smile:
        attributes.append(expression[:, smile].mean(1))
    if "jawOpen" in names:
        attributes.append(expression[:, face.expression_index("jawOpen")])
    w = data["w_plus"]
    out = []
    for a in attributes:
        low, high = a.quantile(0.1), a.quantile(0.9)
        out.append(w[a >= high].mean(0) - w[a <= low].mean(0))
    return torch.stack(out)


def dfr_error(predicted, captured) -> dict[str, float]:
    """Median held-out DFR error against capture, in ``facerig eval``'s units (light and expression RMSE,
    pose RMSE and geodesic degrees)."""
    from facerig.eval.edit_accuracy import param_errors

    errors = param_errors({k: getattr(predicted, k) for k in ("light", "expression", "rotation")},
                          {k: getattr(captured, k) for k in ("light", "expression", "rotation")})
    return {k: float(v.median()) for k, v in errors.items()}


def train(cfg: RigTrainConfig) -> Path:
    return RigTrainer(cfg).run()

