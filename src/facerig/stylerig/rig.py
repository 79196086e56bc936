"""StyleRig's networks and losses (Tewari et al., CVPR 2020), over a frozen StyleGAN2.

- ``ParamSpace``: the face parameters StyleRig reads and writes (those facerig's capture fits: shape,
  expression, rotation, albedo, SH light, camera) as one normalised vector; the rest (translation, jaw,
  focal) keep the face model's defaults, as capture keeps them.
- ``DFR``: W+ -> parameters, a 3-layer MLP with ELU as in the paper.
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
  (w -> v and v -> w) are trained, the paper's two-way cycle. Not in the paper: with an identity weight,
  the squared distance between face embeddings of the edited and the source image (an embedding network
  distilled from dlib's, read beside the DFR: see ``rig_train``), so edits keep who the face is.

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
from facerig.face3d.light import directional_light, split_light
from facerig.face3d.rotation import axis_angle_to_euler, euler_to_axis_angle
from facerig.render.sh import sh_shading

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

    def __init__(self, n_latent: int, style_dim: int, dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_latent * style_dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                 nn.Linear(hidden, dim))

    def forward(self, w_plus: Tensor) -> Tensor:
        return self.net(w_plus.flatten(1))


class ImageDFR(nn.Module):
    """Generated images (B,3,S,S) in [-1,1] -> normalised parameter vector: a small CNN (two 3x3 convs per
    level, stride 2 down to 4x4, 32..256 channels, ELU) and the same MLP head as ``DFR``. Composed with the
    frozen generator it is a DFR that RigNet can only satisfy by changing the image (see ``rig_train``)."""

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
    # Not in the paper: the GAN's discriminator on the edited image, softplus(-D). A DFR that reads images
    # can be satisfied by artefacts the generator paints over the face; a realism term keeps edits on faces.
    real: float = 0.0
    # Not in the paper: squared distance of the edited face's embedding from the source's (dlib units).
    identity: float = 0.0

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


def rignet_losses(rignet: RigNet, dfr, space: ParamSpace, distance: FaceDistance, template: FaceParams,
                  w: Tensor, v: Tensor, mode: str, weights: LossWeights,
                  realism: Callable[[Tensor], Tensor] | None = None,
                  targets: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """The paper's three losses for latents ``w`` and ``v`` (B, n_latent, style_dim), both directions; ``dfr``
    maps W+ to the normalised parameter vector (the MLP, or an image DFR over the generator). With
    ``weights.real``, ``realism`` maps edited W+ to a per-item loss (low for realistic images). With
    ``weights.identity``, ``dfr``'s output carries a face embedding after the parameter vector. ``targets``
    (not in the paper; e.g. a ``TargetSampler``) maps (p_a, p_b) to the parameters RigNet is asked to reach
    from a; by default the other face's, p_b."""
    if weights.real and realism is None:
        raise ValueError("a realism weight needs a realism loss (the GAN's discriminator)")
    controlled = MODES[mode]
    rest = tuple(k for k in FITTED_FIELDS if k not in controlled)
    with torch.no_grad():
        read = dfr(torch.cat([w, v]))
    if weights.identity and read.shape[1] == space.dim:
        raise ValueError("an identity weight needs a DFR whose output carries a face embedding")
    read_w, read_v = read.chunk(2)
    decode = lambda x: space.decode(x, template)  # noqa: E731
    out = {k: w.new_zeros(()) for k in ("rec", "edit", "consist", "real", "identity")}
    for a, read_a, read_b in ((w, read_w, read_v), (v, read_v, read_w)):
        p_a, p_b = read_a[:, :space.dim], read_b[:, :space.dim]
        if targets is not None:
            p_b = targets(p_a, p_b)
        edited = rignet(a, space.select(p_b, controlled), space.select(p_a, controlled))
        read_hat = dfr(edited)
        p_hat = read_hat[:, :space.dim]
        if weights.rec:
            same = rignet(a, space.select(p_a, controlled), space.select(p_a, controlled))
            out["rec"] = out["rec"] + (same - a).pow(2).mean() / 2
        if weights.edit:
            out["edit"] = out["edit"] + distance(decode(mix(p_b, p_hat, space, controlled)), decode(p_b)).mean() / 2
        if weights.consist:
            out["consist"] = out["consist"] + distance(decode(mix(p_a, p_hat, space, rest)), decode(p_a)).mean() / 2
        if weights.real:
            out["real"] = out["real"] + realism(edited).mean() / 2
        if weights.identity:
            out["identity"] = out["identity"] + (read_hat[:, space.dim:] - read_a[:, space.dim:]).pow(2).sum(1).mean() / 2
    out["total"] = sum(getattr(weights, k) * out[k] for k in ("rec", "edit", "consist", "real", "identity"))
    return out


