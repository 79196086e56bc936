"""DiffusionRig training, both stages, on a capture dataset folder; one process on CPU or any ``torchrun``.

- Stage 1 learns generic face priors on a large capture dataset (lr 1e-4): denoiser and encoder train jointly.
- Stage 2 fine-tunes a stage-1 checkpoint (``init``) on one person's album (lr 1e-5): the encoder is frozen
  and kept in eval mode, so its weights AND BatchNorm statistics stay bit-identical; only the denoiser
  learns. The album's shared identity shape is already in the album dataset's buffers (``facerig capture``
  fits one shape per album), so nothing here treats it specially.

Conventions: items are ``{"image": (3,S,S) in [-1,1], "buffers": (9,S,S) rendered|normal|albedo, "mask"}``,
resized to the model's image size when the dataset's differs. The loss is the P2-weighted epsilon MSE
(``process.training_loss``), Adam, gradient clipping, optional EMA and bf16 autocast.

Speed: ``precision="auto"`` trains in bf16 autocast with channels_last activations where the hardware
computes bf16 natively (``facerig.runtime``); Adam is the fused kernel; the EMA is one ``_foreach`` call;
the per-step statistics stay on the device and reach the host (log, NaN check) every ``log_every``
steps and before every checkpoint, so a GPU never waits on the host. The training items, resized to the
model's size, are held in memory (on the GPU when it has room) when they fit, and batches are index
gathers; larger datasets stream through a DataLoader.

The run folder, resume rule, step loop and cadences, Ctrl-C and the common options are ``facerig.training``'s
(layout in ``facerig.diffusion.checkpoint``). Exact resumption: the data order is a pure function of (seed,
epoch) through ``DistributedSampler``; the position inside the epoch, the optimizer, EMA, the model and
every RNG the step consumes (the noise/timestep generator and the global RNG that drives dropout, per
process) are checkpointed, so a run killed and resumed on CPU ends bit-identical to an uninterrupted one
(same machine and torch thread count: float reductions depend on them; CUDA kernels are not bitwise
deterministic anyway). ``steps`` is the total step count. ``--heldout-data`` adds an evaluation hook:
the held-out denoising error per noise level (``facerig.diffusion.heldout``) as lines of ``heldout.jsonl``.

Distributed: under ``torchrun`` (``facerig.training.hardware``) each process takes ``batch_size`` items per
step from its share of every epoch, and rank 0 writes logs, previews and checkpoint files (each rank writes
its RNG state).
"""

from __future__ import annotations

import copy
import io
import itertools
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from facerig import runtime
from facerig.dataset import CaptureDataset
from facerig.diffusion.checkpoint import EMA_FILE, MODEL_FILE, load_checkpoint, read_tensors, read_weights, save_weights
from facerig.diffusion.heldout import heldout_errors, load_items
from facerig.diffusion.model import DiffusionRig, ModelConfig, get_config, global_latent
from facerig.diffusion.process import DEFAULT_SCHEDULE, PREDICTIONS, WEIGHTINGS, denoiser_fn, sample, training_loss
from facerig.diffusion.train_data import Resized, mirror_half, resident_items
from facerig.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_json, contact_sheet, to_uint8_image
from facerig.training import (
    RunFolder, StepOptions, changed_settings, optimizer_state_from_files, optimizer_state_to_files, option, redefault,
    rng_state, set_rng_state,
)
from facerig.training.hardware import process_group, setup_hardware
from facerig.training.loop import train_steps
from facerig.weights import load_state_dict_checked

STAGE_LR = {1: 1e-4, 2: 1e-5}
# Settings a resumed run must share with its checkpoint: they define the model, its data and its randomness.
RESUME_FIXED = ("data", "model", "stage", "init", "seed", "holdout", "ema")
LOGS = ("log.jsonl", "heldout.jsonl")


