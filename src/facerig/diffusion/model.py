"""The DiffusionRig model (denoiser + global-latent encoder), its named configs and official-checkpoint I/O.

Conventions: images in [-1,1]; buffers are the 9 channels of ``facerig.render.renderer.BUFFER_NAMES`` (rendered,
normal, albedo), the same order the official code concatenates them in (``th.cat([rendered, normal,
albedo])``), unscaled. The module names are the official ones (``denoisingUNet``, ``encoder``), so a
state dict of the official ``DiffusionRig`` loads 1:1 and exports back to exactly its keys.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from facerig.diffusion.encoder import ResNet18Encoder
from facerig.diffusion.unet import DiffusionRigUNet
from facerig.io import atomic_write_bytes
from facerig.weights import PretrainedMixin

# guided-diffusion's channel multipliers by image size (used when a config gives none).
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a DiffusionRig model. ``attention_resolutions`` are feature-map sizes in pixels."""

    image_size: int
    model_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: tuple[float, ...] = ()  # () -> DEFAULT_CHANNEL_MULT[image_size]
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_heads: int = 1
    num_head_channels: int = -1
    latent_dim: int = 64
    in_channels: int = 12
    out_channels: int = 3
    # Trained with condition dropout (``facerig train --cond-dropout``): all-zero buffers then mean "no
    # condition", and sampling may use classifier-free guidance on the buffers (``--guidance``).
    null_condition: bool = False
    # What the network outputs: "epsilon" (official) or "v" (``facerig.diffusion.process.PREDICTIONS``);
    # samplers always receive epsilon (``process.denoiser_fn`` converts).
    prediction: str = "epsilon"

    def __post_init__(self):
        if self.prediction not in ("epsilon", "v"):
            raise ValueError(f"model config prediction={self.prediction!r} is not 'epsilon' or 'v'")
        if not self.channel_mult:
            if self.image_size not in DEFAULT_CHANNEL_MULT:
                raise ValueError(f"no default channel_mult for image_size {self.image_size}; give one")
            object.__setattr__(self, "channel_mult", DEFAULT_CHANNEL_MULT[self.image_size])
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        # Bounds well past any published config, so a corrupt or hostile file fails here, not after
        # minutes and gigabytes of building.
        for name, value, low, high in (
            ("image_size", self.image_size, 8, 1024), ("model_channels", self.model_channels, 32, 512),
            ("num_res_blocks", self.num_res_blocks, 1, 8), ("levels", len(self.channel_mult), 1, 8),
            ("channel_mult", max(self.channel_mult), 0.25, 8), ("latent_dim", self.latent_dim, 1, 2048),
            ("num_heads", self.num_heads, 1, 64), ("in_channels", self.in_channels, 1, 64),
            ("out_channels", self.out_channels, 1, 64), ("dropout", self.dropout, 0.0, 0.99),
        ):
            if not low <= value <= high:
                raise ValueError(f"model config {name}={value} is outside [{low}, {high}]")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2^{len(self.channel_mult) - 1}")

    @property
    def attention_ds(self) -> tuple[int, ...]:
        return tuple(self.image_size // r for r in self.attention_resolutions)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_official(cls, cfg: dict) -> "ModelConfig":
        """The config of the official code's ``model_and_diffusion_defaults()``-style argument dict."""
        required = {"use_scale_shift_norm": True, "resblock_updown": True, "use_new_attention_order": False,
                    "learn_sigma": False, "encoder_type": "resnet18"}
        for key, value in required.items():
            if key in cfg and cfg[key] != value:
                raise ValueError(f"official config {key}={cfg[key]!r} is not supported (facerig implements {value!r})")
        if cfg.get("num_heads_upsample", -1) not in (-1, cfg.get("num_heads", 1)):
            raise ValueError("official config: num_heads_upsample != num_heads is not supported")
        mult = cfg.get("channel_mult", "")
        return cls(
            image_size=int(cfg["image_size"]),
            model_channels=int(cfg["num_channels"]),
            num_res_blocks=int(cfg["num_res_blocks"]),
            channel_mult=tuple(float(m) if "." in m else int(m) for m in mult.split(",")) if mult else (),
            attention_resolutions=tuple(int(r) for r in str(cfg["attention_resolutions"]).split(",")),
            dropout=float(cfg["dropout"]),
            num_heads=int(cfg["num_heads"]),
            num_head_channels=int(cfg["num_head_channels"]),
            latent_dim=int(cfg["latent_dim"]),
            in_channels=int(cfg["in_channels"]),
        )


CONFIGS: dict[str, ModelConfig] = {
    # The paper's (and official defaults') 256 px model: 144,610,179 parameters.
    "paper": ModelConfig(image_size=256),
    "small": ModelConfig(image_size=128, model_channels=64),
    # Fast enough on a CPU for tests: 64 px, 32 base channels, one ResBlock per level.
    "tiny": ModelConfig(image_size=64, model_channels=32, num_res_blocks=1),
    # tiny at twice the width: 64-256 channels keep this CPU's bf16 matrix units busier than tiny's 32-128.
    "wide64": ModelConfig(image_size=64, model_channels=64, num_res_blocks=1),
}


def get_config(name_or_config: str | ModelConfig) -> ModelConfig:
    if isinstance(name_or_config, ModelConfig):
        return name_or_config
    if name_or_config not in CONFIGS:
        raise ValueError(f"unknown model config {name_or_config!r}; choose from {sorted(CONFIGS)}")
    return CONFIGS[name_or_config]


class DiffusionRig(nn.Module, PretrainedMixin):
    """Denoiser (``denoisingUNet``) plus global-latent encoder (``encoder``), official key layout.

    ``save_pretrained(folder)`` / ``DiffusionRig.from_pretrained(folder)``: diffusers' folder layout.
    """

    config_class = ModelConfig
    weights_format = "facerig-diffusionrig"

    def __init__(self, config: ModelConfig | str = "paper"):
        super().__init__()
        self.config = get_config(config)
        c = self.config
        self.denoisingUNet = DiffusionRigUNet(
            in_channels=c.in_channels, out_channels=c.out_channels, model_channels=c.model_channels,
            num_res_blocks=c.num_res_blocks, channel_mult=c.channel_mult, attention_ds=c.attention_ds,
            dropout=c.dropout, num_heads=c.num_heads, num_head_channels=c.num_head_channels, latent_dim=c.latent_dim,
        )
        self.encoder = ResNet18Encoder(c.latent_dim)

    def use_memory_format(self, memory_format: torch.memory_format) -> "DiffusionRig":
        """Run both networks' activations in ``memory_format`` (weights and outputs keep theirs)."""
        self.denoisingUNet.memory_format = self.encoder.memory_format = memory_format
        return self

    @property
    def denoiser(self) -> DiffusionRigUNet:
        return self.denoisingUNet

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) clean photo in [-1,1] -> (B,latent_dim) global latent."""
        return self.encoder(image)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, buffers: torch.Tensor,
                image: torch.Tensor | None = None, latent: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise for ``x_t`` at steps ``t``; the latent is given or encoded from ``image``."""
        if latent is None:
            if image is None:
                raise ValueError("DiffusionRig.forward needs image or latent")
            latent = self.encoder(image)
        return self.denoisingUNet(x_t, t, buffers, latent)


