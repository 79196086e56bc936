"""StyleRig's networks and losses (Tewari et al., CVPR 2020), over a frozen StyleGAN2.

- ``ParamSpace``: the face parameters StyleRig reads and writes (those facerig's capture fits: shape,
  expression, rotation, albedo, SH light, camera) as one normalised vector; the rest (translation, jaw,
  focal) keep the face model's defaults, as capture keeps them.
- ``DFR``: W+ -> parameters, a 3-layer MLP with ELU as in the paper; ``ImageDFR``: the generated image ->
  parameters, a small CNN, composed with the frozen generator (``read_parameters``).
- ``RigNet``: (W+, target parameters of one mode) -> edited W+. Per layer a linear encoder style_dim -> 32
  and a decoder (32 + the mode's parameters) -> delta w (two layers, ELU), w' = w + delta. The decoder's
  last layer starts at zero, so an untrained RigNet is the identity. ``steering=True`` is the paper's
  baseline: delta w from the parameter change alone (no w input). ``relative=True`` (not in the paper)
  edits by the difference of two decoder passes, w' = w + delta(w, target) - delta(w, source): asked for
  the source's own parameters it returns w exactly, so L_rec is met by construction and a rig pass never
  changes what it is not asked to. ``subspace=K`` (not in the paper) writes delta w in the K leading
  principal directions of the generator's W (``principal_directions``, as GANSpace finds them), where
  the attributes StyleRig edits lie: unconstrained, RigNet's deltas put 83-89 % of their energy outside
  the leading 32 of 256 directions (a random direction: 87.5 %) and move identity with it.
- ``face_distance``: the distance the losses use between two parameter sets, measured on what they render:
  projected mesh points (pixels at the capture size) and the face's colour (albedo x SH shading, 8-bit
  levels) for a fan of visible normal directions. It is the paper's L_render (photometric + landmark) taken
  at mesh points instead of rasterised pixels: parameter sets that render alike are close however their
  coefficients differ, and it needs no rasteriser gradients.
- ``rignet_losses``: L_rec, L_edit and L_consist of the paper with its parameter mixing: the edit loss
  compares v's parameters with v's parameters whose *controlled* part comes from DFR(w'), the consistency
  loss compares w's parameters with w's whose *uncontrolled* part comes from DFR(w'); both directions
  (w -> v and v -> w) are trained, the paper's two-way cycle. Each term is a free function.

Modes (``MODES``) name the parameters a RigNet controls; ``all`` is simultaneous control.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerig.face3d import FaceParams, MorphableModel
from facerig.face3d.camera import project
from facerig.render.sh import sh_shading
from facerig.stylerig.stylegan2 import render_latents

FITTED_FIELDS = ("shape", "expression", "rotation", "albedo", "light", "cam")
MODES = {"pose": ("rotation",), "expression": ("expression",), "light": ("light",),
         "all": ("rotation", "expression", "light")}
CODE_DIM = 32  # the paper's per-layer latent code
DISTANCE_SIZE = 256  # geometry is measured in pixels of the capture size
N_POINTS = 600  # face-region vertices sampled (fixed) for the geometry term
N_NORMALS = 64  # visible normal directions for the colour term


def field_sizes(face: MorphableModel) -> dict[str, int]:
    return {"shape": face.n_shape, "expression": face.n_expression, "rotation": 3, "albedo": face.n_albedo,
            "light": 27, "cam": 3}


class ParamSpace(nn.Module):
    """FaceParams <-> a vector normalised per dimension (mean and std of the DFR's training captures)."""

    def __init__(self, sizes: dict[str, int], mean: Tensor | None = None, std: Tensor | None = None):
        super().__init__()
        self.sizes = dict(sizes)
        n = sum(sizes.values())
        self.register_buffer("mean", mean.float() if mean is not None else torch.zeros(n))
        self.register_buffer("std", std.float() if std is not None else torch.ones(n))

    @property
    def dim(self) -> int:
        return sum(self.sizes.values())

    def slices(self, names: tuple[str, ...] = FITTED_FIELDS) -> list[slice]:
        out, start = [], 0
        for name, size in self.sizes.items():
            if name in names:
                out.append(slice(start, start + size))
            start += size
        return out

    def select(self, vector: Tensor, names: tuple[str, ...]) -> Tensor:
        """The ``names`` parts of a (B, dim) vector, concatenated."""
        return torch.cat([vector[:, s] for s in self.slices(names)], 1)

    def encode(self, params: FaceParams) -> Tensor:
        raw = torch.cat([getattr(params, k).reshape(params.batch_size, -1) for k in self.sizes], 1)
        return (raw - self.mean) / self.std

    def decode(self, vector: Tensor, template: FaceParams) -> FaceParams:
        """Parameters from a normalised vector; fields StyleRig does not predict come from ``template``
        (batch one or the same batch)."""
        raw = vector * self.std + self.mean
        b = vector.shape[0]
        fields = {k: v.expand(b, *v.shape[1:]) for k, v in template.to_dict().items()}
        for name, part in zip(self.sizes, raw.split(list(self.sizes.values()), 1)):
            fields[name] = part.reshape(b, *template.to_dict()[name].shape[1:])
        return FaceParams(**fields)


class DFR(nn.Module):
    """W+ (B, n_latent, style_dim) -> normalised parameter vector (B, dim): 3-layer MLP, ELU (the paper's)."""

    kind = "mlp"

    @classmethod
    def for_generator(cls, generator, dim: int) -> "DFR":
        return cls(generator.n_latent, generator.style_dim, dim)

    def __init__(self, n_latent: int, style_dim: int, dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_latent * style_dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                 nn.Linear(hidden, dim))

    def forward(self, w_plus: Tensor) -> Tensor:
        return self.net(w_plus.flatten(1))


class ImageDFR(nn.Module):
    """Generated images (B,3,S,S) in [-1,1] -> normalised parameter vector: a small CNN (two 3x3 convs per
    level, stride 2 down to 4x4, 32..256 channels, ELU) and the same MLP head as ``DFR``. Composed with the
    frozen generator it is a DFR that RigNet can only satisfy by changing the image (``read_parameters``)."""

    kind = "image"

    @classmethod
    def for_generator(cls, generator, dim: int) -> "ImageDFR":
        return cls(generator.size, dim)

    def __init__(self, size: int, dim: int, width: int = 32, hidden: int = 512):
        super().__init__()
        layers, c_in, c, res = [], 3, width, size
        while res > 4:
            layers += [nn.Conv2d(c_in, c, 3, 1, 1), nn.ELU(), nn.Conv2d(c, c, 3, 2, 1), nn.ELU()]
            c_in, c, res = c, min(2 * c, 256), res // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 16, hidden), nn.ELU(), nn.Linear(hidden, dim))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


DFR_KINDS = {net.kind: net for net in (DFR, ImageDFR)}


def build_dfr(kind: str, generator, dim: int) -> DFR | ImageDFR:
    """An untrained DFR of ``kind`` (``DFR_KINDS``) for ``generator``'s W+ and images."""
    if kind not in DFR_KINDS:
        raise ValueError(f"unknown DFR kind {kind!r} (known: {', '.join(DFR_KINDS)})")
    return DFR_KINDS[kind].for_generator(generator, dim)


def read_parameters(dfr: DFR | ImageDFR, generator, w_plus: Tensor) -> Tensor:
    """(B, dim) the DFR's normalised parameters of W+ (B, n_latent, style_dim): the MLP reads W+, an image
    DFR the image the frozen generator draws from it (differentiable in ``w_plus`` either way)."""
    return dfr(render_latents(generator, w_plus)) if isinstance(dfr, ImageDFR) else dfr(w_plus)


class RigNet(nn.Module):
    """(W+, target parameters of the mode, normalised) -> edited W+; every layer has its own weights."""

    def __init__(self, n_latent: int, style_dim: int, n_params: int, code_dim: int = CODE_DIM, hidden: int = 256,
                 steering: bool = False, relative: bool = False, subspace: int = 0):
        super().__init__()
        if steering and relative:
            raise ValueError("a RigNet is the steering baseline or relative, not both")
        if not 0 <= subspace <= style_dim:
            raise ValueError(f"subspace must be in [0, {style_dim}], not {subspace}")
        self.steering, self.relative = steering, relative
        inputs = n_params if steering else code_dim + n_params

        def per_layer(n_in: int, n_out: int, gain: float = 1.0) -> nn.Parameter:
            return nn.Parameter(torch.randn(n_latent, n_in, n_out) * gain / math.sqrt(n_in))

        if not steering:
            self.encoder = per_layer(style_dim, code_dim)
        self.hidden = per_layer(inputs, hidden)
        self.hidden_bias = nn.Parameter(torch.zeros(n_latent, hidden))
        n_out = subspace or style_dim
        if subspace:  # (K, style_dim) orthonormal rows, set from the generator (``principal_directions``)
            self.register_buffer("basis", torch.eye(style_dim)[:subspace])
        self.out = nn.Parameter(torch.zeros(n_latent, hidden, n_out))  # identity at initialisation
        self.out_bias = nn.Parameter(torch.zeros(n_latent, n_out))

    @property
    def subspace(self) -> int:
        return self.basis.shape[0] if hasattr(self, "basis") else 0

    def _delta(self, h: Tensor, bias: bool = True) -> Tensor:
        delta = torch.einsum("blh,lhs->bls", h, self.out) + (self.out_bias if bias else 0)
        return delta @ self.basis if self.subspace else delta

    def _hidden(self, x: Tensor) -> Tensor:
        return F.elu(torch.einsum("bli,lih->blh", x, self.hidden) + self.hidden_bias)

    def forward(self, w_plus: Tensor, target: Tensor, source: Tensor | None = None) -> Tensor:
        """``target``: the mode's parameters (B, n_params) to reach; ``source`` (DFR's of ``w_plus``) is read
        by the steering baseline, which sees their difference, and by a relative RigNet."""
        n_latent = w_plus.shape[1]
        if (self.steering or self.relative) and source is None:
            raise ValueError("the steering baseline and a relative RigNet need the source parameters")
        per_layer = lambda p: p[:, None].expand(-1, n_latent, -1)  # noqa: E731
        if self.steering:
            return w_plus + self._delta(self._hidden(per_layer(target - source)))
        code = torch.einsum("bls,lsc->blc", w_plus, self.encoder)
        h = self._hidden(torch.cat([code, per_layer(target)], -1))
        if self.relative:  # the bias and whatever the pass does to every face cancel
            return w_plus + self._delta(h - self._hidden(torch.cat([code, per_layer(source)], -1)), bias=False)
        return w_plus + self._delta(h)


def principal_directions(generator, k: int, n: int = 20_000, seed: int = 0) -> Tensor:
    """(k, style_dim) the leading principal directions of the generator's W (mapping outputs of ``n`` seeded
    z), orthonormal rows: GANSpace's basis, in which pose, light and expression directions lie (on the
    celeba-wild generator 94-97 % of the captures' class-mean directions is in the leading 16 of 256)."""
    with torch.no_grad():
        w = generator.style(torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed)))
        return torch.linalg.svd(w - w.mean(0), full_matrices=False)[2][:k].contiguous()


