"""Analysis-by-synthesis fitting of a morphable model to aligned photos (DECA's role, without DECA).

Coarse to fine, batched, on any device:
1. camera from a closed-form similarity fit of the mean face's landmarks to the detected ones;
2. landmarks: pose and camera, then identity and expression, with statistical priors. Jaw-contour
   landmarks slide to the face's silhouette ("dynamic contour"), so turned heads fit;
3. photometric, on the fitted geometry: SH light in closed form, then light and albedo together under a
   robust (trimmed Charbonnier) colour loss inside the rendered skin, so hair, glasses and other occluders
   that the model cannot explain are ignored. Geometry stays with the landmarks: letting the colour loss
   move it made the landmark fit worse on FFHQ.
In album mode one identity shape (and optionally one albedo) is shared by every photo of the batch.
Only the orthographic (DECA) camera is fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facerig.face3d.camera import project
from facerig.face3d.landmarks import contour_candidates, landmark_point_index, project_landmarks
from facerig.face3d.light import directional_light
from facerig.face3d.model import MorphableModel
from facerig.face3d.params import FaceParams
from facerig.render import Buffers, Renderer, RenderConfig, rasterize, vertex_normals
from facerig.render.sh import sh_basis

# Landmark weights by iBUG group: the contour is least reliable, eyes and mouth most.
_GROUPS = {"contour": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48), "mouth": range(48, 68)}
_GROUP_WEIGHT = {"contour": 1.0, "brows": 1.0, "nose": 1.0, "eyes": 1.5, "mouth": 1.5}


class Adam:
    """``torch.optim.Adam`` (default betas and eps, no weight decay), the same update step for step.

    The first ``torch.optim`` optimizer a process builds imports torch._dynamo (about 0.7 s here), and a
    single-photo fit sits on the latency path of every edit.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        (b1, b2), self.steps = self.betas, self.steps + 1
        step_size = self.lr / (1 - b1 ** self.steps)
        bias_correction2_sqrt = (1 - b2 ** self.steps) ** 0.5
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / bias_correction2_sqrt).add_(self.eps), value=-step_size)


@dataclass
class FitConfig:
    image_size: int = 256
    album: bool = False
    share_albedo: bool = False  # album mode: one albedo for all photos too
    pose_iters: int = 40
    landmark_iters: int = 300
    photo_iters: int = 60
    photo_size: int = 64  # the photometric stage renders at this resolution
    lr: float = 0.05
    # Priors, relative to the landmark loss (squared distance in units of the image size: 1 px at 256 px
    # is 1.5e-5), so a unit identity coefficient costs about as much as a landmark 1 px off.
    w_shape: float = 1e-7
    w_expression: float = 1e-5
    w_albedo: float = 1e-4
    w_light_colour: float = 1e-2  # keeps the light nearly white so skin colour goes to albedo
    w_light_residual: float = 1e-2  # the free SH part beyond ambient + one distant light
    trim: float = 0.8  # photometric: the worst (1 - trim) of face pixels are treated as occluders
    dynamic_contour: bool = True


@dataclass
class FitResult:
    params: FaceParams
    buffers: Buffers  # rendered at image_size
    landmark_error: torch.Tensor  # (B,) mean distance in pixels of image_size
    photometric_error: torch.Tensor  # (B,) mean absolute colour error over the kept face pixels, [0,1] units
    landmarks: torch.Tensor  # (B,68,2) the fitted model's landmarks (with the dynamic contour), pixels


def landmark_weights(device) -> torch.Tensor:
    w = torch.ones(68, device=device)
    for name, idx in _GROUPS.items():
        w[list(idx)] = _GROUP_WEIGHT[name]
    return w / w.mean()


def similarity_init(model: MorphableModel, landmarks: torch.Tensor, size: int) -> torch.Tensor:
    """Orthographic camera [scale, tx, ty] aligning the mean face's inner landmarks to the detected ones."""
    lmk = (model.template[model.landmark_vertices] * model.landmark_bary[..., None]).sum(1)[17:, :2]  # (51,2)
    target = torch.stack([landmarks[..., 0] / (size / 2) - 1, 1 - landmarks[..., 1] / (size / 2)], -1)[:, 17:]
    mu_m, mu_t = lmk.mean(0), target.mean(1)
    scale = ((target - mu_t[:, None]).norm(dim=-1).mean(1)) / (lmk - mu_m).norm(dim=-1).mean()
    shift = mu_t / scale[:, None] - mu_m
    return torch.cat([scale[:, None], shift], 1)


