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

Exact resumption: the data order is a pure function of (seed, epoch) through ``DistributedSampler``; the
position inside the epoch, the optimizer, EMA, the model and every RNG the step consumes (the noise/timestep
generator and the global RNG that drives dropout, per process) are checkpointed, so a run killed and resumed
on CPU ends bit-identical to an uninterrupted one (same machine and torch thread count: float reductions
depend on them; CUDA kernels are not bitwise deterministic anyway). ``steps`` is the total step count.

Distributed: with ``WORLD_SIZE`` in the environment (``torchrun``), the process group is initialized from
the environment (NCCL on CUDA, gloo on CPU), each process takes ``batch_size`` items per step from its share
of every epoch, and rank 0 writes logs, previews and checkpoint files (each rank writes its RNG state).
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from facerig import runtime
from facerig.dataset import CaptureDataset
from facerig.diffusion.checkpoint import (
    EMA_FILE, MODEL_FILE, checkpoint_dir, load_checkpoint, read_tensors, read_weights, save_weights,
)
from facerig.diffusion.model import DiffusionRig, ModelConfig, get_config, global_latent
from facerig.diffusion.heldout import heldout_errors, load_items
from facerig.diffusion.process import DEFAULT_SCHEDULE, PREDICTIONS, WEIGHTINGS, denoiser_fn, sample, training_loss
from facerig.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_json, contact_sheet, to_uint8_image
from facerig.training import (
    LATEST_FILE, flush_statistics, log_step, optimizer_state_from_files, optimizer_state_to_files, option,
    rng_state, rotate_checkpoints, same_setting, set_rng_state,
)
from facerig.weights import load_state_dict_checked

STAGE_LR = {1: 1e-4, 2: 1e-5}
# Settings a resumed run must share with its checkpoint: they define the model, its data and its randomness.
RESUME_FIXED = ("data", "model", "stage", "init", "seed", "holdout", "ema")
RESIDENT_BYTES = {"cpu": 4 << 30, "cuda": 0.25}  # CPU: bytes; CUDA: fraction of the GPU's memory


# Channel 0 of the normal buffer: camera-space x, which a horizontal mirror negates (rendered and albedo just mirror).
NORMAL_X = 3