def ema_decay(decay: float, step: int) -> float:
    """The EMA decay at optimizer step ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))``, the warm-up
    of diffusers' ``EMAModel``. Without it the average keeps ``decay ** step`` of the initial weights, whose
    output layers are zero: after 2,000 steps at 0.999 that is 13.5 %, and the shipped tiny model predicted
    epsilon shrunk to 0.82x at every noise level, so DDIM from noise ended in colour noise."""
    return min(decay, (1 + step) / (10 + step))


@dataclass(kw_only=True)
class TrainConfig(StepOptions):
    """DiffusionRig's own settings; the run options (out, seed, device, precision, threads, resume, steps and
    cadences) are ``StepOptions``'s."""

    data: str = field(metadata={"help": "capture dataset folder (facerig capture output)"})
    model: str | None = option(None, "model config: tiny, small or paper (default: the --init checkpoint's, else "
                                   "paper)", flag="--config")
    stage: int = option(1, "1: generic prior; 2: fine-tune on one person's album (needs --init)", choices=(1, 2))
    steps: int = redefault(StepOptions, "steps", 50_000)
    batch_size: int = option(4, "items per process per step")
    lr: float | None = option(None, "learning rate (default 1e-4 stage 1, 1e-5 stage 2)")
    weight_decay: float = option(0.0, "Adam weight decay")
    grad_clip: float = option(1.0, "max gradient norm")
    p2_gamma: float = option(1.0, "P2 loss weighting gamma (the paper's 1); 0 = plain MSE")
    p2_k: float = option(1.0, "P2 loss weighting k")
    prediction: str | None = option(None, "network output: epsilon (official) or v (default: the --init checkpoint's, "
                                          "else epsilon)", choices=PREDICTIONS)
    weighting: str = option("p2", "loss weighting over timesteps: p2 (the paper's, --p2-gamma/--p2-k) or min-snr "
                                  "(--min-snr-gamma)", choices=WEIGHTINGS)
    min_snr_gamma: float = option(5.0, "min-SNR weighting's cap")
    flip: bool = option(False, "mirror half the items of each batch (image and buffers, normals' x negated)")
    cond_dropout: float = option(0.0, "share of items trained with the null condition (zero buffers), so edits can "
                                      "use --guidance; e.g. 0.1")
    ema: float | None = option(None, "keep EMA weights with this decay, e.g. 0.9999 (warmed up: see ema_decay)",
                               metavar="DECAY")
    init: str | None = option(None, "start from these weights: a facerig run/checkpoint or an official .pt")
    sample_steps: int = option(20, "DDIM steps of a preview")
    holdout: int = option(4, "last N dataset items are never trained on; they make the preview grids")
    num_workers: int = option(0, "data loader worker processes (datasets too large to hold in memory)")
    heldout_data: str | None = option(None, "capture dataset of people never trained on: its denoising error per "
                                            "noise level goes to heldout.jsonl every --eval-every steps")
    eval_every: int = option(1000, "steps between held-out evaluations")

    def __post_init__(self):
        super().__post_init__()
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, not {self.stage}")
        for name in ("batch_size", "sample_steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema decay must be in (0,1), not {self.ema}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), not {self.cond_dropout}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, not {self.lr}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else STAGE_LR[self.stage]


class Trainer:
    """One training run (a ``facerig.training.loop.StepTrainer``); ``run()`` trains to ``cfg.steps`` and
    returns the final checkpoint folder."""

    STATS = ("loss", "mse", "grad_norm")

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.hw = setup_hardware(cfg.device, cfg.precision, cfg.threads, distributed=True)
        self.precision = self.hw.precision
        self.folder = RunFolder(cfg.out, "train", LOGS, main=self.hw.main)
        resume_dir = self.folder.resume_from(cfg.resume)
        if resume_dir is not None:
            before = self.folder.trainer_state(resume_dir).get("train_config", {})
            self.folder.refuse_changes(resume_dir, changed_settings(before, cfg, RESUME_FIXED))

        init_model, model_cfg = None, None
        if resume_dir is not None:
            _, model_cfg, _ = read_weights(resume_dir / MODEL_FILE)
        elif cfg.init:
            init_model, model_cfg = load_checkpoint(cfg.init, prefer_ema=True, config=cfg.model or "paper")
        elif cfg.stage == 2:
            raise ValueError("stage 2 fine-tunes a stage-1 model: give init (--init CKPT)")
        if model_cfg is None:
            model_cfg = get_config(cfg.model or "paper")
        elif cfg.model is not None and replace(get_config(cfg.model), null_condition=model_cfg.null_condition,
                                               prediction=model_cfg.prediction) != model_cfg:
            raise ValueError(f"config {cfg.model!r} differs from the checkpoint's model config {model_cfg}")
        if cfg.cond_dropout > 0:  # the saved config tells the editor that guidance is available
            model_cfg = replace(model_cfg, null_condition=True)
        if cfg.prediction is not None and cfg.prediction != model_cfg.prediction:
            if resume_dir is not None or init_model is not None:
                raise ValueError(f"--prediction {cfg.prediction} differs from the checkpoint's ({model_cfg.prediction})")
            model_cfg = replace(model_cfg, prediction=cfg.prediction)
        self.model_cfg: ModelConfig = model_cfg

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.model = DiffusionRig(model_cfg)
        if init_model is not None:
            self.model.load_state_dict(init_model.state_dict())
        self.model.to(self.hw.device).use_memory_format(runtime.memory_format(self.precision))
        if cfg.stage == 2:
            self.model.encoder.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
        self.ema_model = None
        if cfg.ema is not None:
            self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
            # Built once: the EMA update is then two fused calls per step.
            self._ema_pairs = (list(self.ema_model.parameters()), list(self.model.parameters()),
                               list(self.ema_model.buffers()), list(self.model.buffers()))

        # Per-rank RNGs: dropout draws from the global RNG, noise and timesteps from this generator.
        torch.manual_seed(cfg.seed * 1_000_003 + self.hw.rank)
        self.generator = torch.Generator(self.hw.device).manual_seed(cfg.seed * 1_000_003 + self.hw.rank + 1)

        self._setup_data()
        self.heldout = load_items(cfg.heldout_data, model_cfg.image_size) if cfg.heldout_data and self.hw.main else None
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        if resume_dir is not None:
            self._load(resume_dir)
        else:
            self.folder.start({"train": asdict(cfg), "model": model_cfg.to_dict(), "world_size": self.hw.world})

        self.ddp = self.model
        if self.hw.world > 1:
            # The official code's setting: BatchNorm statistics stay per process (no broadcast every step).
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.hw.device.index] if self.hw.device.type == "cuda" else None,
                broadcast_buffers=False)

    # -- data --

    def _setup_data(self) -> None:
        cfg, size = self.cfg, self.model_cfg.image_size
        base = CaptureDataset(cfg.data)
        n = len(base)
        if n <= cfg.holdout:
            raise ValueError(f"{cfg.data}: {n} items, but holdout={cfg.holdout} leaves none to train on")
        train_idx = list(range(n - cfg.holdout))
        preview_idx = list(range(n - cfg.holdout, n)) if cfg.holdout else train_idx[:4]
        self.train_set = Resized(base, train_idx, size, base.image_size)
        self.preview_set = Resized(base, preview_idx[:8], size, base.image_size)
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.hw.world, rank=self.hw.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=True)
        self.resident = resident_items(self.train_set, size, self.hw.device, progress=self.hw.main)
        self.batches_per_epoch = len(self.sampler) // cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{cfg.data}: {len(self.train_set)} training items are fewer than batch size "
                             f"{cfg.batch_size} x {self.hw.world} processes")

    def batches(self):
        """Every batch from the current position on, epoch after epoch (``train_step`` advances the position)."""
        return itertools.chain.from_iterable(self._epoch_batches() for _ in itertools.count())

    def _epoch_batches(self):
        """The rest of the current epoch's batches, from ``batch_in_epoch`` on."""
        self.sampler.set_epoch(self.epoch)
        b = self.cfg.batch_size
        indices = list(self.sampler)[self.batch_in_epoch * b : self.batches_per_epoch * b]
        if self.resident is not None:
            for start in range(0, len(indices), b):
                idx = torch.tensor(indices[start : start + b], device=self.hw.device)
                yield {k: v.index_select(0, idx).float() for k, v in self.resident.items()}
            return
        # A private generator: creating a loader must not draw from the global RNG (that drives dropout).
        yield from DataLoader(self.train_set, batch_size=b, sampler=indices, num_workers=self.cfg.num_workers,
                              drop_last=True, generator=torch.Generator(), pin_memory=self.hw.device.type == "cuda")

    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.stage == 2:
            self.model.encoder.eval()  # frozen: BatchNorm must keep its running statistics

    # -- the loop (facerig.training.loop) --

    def run(self) -> Path:
        self._train_mode()
        last = train_steps(self, self.cfg, f"stage {self.cfg.stage}", shown=("loss",))
        return last if last is not None else self.folder.latest()

    def train_step(self, batch: dict) -> torch.Tensor:
        """One optimizer step, then the data position moves on; returns [loss, mse, grad_norm] as a device
        tensor (no host sync)."""
        cfg, dev = self.cfg, self.hw.device
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        if cfg.flip:
            batch = mirror_half(batch, self.generator)
        self.opt.zero_grad(set_to_none=True)
        with runtime.autocast(dev, self.precision):
            out = training_loss(self.ddp, batch, DEFAULT_SCHEDULE, cfg.p2_gamma, cfg.p2_k, self.generator, cfg.cond_dropout,
                                cfg.weighting, cfg.min_snr_gamma)
        out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        if self.ema_model is not None:
            self._update_ema()
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return self.hw.mean(torch.stack([out["loss"].detach().float(), out["mse"].float(), grad_norm.float()]))

    def log_fields(self) -> dict:
        return {"lr": self.opt.param_groups[0]["lr"], "epoch": self.epoch}

    def hooks(self) -> list:
        hooks = [(self.cfg.sample_every, self._preview)]
        return hooks + [(self.cfg.eval_every, self._evaluate)] if self.heldout is not None else hooks

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema_params, params, ema_buffers, buffers = self._ema_pairs
        torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(self.cfg.ema, self.step + 1))
        torch._foreach_copy_(ema_buffers, buffers)

    def _evaluate(self, elapsed_s: float) -> None:
        """Held-out denoising error of the EMA weights (else the model) appended to heldout.jsonl."""
        model = self.ema_model if self.ema_model is not None else self.model
        errors = heldout_errors(model, self.heldout, seed=0, precision=self.precision)
        self.folder.append("heldout.jsonl", {"step": self.step, "samples": self.step * self.cfg.batch_size * self.hw.world,
                                          "elapsed_s": round(elapsed_s, 1), **errors})
        self._train_mode()

    @torch.no_grad()
    def _preview(self, elapsed_s: float) -> None:
        """A PNG grid of held-out items, one per row: rendered buffer | DDIM sample | real photo."""
        if not self.hw.main:
            return
        model = self.ema_model if self.ema_model is not None else self.model
        model.eval()
        items = [self.preview_set[i] for i in range(len(self.preview_set))]
        image = torch.stack([it["image"] for it in items]).to(self.hw.device)
        buffers = torch.stack([it["buffers"] for it in items]).to(self.hw.device)
        cond = {"buffers": buffers, "latent": global_latent(model, image)}
        # Fixed noise on CPU (same every preview, and no draw from the training RNGs).
        x_T = torch.randn(image.shape, generator=torch.Generator().manual_seed(self.cfg.seed)).to(self.hw.device)
        with runtime.autocast(self.hw.device, self.precision):
            x0 = sample(denoiser_fn(model), x_T, cond, "ddim", self.cfg.sample_steps)
        rows = [[to_uint8_image(buffers[i, :3], (0, 1)), to_uint8_image(x0[i], (-1, 1)), to_uint8_image(image[i], (-1, 1))]
                for i in range(len(items))]
        buf = io.BytesIO()
        Image.fromarray(contact_sheet(rows)).save(buf, format="PNG")
        atomic_write_bytes(self.folder.path / "samples" / f"step_{self.step:08d}.png", buf.getvalue())
        self._train_mode()

    # -- checkpoints --

    def save(self) -> Path:
        ckdir = self.folder.checkpoint(self.step)
        rng = rng_state(self.generator, self.hw.device)
        atomic_save_safetensors(rng, ckdir / f"rng.rank{self.hw.rank}.safetensors")
        if self.hw.main:
            save_weights(self.model.state_dict(), ckdir / MODEL_FILE, self.model_cfg, self.step)
            if self.ema_model is not None:
                save_weights(self.ema_model.state_dict(), ckdir / EMA_FILE, self.model_cfg, self.step)
            tensors, opt_meta = optimizer_state_to_files(self.opt)
            atomic_save_safetensors(tensors, ckdir / "trainer.safetensors")
            atomic_write_json(ckdir / "trainer.json", {
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "world_size": self.hw.world, "batch_size": self.cfg.batch_size, "stage": self.cfg.stage,
                "ema": self.cfg.ema, "optimizer": opt_meta, "train_config": asdict(self.cfg),
            })
        self.hw.barrier()
        return self.folder.commit(self.step, self.cfg.keep_checkpoints)

    def _load(self, ckdir: Path) -> None:
        state, _, _ = read_weights(ckdir / MODEL_FILE)
        load_state_dict_checked(self.model, state, str(ckdir / MODEL_FILE))
        meta = self.folder.trainer_state(ckdir)
        if (meta["ema"] is None) != (self.ema_model is None):
            raise ValueError(f"{ckdir}: checkpoint was trained with ema={meta['ema']}, resuming with ema={self.cfg.ema}")
        if meta["stage"] != self.cfg.stage:
            raise ValueError(f"{ckdir}: checkpoint is stage {meta['stage']}, resuming as stage {self.cfg.stage}")
        if self.ema_model is not None:
            ema_state, _, _ = read_weights(ckdir / EMA_FILE)
            load_state_dict_checked(self.ema_model, ema_state, str(ckdir / EMA_FILE))
        opt_tensors, _ = read_tensors(ckdir / "trainer.safetensors")
        self.opt.load_state_dict(optimizer_state_from_files(opt_tensors, meta["optimizer"]))
        for group in self.opt.param_groups:  # settings that may change on resume take effect (and are saved)
            group.update(lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay)
        self.step, self.epoch, self.batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        same_layout = meta["world_size"] == self.hw.world and meta["batch_size"] == self.cfg.batch_size
        if not same_layout and self.batch_in_epoch:
            # The epoch's split over processes changed: the rest of that epoch can't be replayed exactly.
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if self.hw.main:
                print(f"facerig train: world size/batch size changed since {ckdir}; continuing at epoch {self.epoch}")
        rng_path = ckdir / f"rng.rank{self.hw.rank}.safetensors"
        if rng_path.exists():
            set_rng_state(read_tensors(rng_path)[0], self.generator, self.hw.device)
        else:
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.hw.rank + self.step)
            self.generator.manual_seed(self.cfg.seed * 1_000_003 + self.hw.rank + self.step + 1)
        self.folder.truncate_logs(self.step)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a run; returns its final checkpoint folder. Tears down the process group it made."""
    with process_group():
        return Trainer(cfg).run()
