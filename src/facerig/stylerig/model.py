"""A trained StyleRig in one folder: the frozen generator, its truncation centre, the DFR with its parameter
space, one RigNet per mode, and the generator's framing (where FFHQ's crop lies in its images).

``StyleRigModel.save_pretrained(folder)`` / ``from_pretrained(folder)`` write and read ``config.json`` +
``model.safetensors`` (diffusers' convention, ``facerig.weights``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerig.face3d import FaceParams
from facerig.stylerig.rig import DFR, DFR_KINDS, MODES, ImageDFR, ParamSpace, RigNet, build_dfr, mix, read_parameters
from facerig.stylerig.stylegan2 import Generator, render_latents
from facerig.weights import PretrainedMixin

# Style-mixing layer groups as fractions of the W+ layers (StyleGAN's coarse 4-8 px, middle 16-32 px, fine
# above, for 1024 px: layers 0-3, 4-7, 8-17 of 18).
MIX_LAYERS = {"coarse": (0.0, 0.25), "middle": (0.25, 0.45), "fine": (0.45, 1.0)}


@dataclass
class StyleRigConfig:
    generator: dict  # Generator keyword arguments: size, style_dim, n_mlp, channels
    field_sizes: dict[str, int]  # ParamSpace layout
    modes: list[str]
    truncation: float  # psi for faces drawn from seeds
    # The FFHQ crop of a generated face, in units of the generated image: centre x, centre y, side.
    frame: list[float] = field(default_factory=lambda: [0.5, 0.5, 1.0])
    steering: bool = False  # RigNets are the steering baseline (delta p -> delta w)
    relative: bool = False  # RigNets edit by delta(w, target) - delta(w, source) (``RigNet``)
    subspace: int = 0  # RigNets write delta w in this many principal directions of W (0: all of W)
    dfr: str = "mlp"  # ``DFR_KINDS``: "mlp", the paper's DFR on W+; "image", a CNN on the generated image

    def to_dict(self) -> dict:
        d = asdict(self)
        d["generator"] = {**d["generator"], "channels": {str(k): v for k, v in d["generator"]["channels"].items()}}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StyleRigConfig":
        d = dict(d)
        gen = dict(d["generator"])
        gen["channels"] = {int(k): int(v) for k, v in gen["channels"].items()}
        d["generator"] = gen
        if d.get("dfr", "mlp") not in DFR_KINDS:
            raise TypeError(f"unknown DFR kind {d['dfr']!r}")
        unknown = set(d["modes"]) - set(MODES)
        if unknown:
            raise TypeError(f"unknown RigNet modes {sorted(unknown)}")
        return cls(**d)


class StyleRigModel(PretrainedMixin, nn.Module):
    config_class = StyleRigConfig
    weights_format = "facerig-stylerig"

    def __init__(self, config: StyleRigConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(**config.generator).requires_grad_(False)
        g = self.generator
        self.register_buffer("latent_avg", torch.zeros(g.style_dim))
        self.space = ParamSpace(config.field_sizes)
        self.dfr = build_dfr(config.dfr, g, self.space.dim).requires_grad_(False)
        self.rignets = nn.ModuleDict({
            mode: RigNet(g.n_latent, g.style_dim, sum(s.stop - s.start for s in self.space.slices(MODES[mode])),
                         steering=config.steering, relative=config.relative,
                         subspace=config.subspace).requires_grad_(False)
            for mode in config.modes})

    @classmethod
    def build(cls, generator: Generator, latent_avg: Tensor, dfr: DFR | ImageDFR, space: ParamSpace,
              rignets: dict[str, RigNet], truncation: float, frame: list[float]) -> "StyleRigModel":
        forms = {(net.steering, net.relative, net.subspace) for net in rignets.values()}
        if len(forms) != 1:
            raise ValueError(f"the RigNets of one model share one form (steering, relative, subspace), not {sorted(forms)}")
        steering, relative, subspace = forms.pop()
        config = StyleRigConfig({"size": generator.size, "style_dim": generator.style_dim, "n_mlp": len(generator.style) - 1,
                                 "channels": generator.channels}, space.sizes, list(rignets), truncation, list(frame), steering,
                                relative, subspace, dfr.kind)
        state = {**{f"generator.{k}": v for k, v in generator.state_dict().items()}, "latent_avg": latent_avg,
                 **{f"space.{k}": v for k, v in space.state_dict().items()},
                 **{f"dfr.{k}": v for k, v in dfr.state_dict().items()},
                 **{f"rignets.{m}.{k}": v for m, net in rignets.items() for k, v in net.state_dict().items()}}
        return cls.from_state(config, state, "StyleRigModel.build").eval()

    @property
    def size(self) -> int:
        return self.generator.size

    def latent(self, seed: int, truncation: float | None = None) -> Tensor:
        """(1, n_latent, style_dim) the W+ of the face drawn from ``seed`` (truncated towards the mean)."""
        psi = self.config.truncation if truncation is None else truncation
        z = torch.randn(1, self.generator.style_dim, generator=torch.Generator().manual_seed(seed))
        w = self.generator.style(z.to(self.latent_avg.device))
        w = self.latent_avg + psi * (w - self.latent_avg)
        return w[:, None].repeat(1, self.generator.n_latent, 1)

    def generate(self, w_plus: Tensor) -> Tensor:
        """Images (B,3,S,S) in [-1,1]; the generator's fixed noise, so one latent gives one image."""
        return render_latents(self.generator, w_plus)

    def latent_vector(self, w_plus: Tensor) -> Tensor:
        """DFR's normalised parameter vector of ``w_plus`` (through the generator for an image DFR)."""
        return read_parameters(self.dfr, self.generator, w_plus)

    def face_params(self, w_plus: Tensor, template: FaceParams) -> FaceParams:
        """DFR's parameters of ``w_plus``; fields it does not predict from ``template``."""
        return self.space.decode(self.latent_vector(w_plus), template)

    def mode_for(self, fields: tuple[str, ...]) -> str | None:
        """The RigNet mode that edits ``fields``: the one mode that holds exactly those fields, else ``all``;
        None when this StyleRig has neither."""
        mode = next((m for m, f in MODES.items() if set(f) == set(fields) and m in self.rignets), "all")
        return mode if mode in self.rignets else None

    def rig(self, w_plus: Tensor, target: FaceParams, fields: tuple[str, ...]) -> tuple[Tensor, str]:
        """Edited W+ that follows ``target`` in ``fields`` (of rotation, expression, light) and keeps the rest;
        returns it and the RigNet mode used (``mode_for``)."""
        mode = self.mode_for(fields)
        if mode is None:
            raise ValueError(f"this StyleRig has no RigNet for {sorted(fields)} (it has {sorted(self.rignets)})")
        controlled = MODES[mode]
        source = self.latent_vector(w_plus)
        wanted = mix(source, self.space.encode(target), self.space, fields)
        return self.rignets[mode](w_plus, self.space.select(wanted, controlled), self.space.select(source, controlled)), mode