class _Fitter:
    """Holds the optimisation state for one batch."""

    def __init__(self, model: MorphableModel, images: torch.Tensor, landmarks: torch.Tensor, cfg: FitConfig):
        self.model, self.cfg = model, cfg
        self.size = cfg.image_size
        self.images, self.target = images, landmarks
        b = images.shape[0]
        p = model.default_params(b)
        shape_rows = 1 if cfg.album else b
        albedo_rows = 1 if (cfg.album and cfg.share_albedo) else b
        self.vars = {
            "rotation": torch.zeros(b, 3, device=images.device),
            "cam": similarity_init(model, landmarks, self.size),
            "shape": torch.zeros(shape_rows, model.n_shape, device=images.device),
            "expression": torch.zeros(b, model.n_expression, device=images.device),
            "albedo": torch.zeros(albedo_rows, model.n_albedo, device=images.device),
            "light": p.light.clone(),
        }
        self.base = p
        self.lmk_weight = landmark_weights(images.device)
        self.cand_idx, self.cand_mask = contour_candidates(model)
        self.evaluator = model.point_evaluator(landmark_point_index(model, self.cand_idx))
        self.contour = None  # chosen silhouette vertex per dynamic landmark, (B,12)
        skin = torch.zeros(model.n_vertices, device=images.device)
        skin[model.regions.get("narrow_face", torch.arange(model.n_vertices))] = 1.0
        self.skin_corners = skin[model.faces][..., None]  # (F,3,1)

    def params(self) -> FaceParams:
        v, b = self.vars, self.images.shape[0]
        return self.base.replace(
            rotation=v["rotation"], cam=v["cam"], shape=v["shape"].expand(b, -1), expression=v["expression"],
            albedo=v["albedo"].expand(b, -1), light=v["light"],
        )

    def model_landmarks(self, params: FaceParams, update_contour: bool, vertices: torch.Tensor | None = None) -> torch.Tensor:
        lmk, contour = project_landmarks(self.model, params, self.size, (self.cand_idx, self.cand_mask),
                                         None if update_contour else self.contour, vertices, self.cfg.dynamic_contour,
                                         self.evaluator)
        self.contour = contour
        return lmk

    def landmark_loss(self, lmk: torch.Tensor) -> torch.Tensor:
        d = ((lmk - self.target) / self.size).pow(2).sum(-1)  # (B,68)
        return (d * self.lmk_weight).mean(1)

    def priors(self) -> torch.Tensor:
        v, c = self.vars, self.cfg
        return c.w_shape * v["shape"].pow(2).sum(1).mean() + c.w_expression * v["expression"].pow(2).sum(1)

    def optimise(self, names: list[str], iters: int, lr: float) -> None:
        """Adam on the landmark loss plus priors over the named variables."""
        opt = Adam([self.vars[n].requires_grad_() for n in names], lr=lr)
        for it in range(iters):
            opt.zero_grad()
            params = self.params()
            loss = self.landmark_loss(self.model_landmarks(params, it % 10 == 0)) + self.priors()
            loss.sum().backward()
            opt.step()
            with torch.no_grad():
                self.vars["expression"].clamp_(0, 1)  # blendshape weights (ICT) live in [0, 1]
        for n in names:
            self.vars[n] = self.vars[n].detach()

    def fit_reflectance(self) -> torch.Tensor:
        """SH light and albedo from the photo's colours on the fitted geometry, which stays fixed: light in
        closed form, then light and albedo by Adam on a trimmed Charbonnier loss over the rendered skin.
        Returns each image's mean absolute colour error over the kept pixels."""
        cfg, model = self.cfg, self.model
        with torch.no_grad():
            params = self.params()
            geom = model(params)
            size = cfg.photo_size
            frags = rasterize(project(geom.vertices, params, "orthographic", size), model.faces, size, size)
            item = frags.pixel // (size * size)
            basis = sh_basis(F.normalize(frags.interpolate(vertex_normals(geom.vertices, model.faces)), dim=-1))
            skin = frags.interpolate_corners(self.skin_corners)[:, 0] > 0.5
            item, basis, face = item[skin], basis[skin], frags.face[skin]
            bary = frags.bary[skin]
            small = F.interpolate(self.images, size=(size, size), mode="area")
            target = small.permute(0, 2, 3, 1).reshape(-1, 3)[frags.pixel[skin]]
            # Per-fragment albedo is linear in the albedo coefficients: mean + coeffs . basis.
            corners = model.faces[face]
            mean_alb = (model.albedo_mean[corners] * bary[..., None]).sum(1)  # (N,3)
            basis_alb = (model.albedo_basis[:, corners] * bary[None, ..., None]).sum(2)  # (A,N,3)
            free = _least_squares_light(basis, mean_alb, target, item, self.vars["light"])
        n_img = self.images.shape[0]
        # A free 9x3 code is ill-posed over the visible half of the normal sphere (1, z and 3z^2-1 are nearly
        # collinear there), so the light is ambient + one distant light, per-colour, plus a small free residual;
        # the closed-form code only seeds the direction.
        direction = free[:, 1:4].mean(-1)
        direction = torch.where(direction.norm(dim=-1, keepdim=True) > 1e-6, direction, direction.new_tensor([0.0, 0.0, 1.0]))
        light = {
            "direction": F.normalize(direction, dim=-1),
            "intensity": torch.full((n_img, 3), 0.5, device=direction.device),
            "ambient": torch.full((n_img, 3), 0.4, device=direction.device),
            "residual": torch.zeros(n_img, 9, 3, device=direction.device),
        }

        def compose() -> torch.Tensor:
            return directional_light(light["direction"], light["intensity"], light["ambient"]) + light["residual"]

        def residual_error(code: torch.Tensor) -> torch.Tensor:
            coeffs = self.vars["albedo"].expand(n_img, -1)[item]  # (N,A)
            albedo = (mean_alb + torch.einsum("na,anc->nc", coeffs, basis_alb)).clamp(0, 1)
            shading = (basis[..., None] * code[item]).sum(1)
            return (albedo * shading - target).abs().sum(-1)

        def reflectance_priors() -> torch.Tensor:
            colour = sum((light[k] - light[k].mean(-1, keepdim=True)).pow(2).sum(-1) for k in ("intensity", "ambient"))
            return (cfg.w_albedo * self.vars["albedo"].pow(2).sum(1).mean() + cfg.w_light_colour * colour
                    + cfg.w_light_residual * light["residual"].pow(2).sum((1, 2)))

        params_to_fit = [self.vars["albedo"].requires_grad_()] + [t.requires_grad_() for t in light.values()]
        opt = Adam(params_to_fit, lr=cfg.lr)
        for _ in range(cfg.photo_iters):
            opt.zero_grad()
            err = residual_error(compose())
            keep = _trim(err.detach(), item, n_img, cfg.trim)
            per_image = torch.zeros(n_img, device=err.device).index_add(0, item[keep], torch.sqrt(err[keep] ** 2 + 1e-4))
            count = torch.bincount(item[keep], minlength=n_img).clamp_min(1)
            (per_image / count + reflectance_priors()).sum().backward()
            opt.step()
        with torch.no_grad():
            self.vars["light"], self.vars["albedo"] = compose().detach(), self.vars["albedo"].detach()
            err = residual_error(self.vars["light"])
            keep = _trim(err, item, n_img, cfg.trim)
            total = torch.zeros(n_img, device=err.device).index_add(0, item[keep], err[keep])
            count = torch.bincount(item[keep], minlength=n_img)
            return torch.where(count > 0, total / count.clamp_min(1) / 3, torch.full_like(total, float("nan")))

    def run(self) -> FitResult:
        cfg = self.cfg
        self.optimise(["rotation", "cam"], cfg.pose_iters, cfg.lr)
        self.optimise(["rotation", "cam", "shape", "expression"], cfg.landmark_iters, cfg.lr)
        photo_err = self.fit_reflectance()
        with torch.no_grad():
            params = self.params().detach()
            geom = self.model(params)
            lmk = self.model_landmarks(params, True, geom.vertices)
            lmk_err = (lmk - self.target).norm(dim=-1).mean(1)
            buffers = Renderer(self.model, RenderConfig(self.size)).render_geometry(geom, params)
        return FitResult(params=params.map(lambda t: t.contiguous()), buffers=buffers, landmark_error=lmk_err,
                         photometric_error=photo_err, landmarks=lmk)


