"""Train a StyleGAN2 (``stylegan2.Generator`` / ``Discriminator``) on aligned face crops: ``facerig gan train``.

The recipe is rosinality's ``train.py`` (itself StyleGAN2 config-f): non-saturating logistic loss, Adam with
betas (0, 0.99), lazy R1 on D every ``r1_every`` steps, style mixing, optional lazy path-length
regularisation, an EMA generator (G_ema); plus DiffAugment on everything D sees, because face data sets
here are small (thousands, not FFHQ's 70k). Defaults are sized for a CPU: 64 px, 2.3M-parameter G.

Data: a ``facerig capture`` folder (its aligned crops) or a folder of PNG/JPG images (centre square crop),
resized to ``size`` and held in memory as uint8 (``gan_data``); each step draws a batch uniformly with
replacement.

The run folder, resume rule, step loop and cadences, Ctrl-C and the common options are ``facerig.training``'s.
Exact resumption as in ``facerig.diffusion.train``: G, D, G_ema, both optimizers, the path-length mean and
every RNG (the global one that drives noise injection, a device generator for z / batches / augmentation, a
host generator for style-mixing decisions) are checkpointed atomically; a run killed and resumed on CPU ends
bit-identical to an uninterrupted one (same thread count). R1 and path length are always fp32, whatever
``--precision``. Run folder::

    RUN/latest.json, RUN/config.json, RUN/log.jsonl, RUN/samples/step_NNNNNNNN.png
    RUN/checkpoints/step_NNNNNNNN/{generator,g_ema,discriminator}.safetensors  (config + step in metadata)
                                  trainer.safetensors + trainer.json, rng.safetensors

``generator_io.load_generator`` reads a G_ema (or G) file, checkpoint or run folder; ``export_rosinality`` writes it as a
rosinality ``.pt`` for ``rosinality.load_rosinality``.
"""

from __future__ import annotations

import copy
import io
import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from facerig import runtime
from facerig.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_json, contact_sheet, to_uint8_image
from facerig.stylerig.augment import POLICY, diff_augment, parse_policy
from facerig.stylerig.gan_data import load_images
from facerig.stylerig.generator_io import (  # noqa: F401 (load_generator, truncation_centre: read from here too)
    G_EMA_FILE, G_FILE, GENERATOR_FORMAT, generator_file, latest_checkpoint, load_generator, load_network,
    truncation_centre,
)
from facerig.stylerig.stylegan2 import Discriminator, Generator
from facerig.training import (
    LATEST_FILE, RunFolder, StepOptions, changed_settings, optimizer_state_from_files, optimizer_state_to_files,
    option, redefault, rng_state, set_rng_state,
)
from facerig.training.hardware import setup_hardware
from facerig.training.loop import train_steps
from facerig.weights import load_state_dict_checked, read_tensors, save_weights

DISCRIMINATOR_FORMAT = "facerig-stylegan2-discriminator"
D_FILE = "discriminator.safetensors"
# Settings a resumed run must share with its checkpoint: they define the model, its data and its randomness.
RESUME_FIXED = ("data", "frame", "size", "seed", "channel_base", "channel_max", "style_dim", "n_mlp", "mirror")
SAMPLE_ROWS, SAMPLE_COLS = 4, 8