# Edits people make (facerig edit, the UI's sliders), sampled for RigNet training targets: absolute yaw and
# pitch (degrees), a light direction in front of the face, and one or two expression groups set to a weight.
EDIT_YAW = 35.0
EDIT_PITCH = 15.0
EDIT_EXPRESSIONS = (("mouthSmile_L", "mouthSmile_R"), ("mouthSmile_L",), ("mouthSmile_R",), ("jawOpen",),
                    ("browInnerUp_L", "browInnerUp_R"), ("browDown_L", "browDown_R"), ("eyeBlink_L", "eyeBlink_R"),
                    ("mouthPucker",), ("mouthFunnel",), ("noseSneer_L", "noseSneer_R"),
                    ("mouthFrown_L", "mouthFrown_R"))


class TargetSampler:
    """RigNet's training targets beyond the paper's (the other face's parameters), ``(p_a, p_b) -> target``.

    Generated faces span little of what users ask for (this project's 64 px generator: yaw within +-12
    degrees, smile and jaw opening below 0.5 in 99 % of its captured samples), so a RigNet trained only on
    pairs of them is never asked for a 30 degree turn or a full smile. A fraction ``edits`` of each batch
    gets instead the source's own parameters with a sampled edit of the mode's fields (each of them, or for
    ``all`` a random non-empty subset): yaw uniform in +-``EDIT_YAW``, half of them with a pitch in
    +-``EDIT_PITCH``; a light from a random direction in front of the face at the source's intensity and
    ambient (as ``facerig edit --light-dir`` sets it); one or two ``EDIT_EXPRESSIONS`` groups set to a
    weight uniform in [0, 1]. ``spread`` > 0 moves the others past the other face's, to p_a + k (p_b - p_a)
    with k uniform in [1, 1 + spread]."""

    def __init__(self, face: MorphableModel, space: ParamSpace, template: FaceParams, mode: str, edits: float = 0.0,
                 spread: float = 0.0, generator: torch.Generator | None = None):
        if not 0 <= edits <= 1 or spread < 0:
            raise ValueError(f"edits must be in [0, 1] and spread >= 0, not {edits} and {spread}")
        self.space, self.template, self.fields = space, template, MODES[mode]
        self.edits, self.spread, self.gen = edits, spread, generator
        names = set(face.expression_names)
        self.groups = [[face.expression_index(n) for n in group]
                       for group in EDIT_EXPRESSIONS if names.issuperset(group)]

    def _uniform(self, n: int, low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=self.gen)

    def sample_edits(self, p: FaceParams) -> FaceParams:
        """``p`` with a sampled edit of the mode's fields per item (see the class docstring)."""
        b, q = p.batch_size, p.clone()
        chosen = torch.zeros(b, len(self.fields), dtype=torch.bool)
        while not chosen.any(1).all():  # a non-empty subset per item
            redo = ~chosen.any(1)
            chosen[redo] = torch.rand(int(redo.sum()), len(self.fields), generator=self.gen) < 0.5 \
                if len(self.fields) > 1 else True
        pick = dict(zip(self.fields, chosen.unbind(1)))
        if "rotation" in pick:
            euler = axis_angle_to_euler(p.rotation)
            euler[:, 0] = self._uniform(b, -EDIT_YAW, EDIT_YAW)
            pitched = torch.rand(b, generator=self.gen) < 0.5
            euler[:, 1] = torch.where(pitched, self._uniform(b, -EDIT_PITCH, EDIT_PITCH), euler[:, 1])
            rotation = euler_to_axis_angle(euler[:, 0], euler[:, 1], euler[:, 2]).to(p.rotation)
            q.rotation = torch.where(pick["rotation"][:, None], rotation, p.rotation)
        if "light" in pick:
            _, intensity, ambient = split_light(p.light)
            direction = torch.stack([self._uniform(b, -1, 1), self._uniform(b, -0.5, 0.7), self._uniform(b, 0.2, 1)], 1)
            relit = directional_light(direction, intensity, ambient)
            q.light = torch.where(pick["light"][:, None, None], relit, p.light)
        if "expression" in pick:
            for i in torch.nonzero(pick["expression"]).flatten().tolist():
                n_groups = 1 + int(torch.rand((), generator=self.gen) < 0.4)
                for g in torch.randperm(len(self.groups), generator=self.gen)[:n_groups].tolist():
                    q.expression[i, self.groups[g]] = float(torch.rand((), generator=self.gen))
        return q

    def __call__(self, p_a: Tensor, p_b: Tensor) -> Tensor:
        b = p_a.shape[0]
        if self.spread:
            k = 1 + self.spread * torch.rand(b, 1, generator=self.gen)
            p_b = mix(p_b, p_a + k * (p_b - p_a), self.space, self.fields)
        if self.edits:
            use = torch.rand(b, generator=self.gen) < self.edits
            if use.any():
                edited = self.space.encode(self.sample_edits(self.space.decode(p_a[use], self.template)))
                p_b = p_b.clone()
                p_b[use] = mix(p_a[use], edited, self.space, self.fields)
        return p_b