def style_mix(w_a: Tensor, w_b: Tensor, layers: str) -> Tensor:
    """``w_a`` with the ``layers`` group ("coarse", "middle", "fine") of its W+ layers taken from ``w_b``."""
    if layers not in MIX_LAYERS:
        raise ValueError(f"layers must be one of {', '.join(MIX_LAYERS)}, not {layers!r}")
    n = w_a.shape[1]
    lo, hi = (round(f * n) for f in MIX_LAYERS[layers])
    out = w_a.clone()
    out[:, lo:hi] = w_b[:, lo:hi]
    return out


def to_frame(params: FaceParams, frame: list[float]) -> FaceParams:
    """Parameters fitted in the FFHQ crop re-expressed in the generator's framing (orthographic camera):
    ndc_g = ndc * side + (2 cx - 1, 1 - 2 cy)."""
    cx, cy, side = frame
    scale = params.cam[:, :1] * side
    shift = params.cam.new_tensor([2 * cx - 1, 1 - 2 * cy])
    return params.replace(cam=torch.cat([scale, params.cam[:, 1:] + shift / scale], 1))


def frame_crop(aligned: Tensor, frame: list[float], size: int) -> Tensor:
    """The generator's framing (size x size, [-1,1]) of a face from its FFHQ crop ``aligned`` (3,A,A) in
    [0,1]: generated pixel g (unit coords) sits at FFHQ-crop coords (g - centre) / side + 0.5."""
    cx, cy, side = frame
    g = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    u = ((g - cx) / side + 0.5) * 2 - 1
    v = ((g - cy) / side + 0.5) * 2 - 1
    grid = torch.stack(torch.meshgrid(v, u, indexing="ij")[::-1], -1)[None]
    # Area-reduce first: the FFHQ crop has several source pixels per generated pixel.
    src = aligned[None]
    k = int(aligned.shape[-1] / (size * side))
    if k > 1:
        src = F.interpolate(src, size=(aligned.shape[-2] // k, aligned.shape[-1] // k), mode="area")
    return F.grid_sample(src, grid.to(src), mode="bilinear", padding_mode="border", align_corners=False)[0] * 2 - 1
