import math

import pytest
import torch
from helpers import assert_close, icosphere, mesh_model, shared_path

from facerig.cli import main
from facerig.face3d.camera import project
from facerig.face3d.ict import load_ict
from facerig.face3d.light import directional_light
from facerig.face3d.model import random_params
from facerig.render import Renderer, RenderConfig, rasterize, sh_shading
from facerig.render.renderer import vertex_normals


def _pixel_grid(size, dtype=torch.float64):
    c = (torch.arange(size, dtype=dtype) + 0.5) / (size / 2)
    ndc_y, ndc_x = 1 - c[:, None].expand(size, size), (c - 1)[None].expand(size, size)
    return ndc_x, ndc_y


def test_sphere_normals_match_analytic():
    verts, faces = icosphere(5, radius=0.5)
    model = mesh_model(verts.float(), faces)
    p = model.default_params(1)
    p.cam[:] = torch.tensor([1.6, 0.0, 0.0])
    size = 128
    buf = Renderer(model, RenderConfig(size))(p)
    ndc_x, ndc_y = _pixel_grid(size, torch.float32)
    x, y = ndc_x / 1.6, ndc_y / 1.6
    inside = (x**2 + y**2) < 0.5**2
    analytic = torch.stack([x, y, (0.25 - x**2 - y**2).clamp_min(0).sqrt()]) / 0.5
    mask = buf.mask[0, 0] > 0
    # The polygonal silhouette differs from the circle only in a thin rim.
    assert (mask ^ inside).float().sum() < 0.01 * inside.float().sum()
    both = mask & inside
    cos = (buf.normal[0] * analytic).sum(0)[both].clamp(-1, 1)
    err = torch.rad2deg(torch.acos(cos))
    assert err.mean() < 1.0, f"mean angular error {err.mean():.3f} deg"
    assert_close(buf.normal[0].norm(dim=0)[both], torch.ones(int(both.sum())), atol=1e-5)
    assert (buf.normal[0][:, ~mask] == 0).all() and (buf.rendered[0][:, ~mask] == 0).all()


def _fibonacci_sphere(n, dtype=torch.float64):
    i = torch.arange(n, dtype=dtype) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = (1 - z * z).sqrt()
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


def test_sh_shading_is_closed_form_irradiance():
    """For bands 1-2, DECA's shading is the irradiance integral of the environment the code describes;
    band 0 is that irradiance divided by pi (DECA's constant omits A_0 = pi)."""
    torch.manual_seed(0)
    code = torch.randn(1, 9, 3, dtype=torch.float64)
    norms = torch.tensor([1 / math.sqrt(4 * math.pi), *[math.sqrt(3 / (4 * math.pi))] * 3, *[math.sqrt(15 / (4 * math.pi))] * 3,
                          0.5 * math.sqrt(15 / (4 * math.pi)), math.sqrt(5 / (16 * math.pi))], dtype=torch.float64)

    def poly(n):
        x, y, z = n.unbind(-1)
        return torch.stack([torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], -1)

    w = _fibonacci_sphere(200_000)
    radiance = (poly(w) * norms) @ code[0]  # (N,3): L(w) = sum_k code_k Y_k(w)
    normals = torch.nn.functional.normalize(torch.randn(16, 3, dtype=torch.float64), dim=-1)
    cosine = (normals @ w.t()).clamp_min(0)  # (16,N)
    irradiance = cosine @ radiance * (4 * math.pi / w.shape[0])
    deca_code = code.clone()
    deca_code[:, 0] *= math.pi  # what DECA's band 0 needs to carry to give the true irradiance
    assert_close(sh_shading(normals[None], deca_code)[0], irradiance, atol=2e-3, rtol=1e-3)