def _trim(err: torch.Tensor, item: torch.Tensor, n_img: int, quantile: float) -> torch.Tensor:
    """Keep each image's pixels up to its ``quantile`` of error: the rest are occluders (hair, hands...)."""
    keep = torch.zeros_like(err, dtype=torch.bool)
    for i in range(n_img):
        sel = item == i
        if sel.any():
            keep[sel] = err[sel] <= torch.quantile(err[sel], quantile)
    return keep


def _least_squares_light(basis: torch.Tensor, albedo: torch.Tensor, target: torch.Tensor, item: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Per image and colour, the SH code minimising |albedo * basis . code - target|^2 (lightly ridged)."""
    out = light.clone()
    eye = 1e-3 * torch.eye(9, device=basis.device, dtype=basis.dtype)
    for i in range(light.shape[0]):
        sel = item == i
        if sel.sum() < 50:  # too little skin visible to say anything about the light
            continue
        for c in range(3):
            a = basis[sel] * albedo[sel, c : c + 1]
            out[i, :, c] = torch.linalg.solve(a.t() @ a + eye, a.t() @ target[sel, c])
    return out


def fit(images: torch.Tensor, landmarks: torch.Tensor, model: MorphableModel, config: FitConfig | None = None) -> FitResult:
    """Fit ``model`` to aligned photos.

    images (B,3,S,S) in [0,1]; landmarks (B,68,2) in the same crop's pixels (x right, y down, pixel centres
    at +0.5), iBUG order. With ``config.album`` every photo shares one identity shape.
    """
    cfg = config or FitConfig(image_size=images.shape[-1])
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"fit needs square images (B,3,S,S), got {tuple(images.shape)}")
    if landmarks.shape != (images.shape[0], 68, 2):
        raise ValueError(f"fit needs landmarks (B,68,2), got {tuple(landmarks.shape)}")
    if images.shape[-1] != cfg.image_size:
        raise ValueError(f"images are {images.shape[-1]} px but FitConfig.image_size is {cfg.image_size}")
    model = model.to(images.device)
    with torch.enable_grad():
        return _Fitter(model, images.float(), landmarks.float(), cfg).run()