def count_parameters(config: ModelConfig | str) -> int:
    """Trainable parameter count of a config, built on the meta device (no memory, milliseconds)."""
    with torch.device("meta"):
        model = DiffusionRig(config)
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def global_latent(model: DiffusionRig, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(B,3,S,S) photos in [-1,1] -> (B,latent_dim) latents, with the encoder in eval mode (BatchNorm stats)."""
    was_training = model.encoder.training
    model.encoder.eval()
    try:
        device = next(model.encoder.parameters()).device
        out = [model.encoder(images[i : i + batch_size].to(device)) for i in range(0, images.shape[0], batch_size)]
    finally:
        model.encoder.train(was_training)
    return torch.cat(out, 0)


# ---- official checkpoints (.pt from the official code: a plain state dict, maybe nested) ----

_NEST_KEYS = ("model", "state_dict", "model_state_dict", "ema")


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of an official DiffusionRig ``.pt``, loaded without unpickling arbitrary objects."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/format failure is a bad file
        raise ValueError(f"{path}: not a weights-only torch checkpoint ({exc})") from exc
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = [k for k in _NEST_KEYS if isinstance(obj.get(k), dict)]
        if not nested:
            raise ValueError(f"{path}: no state dict found (top-level keys: {sorted(obj)[:10]})")
        obj = obj[nested[0]]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    # DDP-wrapped saves prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def build_from_state(config: ModelConfig | str, state: dict[str, torch.Tensor], source: str) -> DiffusionRig:
    """A model holding ``state``'s tensors (CPU), built without initializing weights it would overwrite."""
    return DiffusionRig.from_state(get_config(config), state, source)


def load_official(path: str | Path, config: ModelConfig | str = "paper") -> DiffusionRig:
    """An official DiffusionRig checkpoint as a facerig model (on CPU, eval mode)."""
    return build_from_state(config, read_official_state_dict(path), str(path)).eval()


def official_state_dict(model: DiffusionRig) -> dict[str, torch.Tensor]:
    """The state dict the official code's ``DiffusionRig.load_state_dict`` accepts (same keys and shapes)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_official(model: DiffusionRig, path: str | Path) -> None:
    """Write an official-format ``.pt`` (a plain tensor dict, loadable with ``weights_only=True``)."""
    buf = io.BytesIO()
    torch.save(official_state_dict(model), buf)
    atomic_write_bytes(path, buf.getvalue())