@dataclass
class LossWeights:
    """RigNet loss weights (the paper weighs its terms equally; ``consist`` 0 or ``edit`` 0 are its ablations)."""

    rec: float = 1.0  # L_rec: ||RigNet(w, p_w) - w||^2, per latent entry
    edit: float = 1.0  # L_edit, face_distance units
    consist: float = 1.0  # L_consist, face_distance units

    def to_dict(self) -> dict:
        return asdict(self)


class FaceDistance(nn.Module):
    """Squared distance between parameter sets by what they render (see the module docstring)."""

    def __init__(self, face: MorphableModel, n_points: int = N_POINTS, n_normals: int = N_NORMALS, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        region = face.regions.get("narrow_face", torch.arange(face.n_vertices))
        index = region[torch.randperm(len(region), generator=gen)[:n_points]]
        self.points = face.point_evaluator(index.to(face.template.device))
        # Landmark vertices carry the expression (mouth, eyes): add them with their barycentric weights.
        self.landmarks = face.point_evaluator(face.landmark_vertices.flatten())
        self.register_buffer("landmark_bary", face.landmark_bary)
        self.register_buffer("albedo_mean", face.albedo_mean[index].mean(0))
        self.register_buffer("albedo_basis", face.albedo_basis[:, index].mean(1))
        normals = torch.randn(n_normals, 3, generator=gen)
        normals[:, 2] = normals[:, 2].abs() + 0.3  # the hemisphere facing the camera, where faces are lit
        self.register_buffer("normals", F.normalize(normals, dim=-1))

    def screen(self, p: FaceParams) -> Tensor:
        lmk = (self.landmarks(p).reshape(p.batch_size, 68, 3, 3) * self.landmark_bary[..., None]).sum(2)
        pts = torch.cat([self.points(p), lmk], 1)
        return project(pts, p, "orthographic", DISTANCE_SIZE)[..., :2]

    def colour(self, p: FaceParams) -> Tensor:
        albedo = (self.albedo_mean + torch.einsum("ba,ac->bc", p.albedo, self.albedo_basis)).clamp(0, 1)
        return albedo[:, None] * sh_shading(self.normals, p.light[:, None]) * 255

    def forward(self, p: FaceParams, q: FaceParams) -> Tensor:
        """(B,) mean squared pixel distance of the mesh points + mean squared colour difference (8-bit levels)."""
        geometry = (self.screen(p) - self.screen(q)).pow(2).sum(-1).mean(1)
        colour = (self.colour(p) - self.colour(q)).pow(2).mean((1, 2))
        return geometry + colour


def mix(base: Tensor, other: Tensor, space: ParamSpace, names: tuple[str, ...]) -> Tensor:
    """``base`` (B, dim) with its ``names`` parts taken from ``other``."""
    out = base.clone()
    for s in space.slices(names):
        out[:, s] = other[:, s]
    return out


def reconstruction_loss(rignet: RigNet, a: Tensor, p_a: Tensor, space: ParamSpace, controlled: tuple[str, ...]) -> Tensor:
    """L_rec: mean squared W+ change of ``a`` (B, n_latent, style_dim) when RigNet is asked for its own
    parameters ``p_a`` (B, dim)."""
    own = space.select(p_a, controlled)
    return (rignet(a, own, own) - a).pow(2).mean()


def edit_loss(distance: FaceDistance, decode: Callable[[Tensor], FaceParams], p_target: Tensor, p_hat: Tensor,
              space: ParamSpace, controlled: tuple[str, ...]) -> Tensor:
    """L_edit: the target ``p_target`` (B, dim) against itself with its controlled part read from the edit
    (``p_hat``), in ``distance`` units, mean over the batch."""
    return distance(decode(mix(p_target, p_hat, space, controlled)), decode(p_target)).mean()


def consistency_loss(distance: FaceDistance, decode: Callable[[Tensor], FaceParams], p_source: Tensor, p_hat: Tensor,
                     space: ParamSpace, controlled: tuple[str, ...]) -> Tensor:
    """L_consist: the source ``p_source`` (B, dim) against itself with its uncontrolled part read from the
    edit (``p_hat``), in ``distance`` units, mean over the batch."""
    rest = tuple(k for k in FITTED_FIELDS if k not in controlled)
    return distance(decode(mix(p_source, p_hat, space, rest)), decode(p_source)).mean()


def rignet_losses(rignet: RigNet, dfr: Callable[[Tensor], Tensor], space: ParamSpace, distance: FaceDistance,
                  template: FaceParams, w: Tensor, v: Tensor, mode: str, weights: LossWeights,
                  targets: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """The paper's three losses for latents ``w`` and ``v`` (B, n_latent, style_dim), both directions, and
    their weighted ``total``; ``dfr`` maps W+ to the normalised parameter vector (B, dim) (the MLP, or an
    image DFR over the generator). ``targets`` (not in the paper; e.g. a ``TargetSampler``) maps (p_a, p_b)
    to the parameters RigNet is asked to reach from a; by default the other face's, p_b."""
    controlled = MODES[mode]
    with torch.no_grad():
        p_w, p_v = dfr(torch.cat([w, v])).chunk(2)
    decode = lambda x: space.decode(x, template)  # noqa: E731
    out = {k: w.new_zeros(()) for k in ("rec", "edit", "consist")}
    for a, p_a, p_b in ((w, p_w, p_v), (v, p_v, p_w)):
        if targets is not None:
            p_b = targets(p_a, p_b)
        p_hat = dfr(rignet(a, space.select(p_b, controlled), space.select(p_a, controlled)))
        if weights.rec:
            out["rec"] = out["rec"] + reconstruction_loss(rignet, a, p_a, space, controlled) / 2
        if weights.edit:
            out["edit"] = out["edit"] + edit_loss(distance, decode, p_b, p_hat, space, controlled) / 2
        if weights.consist:
            out["consist"] = out["consist"] + consistency_loss(distance, decode, p_a, p_hat, space, controlled) / 2
    out["total"] = sum(getattr(weights, k) * out[k] for k in ("rec", "edit", "consist"))
    return out