def mirror_half(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Mirror each item with probability 1/2 (drawn from ``generator``): image, buffers and mask left-right,
    the normals' x component negated, so the mirrored buffers are those of the mirrored face."""
    image = batch["image"]
    flip = (torch.rand(image.shape[0], device=image.device, generator=generator) < 0.5).view(-1, 1, 1, 1)
    out = {k: torch.where(flip, v.flip(-1), v) for k, v in batch.items()}
    sign = torch.ones(out["buffers"].shape[1], device=image.device, dtype=out["buffers"].dtype)
    sign[NORMAL_X] = -1
    out["buffers"] = torch.where(flip, out["buffers"] * sign.view(1, -1, 1, 1), out["buffers"])
    return out


def ema_decay(decay: float, step: int) -> float:
    """The EMA decay at optimizer step ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))``, the warm-up
    of diffusers' ``EMAModel``. Without it the average keeps ``decay ** step`` of the initial weights, whose
    output layers are zero: after 2,000 steps at 0.999 that is 13.5 %, and the shipped tiny model predicted
    epsilon shrunk to 0.82x at every noise level, so DDIM from noise ended in colour noise."""
    return min(decay, (1 + step) / (10 + step))


@dataclass
class TrainConfig:
    data: str = field(metadata={"help": "capture dataset folder (facerig capture output)"})
    out: str = field(metadata={"help": "run folder: checkpoints, log.jsonl, sample grids"})
    model: str | None = option(None, "model config: tiny, small or paper (default: the --init checkpoint's, else "
                                   "paper)", flag="--config")
    stage: int = option(1, "1: generic prior; 2: fine-tune on one person's album (needs --init)", choices=(1, 2))
    steps: int = option(50_000, "total optimizer steps of the run (a resumed run continues up to it)")
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
    precision: str = option("auto", "auto: bf16 autocast where the CPU (AMX/AVX512-BF16) or GPU computes bf16, "
                                  "else fp32", choices=runtime.PRECISIONS)
    threads: int | None = option(None, "CPU threads (default: OMP_NUM_THREADS, else the cores other processes leave idle)")
    log_every: int = option(25, "steps between host syncs: log lines and the NaN check")
    init: str | None = option(None, "start from these weights: a facerig run/checkpoint or an official .pt")
    resume: bool = option(False, "continue the run in --out from its latest checkpoint")
    seed: int = option(0, "seed of the initial weights, data order, noise and dropout")
    sample_every: int = option(1000, "steps between preview grids")
    sample_steps: int = option(20, "DDIM steps of a preview")
    ckpt_every: int = option(5000, "steps between checkpoints")
    holdout: int = option(4, "last N dataset items are never trained on; they make the preview grids")
    keep_checkpoints: int = option(2, "checkpoints kept on disk")
    num_workers: int = option(0, "data loader worker processes (datasets too large to hold in memory)")
    device: str | None = option(None, "device without torchrun (default: cuda if available)")
    heldout_data: str | None = option(None, "capture dataset of people never trained on: its denoising error per "
                                            "noise level goes to heldout.jsonl every --eval-every steps")
    eval_every: int = option(1000, "steps between held-out evaluations")

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, not {self.stage}")
        for name in ("steps", "batch_size", "sample_every", "sample_steps", "ckpt_every", "keep_checkpoints", "log_every",
                     "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema decay must be in (0,1), not {self.ema}")
        if self.precision not in runtime.PRECISIONS:
            raise ValueError(f"precision must be one of {runtime.PRECISIONS}, not {self.precision!r}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), not {self.cond_dropout}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, not {self.lr}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else STAGE_LR[self.stage]


class _Resized(Dataset):
    """Dataset items resized to ``size`` (bilinear with antialiasing; the mask nearest)."""

    def __init__(self, base: Dataset, indices: list[int], size: int, source_size: int):
        self.base, self.indices, self.size, self.resize = base, indices, size, size != source_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = self.base[self.indices[i]]
        if not self.resize:
            return item
        s = (self.size, self.size)
        lin = lambda x: F.interpolate(x[None], s, mode="bilinear", antialias=True, align_corners=False)[0]  # noqa: E731
        return {"image": lin(item["image"]).clamp(-1, 1), "buffers": lin(item["buffers"]),
                "mask": F.interpolate(item["mask"][None], s, mode="nearest")[0]}


@dataclass
class _Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _setup_distributed(cfg: TrainConfig) -> _Dist:
    if "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            cuda = device.type == "cuda"
            dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
        return _Dist(rank, world, local_rank, device)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return _Dist(0, 1, 0, device)


class Trainer:
    """One training run; ``run()`` trains to ``cfg.steps`` and returns the final checkpoint folder."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.d = _setup_distributed(cfg)
        if self.d.device.type == "cpu" and cfg.threads is not None:
            runtime.configure_threads(cfg.threads)
        self.precision = runtime.resolve_precision(cfg.precision, self.d.device)
        self.out = Path(cfg.out)
        self.log_path = self.out / "log.jsonl"
        resume_dir = self._resume_dir()
        if resume_dir is not None:
            self._check_resume_settings(resume_dir)

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
        self.model.to(self.d.device).use_memory_format(runtime.memory_format(self.precision))
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
        self._pending: list[torch.Tensor] = []  # per-step [loss, mse, grad_norm] not yet on the host

        # Per-rank RNGs: dropout draws from the global RNG, noise and timesteps from this generator.
        torch.manual_seed(cfg.seed * 1_000_003 + self.d.rank)
        self.generator = torch.Generator(self.d.device).manual_seed(cfg.seed * 1_000_003 + self.d.rank + 1)

        self._setup_data()
        self.heldout = load_items(cfg.heldout_data, model_cfg.image_size) if cfg.heldout_data and self.d.main else None
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        if resume_dir is not None:
            self._load(resume_dir)
        elif self.d.main:
            atomic_write_json(self.out / "config.json", {"train": asdict(cfg), "model": model_cfg.to_dict(),
                                                         "world_size": self.d.world})
            self.log_path.unlink(missing_ok=True)

        self.ddp = self.model
        if self.d.world > 1:
            # The official code's setting: BatchNorm statistics stay per process (no broadcast every step).
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.d.device.index] if self.d.device.type == "cuda" else None,
                broadcast_buffers=False)

    # -- setup --

    def _resume_dir(self) -> Path | None:
        if not self.cfg.resume:
            if (self.out / LATEST_FILE).exists():
                raise ValueError(f"{self.out}: already holds a run's checkpoints; resume it or choose another out folder")
            return None
        if not (self.out / LATEST_FILE).exists():
            if self.d.main:
                print(f"facerig train: nothing to resume in {self.out} (no {LATEST_FILE}); starting fresh")
            return None
        return checkpoint_dir(self.out)

    def _check_resume_settings(self, ckdir: Path) -> None:
        """Refuse to resume with a setting that defines the run changed; the others apply from here on."""
        before = json.loads((ckdir / "trainer.json").read_text()).get("train_config", {})
        changed = [f"{k} {before[k]!r} -> {getattr(self.cfg, k)!r}" for k in RESUME_FIXED
                   if k in before and same_setting(k, before[k]) != same_setting(k, getattr(self.cfg, k))]
        if changed:
            raise ValueError(f"{ckdir}: --resume with settings that define the run changed ({'; '.join(changed)}); "
                             f"start a new run in another --out instead")

    def _setup_data(self) -> None:
        cfg, size = self.cfg, self.model_cfg.image_size
        base = CaptureDataset(cfg.data)
        n = len(base)
        if n <= cfg.holdout:
            raise ValueError(f"{cfg.data}: {n} items, but holdout={cfg.holdout} leaves none to train on")
        train_idx = list(range(n - cfg.holdout))
        preview_idx = list(range(n - cfg.holdout, n)) if cfg.holdout else train_idx[:4]
        self.train_set = _Resized(base, train_idx, size, base.image_size)
        self.preview_set = _Resized(base, preview_idx[:8], size, base.image_size)
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.d.world, rank=self.d.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=True)
        self.resident = self._resident_data()
        self.batches_per_epoch = len(self.sampler) // cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{cfg.data}: {len(self.train_set)} training items are fewer than batch size "
                             f"{cfg.batch_size} x {self.d.world} processes")

    def _resident_data(self) -> dict[str, torch.Tensor] | None:
        """Every training item at the model's size, float16, on the training device; None if too large."""
        s, n = self.model_cfg.image_size, len(self.train_set)
        need = n * 12 * s * s * 2
        dev = self.d.device
        budget = RESIDENT_BYTES.get(dev.type, 0)
        if dev.type == "cuda":
            budget = budget * torch.cuda.get_device_properties(dev).total_memory
        if need > budget:
            return None
        image = torch.empty(n, 3, s, s, dtype=torch.float16)
        buffers = torch.empty(n, 9, s, s, dtype=torch.float16)
        for i in tqdm(range(n), desc="loading training items", disable=not self.d.main or n < 1000, leave=False):
            item = self.train_set[i]
            image[i], buffers[i] = item["image"], item["buffers"]
        return {"image": image.to(dev), "buffers": buffers.to(dev)}

    def _epoch_batches(self):
        """The rest of the current epoch's batches, from ``batch_in_epoch`` on."""
        self.sampler.set_epoch(self.epoch)
        b = self.cfg.batch_size
        indices = list(self.sampler)[self.batch_in_epoch * b : self.batches_per_epoch * b]
        if self.resident is not None:
            for start in range(0, len(indices), b):
                idx = torch.tensor(indices[start : start + b], device=self.d.device)
                yield {k: v.index_select(0, idx).float() for k, v in self.resident.items()}
            return
        # A private generator: creating a loader must not draw from the global RNG (that drives dropout).
        yield from DataLoader(self.train_set, batch_size=b, sampler=indices, num_workers=self.cfg.num_workers,
                              drop_last=True, generator=torch.Generator(), pin_memory=self.d.device.type == "cuda")

    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.stage == 2:
            self.model.encoder.eval()  # frozen: BatchNorm must keep its running statistics

    # -- the loop --

    def run(self) -> Path:
        cfg = self.cfg
        self._train_mode()
        start = time.time()
        last_dir = None
        with tqdm(total=cfg.steps, initial=self.step, desc=f"stage {cfg.stage}", disable=not self.d.main) as bar:
            while self.step < cfg.steps:
                for batch in self._epoch_batches():
                    self._pending.append(self._train_step(batch))
                    self.step += 1
                    self.batch_in_epoch += 1
                    if self.batch_in_epoch == self.batches_per_epoch:
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    bar.update(1)
                    save = self.step % cfg.ckpt_every == 0 or self.step == cfg.steps
                    if save or self.step % cfg.log_every == 0:
                        self._flush_log(time.time() - start, bar)
                    if self.step % cfg.sample_every == 0 or self.step == cfg.steps:
                        self._preview()
                    if self.heldout is not None and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                        self._evaluate(time.time() - start)
                    if save:
                        last_dir = self._save()
                    if self.step >= cfg.steps:
                        break
        return last_dir if last_dir is not None else checkpoint_dir(self.out)

    def _train_step(self, batch: dict) -> torch.Tensor:
        """One optimizer step; returns [loss, mse, grad_norm] as a device tensor (no host sync)."""
        cfg, dev = self.cfg, self.d.device
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
        stats = torch.stack([out["loss"].detach().float(), out["mse"].float(), grad_norm.float()])
        if self.d.world > 1:
            dist.all_reduce(stats)
            stats /= self.d.world
        return stats

    def _flush_log(self, elapsed_s: float, bar) -> None:
        """Bring the pending steps' statistics to the host: NaN check, then one log line per step."""
        records = flush_statistics(self._pending, self.step, ("loss", "mse", "grad_norm"),
                                   self.log_path if self.d.main else None, lr=self.opt.param_groups[0]["lr"],
                                   epoch=self.epoch, elapsed_s=round(elapsed_s, 3))
        if records:
            bar.set_postfix(loss=f"{records[-1]['loss']:.4f}")

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema_params, params, ema_buffers, buffers = self._ema_pairs
        torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(self.cfg.ema, self.step + 1))
        torch._foreach_copy_(ema_buffers, buffers)

    def _evaluate(self, elapsed_s: float) -> None:
        """Held-out denoising error of the EMA weights (else the model) appended to heldout.jsonl."""
        model = self.ema_model if self.ema_model is not None else self.model
        errors = heldout_errors(model, self.heldout, seed=0, precision=self.precision)
        with open(self.out / "heldout.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, "samples": self.step * self.cfg.batch_size * self.d.world,
                                "elapsed_s": round(elapsed_s, 1), **errors}) + "\n")
        self._train_mode()

    # -- previews --

    @torch.no_grad()
    def _preview(self) -> None:
        """A PNG grid of held-out items, one per row: rendered buffer | DDIM sample | real photo."""
        if not self.d.main:
            return
        model = self.ema_model if self.ema_model is not None else self.model
        model.eval()
        items = [self.preview_set[i] for i in range(len(self.preview_set))]
        image = torch.stack([it["image"] for it in items]).to(self.d.device)
        buffers = torch.stack([it["buffers"] for it in items]).to(self.d.device)
        cond = {"buffers": buffers, "latent": global_latent(model, image)}
        # Fixed noise on CPU (same every preview, and no draw from the training RNGs).
        x_T = torch.randn(image.shape, generator=torch.Generator().manual_seed(self.cfg.seed)).to(self.d.device)
        with runtime.autocast(self.d.device, self.precision):
            x0 = sample(denoiser_fn(model), x_T, cond, "ddim", self.cfg.sample_steps)
        rows = [[to_uint8_image(buffers[i, :3], (0, 1)), to_uint8_image(x0[i], (-1, 1)), to_uint8_image(image[i], (-1, 1))]
                for i in range(len(items))]
        buf = io.BytesIO()
        Image.fromarray(contact_sheet(rows)).save(buf, format="PNG")
        atomic_write_bytes(self.out / "samples" / f"step_{self.step:08d}.png", buf.getvalue())
        self._train_mode()

    # -- checkpoints --

    def _save(self) -> Path:
        rel = f"checkpoints/step_{self.step:08d}"
        ckdir = self.out / rel
        rng = rng_state(self.generator, self.d.device)
        atomic_save_safetensors(rng, ckdir / f"rng.rank{self.d.rank}.safetensors")
        if self.d.main:
            save_weights(self.model.state_dict(), ckdir / MODEL_FILE, self.model_cfg, self.step)
            if self.ema_model is not None:
                save_weights(self.ema_model.state_dict(), ckdir / EMA_FILE, self.model_cfg, self.step)
            tensors, opt_meta = optimizer_state_to_files(self.opt)
            atomic_save_safetensors(tensors, ckdir / "trainer.safetensors")
            atomic_write_json(ckdir / "trainer.json", {
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "world_size": self.d.world, "batch_size": self.cfg.batch_size, "stage": self.cfg.stage,
                "ema": self.cfg.ema, "optimizer": opt_meta, "train_config": asdict(self.cfg),
            })
        self.d.barrier()
        if self.d.main:
            atomic_write_json(self.out / LATEST_FILE, {"checkpoint": rel, "step": self.step})
            rotate_checkpoints(ckdir, self.cfg.keep_checkpoints)
        return ckdir

    def _load(self, ckdir: Path) -> None:
        state, _, _ = read_weights(ckdir / MODEL_FILE)
        load_state_dict_checked(self.model, state, str(ckdir / MODEL_FILE))
        meta = json.loads((ckdir / "trainer.json").read_text())
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
        same_layout = meta["world_size"] == self.d.world and meta["batch_size"] == self.cfg.batch_size
        if not same_layout and self.batch_in_epoch:
            # The epoch's split over processes changed: the rest of that epoch can't be replayed exactly.
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if self.d.main:
                print(f"facerig train: world size/batch size changed since {ckdir}; continuing at epoch {self.epoch}")
        rng_path = ckdir / f"rng.rank{self.d.rank}.safetensors"
        if rng_path.exists():
            set_rng_state(read_tensors(rng_path)[0], self.generator, self.d.device)
        else:
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.d.rank + self.step)
            self.generator.manual_seed(self.cfg.seed * 1_000_003 + self.d.rank + self.step + 1)
        for path in (self.log_path, self.out / "heldout.jsonl"):
            if self.d.main and path.exists():
                # Drop the lines of steps after the checkpoint (they are trained again).
                lines = [ln for ln in path.read_text().splitlines()
                         if ln.strip() and log_step(ln) is not None and log_step(ln) <= self.step]
                atomic_write_bytes(path, "".join(ln + "\n" for ln in lines).encode())


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a run; returns its final checkpoint folder. Tears down the process group it made."""
    made_group = "WORLD_SIZE" in os.environ and not dist.is_initialized()
    try:
        return Trainer(cfg).run()
    finally:
        if made_group and dist.is_initialized():
            dist.destroy_process_group()