def test_gradcheck_vertices_and_light():
    verts = torch.tensor([[-0.6, -0.5, 0.1], [0.7, -0.4, 0.0], [-0.1, 0.65, -0.1], [0.6, 0.7, 0.2]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    albedo = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.5, 0.5, 0.9], [0.3, 0.6, 0.2]], dtype=torch.float64)
    light = directional_light(torch.tensor([[0.3, 0.4, 1.0]], dtype=torch.float64), 0.8, 0.3)
    cam = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    size = 12
    weights = torch.rand(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def render(v, alb, lig, c):
        from facerig.face3d.params import FaceParams

        z = torch.zeros(1, 0, dtype=torch.float64)
        p = FaceParams(shape=z, expression=z, rotation=torch.zeros(1, 3, dtype=torch.float64), translation=torch.tensor([[0, 0, -2.0]], dtype=torch.float64),
                       jaw=torch.zeros(1, 3, dtype=torch.float64), albedo=z, light=lig, cam=c, focal=torch.ones(1, 1, dtype=torch.float64))
        screen = project(v[None], p, "orthographic", size)
        frags = rasterize(screen, faces, size, size)
        n = torch.nn.functional.normalize(frags.interpolate(vertex_normals(v[None], faces)), dim=-1)
        shaded = frags.interpolate(alb[None]) * sh_shading(n, lig[0])
        return (frags.to_image(shaded) * weights).sum()

    # No pixel centre lies within the finite-difference step of an edge, so visibility is locally constant.
    assert torch.autograd.gradcheck(render, (verts.clone().requires_grad_(), albedo.requires_grad_(), light.requires_grad_(), cam.requires_grad_()), eps=1e-6, atol=1e-5)


def test_perspective_depth_is_perspective_correct():
    """A plane tilted away from a pinhole camera: per-pixel depth equals the ray-plane intersection."""
    verts = torch.tensor([[-1.0, -1.0, 0.6], [1.0, -1.0, 0.6], [1.0, 1.0, -0.6], [-1.0, 1.0, -0.6]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    model = mesh_model(verts, faces)
    p = model.default_params(1)
    p.translation[:] = torch.tensor([0.0, 0.0, -3.0])
    p.focal[:] = 2.0
    size = 64
    buf = Renderer(model, RenderConfig(size, "perspective"))(p)
    ndc_x, ndc_y = _pixel_grid(size, torch.float32)
    # plane: z = -0.6 y - 3 in camera space; ray (x/f, y/f, -1) * d  =>  -d = -0.6 * ndc_y * d / f - 3
    d = 3 / (1 - 0.3 * ndc_y)
    mask = buf.mask[0, 0] > 0
    assert mask.sum() > 0.3 * size * size
    assert_close(buf.depth[0, 0][mask], d[mask], atol=1e-4, rtol=1e-4)


def test_texture_albedo_samples_uv_layout():
    ict = load_ict(shared_path("assets", "ict-facekit"))
    r = Renderer(ict, RenderConfig(64))
    p = ict.default_params(1)
    tex = torch.zeros(1, 3, 32, 64)  # two UDIM tiles side by side
    tex[:, 0] = 0.2
    tex[:, 1] = 0.4
    tex[:, 2] = 0.6
    buf = r(p, albedo_texture=tex)
    m = buf.mask[0, 0] > 0
    assert_close(buf.albedo[0][:, m].mean(1), torch.tensor([0.2, 0.4, 0.6]), atol=1e-5)


@pytest.fixture(scope="module")
def ict():
    return load_ict(shared_path("assets", "ict-facekit"))


@pytest.mark.parametrize("projection", ["orthographic", "perspective"])
def test_landmarks_fall_inside_mask(projection):
    # Eye and inner-lip landmarks border the eye and mouth openings: render the closed head.
    closed = load_ict(shared_path("assets", "ict-facekit"), parts=("face", "head_neck", "eyes", "mouth"))
    p = random_params(closed, 8, torch.Generator().manual_seed(1))
    buf = Renderer(closed, RenderConfig(128, projection))(p)
    lm = buf.landmarks.floor().long().clamp(0, 127)
    b = torch.arange(8)[:, None].expand(8, 68)
    inside = buf.mask[b, 0, lm[..., 1], lm[..., 0]] > 0
    # Landmarks on the far side of a turned head (jaw, brow, lip corners) can be extreme points of the
    # occluding contour, with the next pixel centre just outside: a 1 px band for those.
    near = torch.nn.functional.max_pool2d(buf.mask, 3, 1, 1)[b, 0, lm[..., 1], lm[..., 0]] > 0
    assert near.all()
    assert inside.float().mean() > 0.95


def test_batch_items_render_independently(ict):
    p = random_params(ict, 3, torch.Generator().manual_seed(2))
    r = Renderer(ict, RenderConfig(64))
    both = r(p)
    one = r(p[1])
    assert_close(both.rendered[1:2], one.rendered, atol=1e-5)
    assert_close(both.landmarks[1:2], one.landmarks, atol=1e-4)


def test_render_command_writes_pngs(tmp_path, monkeypatch):
    monkeypatch.setenv("FACERIG_SHARED", str(shared_path()))
    assert main(["render", "--random", "2", "--seed", "3", "--size", "64", "--out", str(tmp_path)]) == 0
    for name in ("normal", "albedo", "shading", "rendered", "mask", "depth", "params"):
        assert any(tmp_path.glob(f"001_{name}.*"))
    assert (tmp_path / "sheet.png").stat().st_size > 0
    # params written by render are read back by render
    out2 = tmp_path / "again"
    assert main(["render", "--params", str(tmp_path / "000_params.json"), "--size", "64", "--out", str(out2)]) == 0
    assert (out2 / "000_rendered.png").read_bytes() == (tmp_path / "000_rendered.png").read_bytes()


def test_render_command_reports_bad_params(tmp_path, capsys):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    assert main(["render", "--params", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "p.json: not valid JSON" in capsys.readouterr().err


def test_render_command_reports_unusable_out_and_refused_model(tmp_path, capsys):
    """One line naming the file and the reason, exit code 2: no traceback."""
    import pickle

    (tmp_path / "file").write_text("")
    assert main(["render", "--random", "1", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'file'}: cannot be the output folder" in err[0], err
    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(pickle.dumps({"f": print}, protocol=2))  # a global FLAME files never hold
    assert main(["render", "--random", "1", "--model", "flame", "--model-path", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: refusing to load" in err[0], err