@dataclass(kw_only=True)
class GanTrainConfig(StepOptions):
    """The GAN's own settings; the run options (out, seed, device, precision, threads, resume, steps and
    cadences) are ``StepOptions``'s."""

    data: str = field(metadata={"help": "facerig capture dataset folder (its aligned crops) or a folder of "
                                        "PNG/JPG images (centre square crop)"})
    size: int = option(64, "image size (a power of 2, >= 8)")
    frame: str = option("0.5,0.5,1", "'CX,CY,SIDE': the part of each image's centre square the generator sees, as "
                                     "a StyleRig model's frame (generated pixel g, in unit coordinates, shows the "
                                     "square's (g - C) / SIDE + 0.5); to fine-tune a generator on data framed like "
                                     "another's, pass that model's config.json frame")
    channel_base: int = option(2048, "channels at resolution r: min(channel_base // r, channel_max), for G and D")
    channel_max: int = option(256, "the largest channel count")
    style_dim: int = option(256, "z and w dimension")
    n_mlp: int = option(4, "mapping network layers")
    steps: int = redefault(StepOptions, "steps", 20_000)  # one D and one G step each
    batch_size: int = option(16, "images per step (below 4, or a multiple of 4: D's minibatch-stddev groups)")
    lr: float = option(0.002, "Adam learning rate (scaled for lazy regularisation)")
    r1: float | None = option(None, "R1 gamma (default StyleGAN2-ADA's heuristic 0.0002 * size^2 / batch_size)")
    r1_every: int = option(16, "D steps between lazy R1 penalties")
    path_regularize: float = option(0.0, "path-length regularisation weight (rosinality: 2; 0: off)")
    path_every: int = option(4, "G steps between lazy path-length penalties")
    mixing: float = option(0.9, "style-mixing probability")
    ema_kimg: float = option(10.0, "G_ema half-life in thousands of images (rosinality's 0.5 ** (32 / 10000))")
    augment: str = option(POLICY, "DiffAugment policy for real and fake images before D ('' = none)")
    mirror: bool = option(False, "flip real images horizontally at random")
    log_every: int = redefault(StepOptions, "log_every", 50)
    ckpt_every: int = redefault(StepOptions, "ckpt_every", 2000)
    init_from: str | None = option(None, "a GAN run or checkpoint folder whose G, G_ema and D start this run "
                                         "(fine-tuning on other data; optimizers, step and schedule start afresh)")

    def __post_init__(self):
        super().__post_init__()
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of 2 >= 8, not {self.size}")
        for name in ("batch_size", "r1_every", "path_every", "style_dim", "n_mlp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.batch_size % min(self.batch_size, 4):
            raise ValueError(f"batch_size must be below 4 or a multiple of 4, not {self.batch_size}")
        if min(self.channels.values()) < 1:
            raise ValueError(f"channel_base {self.channel_base} leaves no channels at {self.size} px")
        if not 0 <= self.mixing <= 1:
            raise ValueError(f"mixing must be in [0,1], not {self.mixing}")
        for name in ("lr", "ema_kimg"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number, not {getattr(self, name)}")
        if self.r1_gamma < 0 or self.path_regularize < 0:
            raise ValueError("r1 and path_regularize must be >= 0")
        parse_policy(self.augment)
        self.frame_box  # raises on a bad --frame

    @property
    def frame_box(self) -> tuple[float, float, float, float]:
        """The --frame as a box (left, top, right, bottom) in unit coordinates of the centre square."""
        try:
            cx, cy, side = (float(v) for v in self.frame.split(","))
        except ValueError:
            raise ValueError(f"frame must be 'CX,CY,SIDE' (three numbers), not {self.frame!r}") from None
        if not (math.isfinite(cx) and math.isfinite(cy) and math.isfinite(side) and side > 0):
            raise ValueError(f"frame needs finite numbers and SIDE > 0, not {self.frame!r}")
        box = (0.5 - cx / side, 0.5 - cy / side, 0.5 + (1 - cx) / side, 0.5 + (1 - cy) / side)
        if min(box) < 0 or max(box) > 1:
            raise ValueError(f"frame {self.frame!r} reaches outside the image (box {tuple(round(v, 3) for v in box)})")
        return box

    @property
    def channels(self) -> dict[int, int]:
        return {2**i: min(self.channel_base // 2**i, self.channel_max) for i in range(2, int(math.log2(self.size)) + 1)}

    @property
    def r1_gamma(self) -> float:
        return self.r1 if self.r1 is not None else 0.0002 * self.size**2 / self.batch_size

    @property
    def ema_decay(self) -> float:
        return 0.5 ** (self.batch_size / (self.ema_kimg * 1000))

    def generator_config(self) -> dict:
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp, "channels": self.channels}


# ---- losses ----

def r1_penalty(discriminator: nn.Module, real: Tensor, augment: Callable[[Tensor], Tensor]) -> Tensor:
    """E ||d D(augment(x)) / dx||^2 over real images, always in fp32: bf16 gradients of gradients are too coarse
    for a penalty that keeps D's slope near the data small (autocast is switched off inside)."""
    with torch.autocast(real.device.type, enabled=False):
        real = real.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(discriminator(augment(real)).sum(), real, create_graph=True)
        return grad.square().flatten(1).sum(1).mean()


class GanTrainer:
    """One training run (a ``facerig.training.loop.StepTrainer``); ``run()`` trains to ``cfg.steps`` and
    returns the final checkpoint folder."""

    STATS = ("d_loss", "g_loss", "real_score", "fake_score", "r1", "path_length_mean")

    def __init__(self, cfg: GanTrainConfig):
        self.cfg = cfg
        hw = setup_hardware(cfg.device, cfg.precision, cfg.threads)
        self.device, self.precision = hw.device, hw.precision
        self.memory_format = runtime.memory_format(self.precision)
        self.folder = RunFolder(cfg.out, "gan train")
        resume_dir = self.folder.resume_from(cfg.resume)
        self.images = load_images(cfg.data, cfg.size, cfg.frame_box).to(self.device)
        if resume_dir is not None:
            self._check_resume_settings(resume_dir)

        torch.manual_seed(cfg.seed)
        self.g = Generator(**cfg.generator_config()).to(self.device)
        self.d = Discriminator(cfg.size, channels=cfg.channels).to(self.device)
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        self._ema_pairs = (list(self.g_ema.parameters()), list(self.g.parameters()))
        # Lazy regularisation: a penalty every k steps replaces one every step, so Adam's lr and betas are
        # scaled by k/(k+1) to keep the same effective schedule (StyleGAN2 appendix B). G is only lazily
        # regularised with path length on.
        self.g_ratio = cfg.path_every / (cfg.path_every + 1) if cfg.path_regularize > 0 else 1.0
        self.d_ratio = cfg.r1_every / (cfg.r1_every + 1)
        self.g_opt = torch.optim.Adam(self.g.parameters(), **self._adam(self.g_ratio), fused=True)
        self.d_opt = torch.optim.Adam(self.d.parameters(), **self._adam(self.d_ratio), fused=True)

        # Noise injection draws from the global RNG; z, batches and augmentation from ``gen`` (on the device);
        # style-mixing decisions from ``host_gen``, so they need no device sync.
        torch.manual_seed(cfg.seed * 1_000_003)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed * 1_000_003 + 1)
        self.host_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 2)
        self.fixed_z = torch.randn(SAMPLE_ROWS * SAMPLE_COLS, cfg.style_dim,
                                   generator=torch.Generator().manual_seed(cfg.seed)).to(self.device)
        self.pl_mean = torch.zeros((), device=self.device)
        self.r1_last = torch.zeros((), device=self.device)
        self.step = 0
        if resume_dir is not None:
            self._load(resume_dir)
        else:
            if cfg.init_from:
                self._load_networks(_init_checkpoint(cfg.init_from))
            self.folder.start({"train": asdict(cfg), "generator": cfg.generator_config(), "images": len(self.images)})

    def _adam(self, ratio: float) -> dict:
        return {"lr": self.cfg.lr * ratio, "betas": (0.0, 0.99**ratio)}

    # -- resumption --

    def _check_resume_settings(self, ckdir: Path) -> None:
        """Refuse to resume with a setting that defines the run changed; the others apply from here on."""
        meta = self.folder.trainer_state(ckdir)
        changed = changed_settings(meta["train_config"], self.cfg, RESUME_FIXED)
        if meta["images"] != len(self.images):
            changed.append(f"{meta['images']} -> {len(self.images)} images")
        self.folder.refuse_changes(ckdir, changed)

    def _load_networks(self, ckdir: Path) -> None:
        for model, name in ((self.g, G_FILE), (self.g_ema, G_EMA_FILE), (self.d, D_FILE)):
            state, _ = read_tensors(ckdir / name)
            load_state_dict_checked(model, state, str(ckdir / name))

    def _load(self, ckdir: Path) -> None:
        self._load_networks(ckdir)
        meta = self.folder.trainer_state(ckdir)
        tensors, _ = read_tensors(ckdir / "trainer.safetensors")
        for opt, key, ratio in ((self.g_opt, "g", self.g_ratio), (self.d_opt, "d", self.d_ratio)):
            own = {k.removeprefix(key + "."): v for k, v in tensors.items() if k.startswith(key + ".")}
            opt.load_state_dict(optimizer_state_from_files(own, meta[f"{key}_optimizer"]))
            for group in opt.param_groups:  # lr and regularisation intervals may change on resume
                group.update(self._adam(ratio))
        self.step = meta["step"]
        self.pl_mean.fill_(meta["pl_mean"])
        self.r1_last.fill_(meta["r1"])
        rng, _ = read_tensors(ckdir / "rng.safetensors")
        set_rng_state(rng, self.gen, self.device)
        self.host_gen.set_state(rng["host_generator"])
        self.folder.truncate_logs(self.step)

    # -- the loop (facerig.training.loop) --

    def run(self) -> Path:
        last = train_steps(self, self.cfg, "gan", shown=("d_loss", "g_loss"))
        return last if last is not None else self.folder.latest()

    def batches(self):
        return itertools.repeat(None)  # each step draws its own reals and latents (in train_step's order)

    def log_fields(self) -> dict:
        return {}

    def hooks(self) -> list:
        return [(self.cfg.sample_every, self._sample_grid)]

    def _latents(self, n: int) -> tuple[list[Tensor], int | None]:
        """One z per image, or (with probability ``mixing``) two and the layer where the second takes over."""
        mix = float(torch.rand((), generator=self.host_gen)) < self.cfg.mixing
        z = torch.randn(2 if mix else 1, n, self.cfg.style_dim, generator=self.gen, device=self.device)
        inject = int(torch.randint(1, self.g.n_latent, (), generator=self.host_gen)) if mix else None
        return list(z.unbind(0)), inject

    def _reals(self) -> Tensor:
        b = self.cfg.batch_size
        x = self.images[torch.randint(len(self.images), (b,), generator=self.gen, device=self.device)].float() / 127.5 - 1
        if self.cfg.mirror:
            x = torch.where(torch.rand(b, 1, 1, 1, generator=self.gen, device=self.device) < 0.5, x.flip(3), x)
        return x

    def _augment(self, x: Tensor) -> Tensor:
        return diff_augment(x, self.cfg.augment, self.gen).contiguous(memory_format=self.memory_format)

    def train_step(self, _batch: None) -> Tensor:
        """One D step (+ R1 every ``r1_every``), one G step (+ path length every ``path_every``), the EMA;
        returns [d_loss, g_loss, D(real), D(fake), last R1, path-length mean] as a device tensor (no host sync)."""
        cfg, b = self.cfg, self.cfg.batch_size
        real = self._reals()

        self.g.requires_grad_(False)
        self.d.requires_grad_(True)
        styles, inject = self._latents(b)
        with runtime.autocast(self.device, self.precision):
            fake, _ = self.g(styles, inject_index=inject)
            real_pred, fake_pred = self.d(self._augment(real)), self.d(self._augment(fake))
            d_loss = F.softplus(-real_pred).float().mean() + F.softplus(fake_pred).float().mean()
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        if cfg.r1_gamma > 0 and self.step % cfg.r1_every == 0:
            r1 = r1_penalty(self.d, real, self._augment)
            self.d_opt.zero_grad(set_to_none=True)
            (cfg.r1_gamma / 2 * cfg.r1_every * r1).backward()
            self.d_opt.step()
            self.r1_last = r1.detach()

        self.g.requires_grad_(True)
        self.d.requires_grad_(False)
        styles, inject = self._latents(b)
        with runtime.autocast(self.device, self.precision):
            fake, _ = self.g(styles, inject_index=inject)
            g_loss = F.softplus(-self.d(self._augment(fake))).float().mean()
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_opt.step()
        if cfg.path_regularize > 0 and self.step % cfg.path_every == 0:
            self._path_length_step()

        with torch.no_grad():
            torch._foreach_lerp_(*self._ema_pairs, 1.0 - cfg.ema_decay)
        return torch.stack([d_loss.detach(), g_loss.detach(), real_pred.detach().float().mean(),
                            fake_pred.detach().float().mean(), self.r1_last, self.pl_mean])

    def _path_length_step(self) -> None:
        """StyleGAN2's path-length penalty on half a batch, in fp32 (a gradient of a gradient, like R1):
        |J_w^T y| for random image-space y should stay at its running mean."""
        styles, inject = self._latents(max(1, self.cfg.batch_size // 2))
        with torch.autocast(self.device.type, enabled=False):
            fake, latents = self.g(styles, inject_index=inject, return_latents=True)
            y = torch.randn(fake.shape, generator=self.gen, device=self.device) / math.sqrt(fake.shape[2] * fake.shape[3])
            (grad,) = torch.autograd.grad((fake * y).sum(), latents, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            self.pl_mean = self.pl_mean.lerp(lengths.mean().detach(), 0.01)
            penalty = (lengths - self.pl_mean).square().mean()
        self.g_opt.zero_grad(set_to_none=True)
        (self.cfg.path_regularize * self.cfg.path_every * penalty).backward()
        self.g_opt.step()

    @torch.no_grad()
    def _sample_grid(self, elapsed_s: float) -> None:
        """G_ema on the run's fixed z and fixed noise maps (no draw from the training RNGs), as one PNG."""
        with runtime.autocast(self.device, self.precision):
            x, _ = self.g_ema([self.fixed_z], randomize_noise=False)
        tiles = [to_uint8_image(t, (-1, 1)) for t in x]
        buf = io.BytesIO()
        Image.fromarray(contact_sheet([tiles[r * SAMPLE_COLS:(r + 1) * SAMPLE_COLS] for r in range(SAMPLE_ROWS)])).save(buf, format="PNG")
        atomic_write_bytes(self.folder.path / "samples" / f"step_{self.step:08d}.png", buf.getvalue())

    def save(self) -> Path:
        cfg, ckdir = self.cfg, self.folder.checkpoint(self.step)
        g_config = cfg.generator_config()
        save_weights(self.g.state_dict(), ckdir / G_FILE, GENERATOR_FORMAT, g_config, self.step)
        save_weights(self.g_ema.state_dict(), ckdir / G_EMA_FILE, GENERATOR_FORMAT, g_config, self.step)
        save_weights(self.d.state_dict(), ckdir / D_FILE, DISCRIMINATOR_FORMAT,
                     {"size": cfg.size, "channels": cfg.channels}, self.step)
        g_tensors, g_meta = optimizer_state_to_files(self.g_opt)
        d_tensors, d_meta = optimizer_state_to_files(self.d_opt)
        atomic_save_safetensors({**{f"g.{k}": v for k, v in g_tensors.items()},
                                 **{f"d.{k}": v for k, v in d_tensors.items()}}, ckdir / "trainer.safetensors")
        atomic_save_safetensors({**rng_state(self.gen, self.device), "host_generator": self.host_gen.get_state()},
                                ckdir / "rng.safetensors")
        atomic_write_json(ckdir / "trainer.json", {
            "step": self.step, "images": len(self.images), "pl_mean": float(self.pl_mean), "r1": float(self.r1_last),
            "g_optimizer": g_meta, "d_optimizer": d_meta, "train_config": asdict(cfg)})
        return self.folder.commit(self.step, cfg.keep_checkpoints)  # latest.json only now: every file is written


def _init_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder of ``--init-from`` (a run's latest, or the folder itself), with all three networks."""
    path = Path(path)
    ckdir = latest_checkpoint(path) if (path / LATEST_FILE).exists() else path
    missing = [name for name in (G_FILE, G_EMA_FILE, D_FILE) if not (ckdir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: not a GAN run or checkpoint folder (no {', '.join(missing)})")
    return ckdir


def train(cfg: GanTrainConfig) -> Path:
    """Train (or resume) a run; returns its final checkpoint folder."""
    return GanTrainer(cfg).run()


# ---- trained generators ----

def load_discriminator(path: str | Path) -> Discriminator:
    """The discriminator trained beside a generator: a checkpoint or run folder (a lone G file has none)."""
    file = generator_file(path, D_FILE)
    if not Path(path).is_dir() or not file.exists():
        raise FileNotFoundError(f"{path}: no {D_FILE} (give the GAN run or checkpoint folder)")
    return load_network(file, DISCRIMINATOR_FORMAT, Discriminator)


@torch.no_grad()
def export_rosinality(path: str | Path, out: str | Path, n_mean: int = 4096) -> Path:
    """Write ``path``'s generator as a rosinality ``.pt`` ({"g_ema", "latent_avg"}) for ``load_rosinality``;
    ``latent_avg`` is ``truncation_centre``."""
    g = load_generator(path)
    buf = io.BytesIO()
    torch.save({"g_ema": g.state_dict(), "latent_avg": truncation_centre(g, n_mean)}, buf)
    atomic_write_bytes(out, buf.getvalue())
    return Path(out)
