import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import icosphere, mesh_model, shared_path

from facerig.capture.align import align_face
from facerig.edit.detail import MAX_SIDE, MIN_SIDE, compose, full_crop, full_crop_size, surface_correspondence, warp
from facerig.face3d.camera import project
from facerig.face3d.light import directional_light
from facerig.render import rasterize, sh_shading
from facerig.render.renderer import vertex_normals

FREQ = 40
STYLERIG_FRAME = (0.5, 0.34, 1.7)  # the generator sees a tight face in the crop's upper middle


@pytest.fixture(scope="module")
def sphere():
    """A 'head': a unit-diameter icosphere and its frontal parameters (orthographic, filling the view)."""
    verts, faces = icosphere(5, radius=0.5)
    model = mesh_model(verts.float(), faces)
    params = model.default_params(1)
    params.cam[:] = torch.tensor([1.6, 0.0, 0.0])
    return model, params


def turned(params, yaw_deg: float = 0.0, pitch_deg: float = 0.0):
    p = params.clone()
    p.rotation[:] = torch.tensor([math.radians(pitch_deg), math.radians(yaw_deg), 0.0])
    return p


def painted(model, params, size: int, light: bool = False):
    """A photo of the sphere at ``size``: a fine pattern fixed on its surface (period about 8 % of the
    side), times its SH shading when ``light``; the surface point seen per pixel in model coordinates."""
    geo = model(params)
    frags = rasterize(project(geo.vertices, params, "orthographic", size), model.faces, size, size)
    p = frags.interpolate(model.template[None])
    pattern = 0.5 + 0.4 * torch.sin(FREQ * p[:, :1]) * torch.sin(FREQ * p[:, 1:2]) * torch.sin(FREQ * p[:, 2:3])
    if light:
        normal = F.normalize(frags.interpolate(vertex_normals(geo.vertices, model.faces)), dim=-1)
        pattern = pattern * sh_shading(normal, params.light[0])
    else:
        pattern = pattern.expand(-1, 3)
    return frags.to_image(pattern), frags.to_image(p), frags.mask()


def test_no_edit_maps_every_pixel_to_itself(sphere):
    model, params = sphere
    corr = surface_correspondence(model, params, params.clone(), 128)
    assert corr.flow.shape == (1, 2, 128, 128) and corr.confidence.shape == (1, 1, 128, 128)
    assert corr.flow.abs().max() * 128 < 1e-3  # pixels
    assert corr.confidence.min() > 0.999 and torch.equal(corr.ratio, torch.ones_like(corr.ratio))
    image = torch.rand(1, 3, 128, 128)
    assert (warp(image, corr.flow) - image).abs().max() < 1e-4


@pytest.mark.parametrize("yaw,pitch", [(25.0, 0.0), (-20.0, 10.0)])
def test_warped_detail_follows_a_head_rotation(sphere, yaw, pitch):
    model, params = sphere
    edited = turned(params, yaw, pitch)
    src, _, _ = painted(model, params, 128)
    truth, point, on_face = painted(model, edited, 128)
    corr = surface_correspondence(model, params, edited, 128)
    carried = warp(src, corr.flow)
    trusted = (corr.confidence[0, 0] > 0.99) & (on_face[0, 0] > 0)
    assert trusted.sum() > 0.6 * on_face.sum()  # most of the turned face was seen in the source
    err = (carried - truth).abs().mean(1)[0][trusted]
    assert err.mean() < 0.02 and err.mean() < 0.1 * (src - truth).abs().mean(1)[0][trusted].mean()
    # surface the source faced away from (its point was on the far side, z < 0) is not trusted
    newly_seen = (point[0, 2] < -0.05) & (on_face[0, 0] > 0)
    assert newly_seen.sum() > 50 and corr.confidence[0, 0][newly_seen].max() < 0.5
    # composed on a perfect rig's output (the turned sphere at 16 px, too coarse for the pattern), the result at
    # 128 px is the turned photo
    down = lambda x: F.interpolate(x, size=(16, 16), mode="area") * 2 - 1  # noqa: E731
    out = compose(src, down(src), down(truth), corr).image
    err, blurred = (out - truth).abs().mean(1)[0][trusted], (F.interpolate(down(truth), size=(128, 128), mode="bicubic") * 0.5 + 0.5 - truth).abs().mean(1)[0][trusted]
    assert err.mean() < 0.15 * blurred.mean()


def test_detail_is_reshaded_where_the_light_changed(sphere):
    model, params = sphere
    lit = lambda p, x: p.replace(light=directional_light(torch.tensor([[x, 0.3, 0.6]]), 0.5, 0.5))  # noqa: E731
    source, edited = lit(params, -1.0), lit(params, 1.0)
    photo, _, on_face = painted(model, source, 256, light=True)
    truth, _, _ = painted(model, edited, 256, light=True)
    assert truth.max() < 1 and photo.max() < 1  # nothing clipped
    down = lambda x: F.interpolate(x, size=(64, 64), mode="area") * 2 - 1  # noqa: E731
    # a perfect rig: the new light at its own resolution
    corr = surface_correspondence(model, source, edited, 256)
    out = compose(photo, down(photo), down(truth), corr).image
    unshaded = compose(photo, down(photo), down(truth), corr.__class__(corr.flow, corr.confidence, torch.ones_like(corr.ratio), corr.masks)).image
    face = (on_face > 0).expand(-1, 3, -1, -1)
    err, err_unshaded = ((out - truth).abs()[face]).mean(), ((unshaded - truth).abs()[face]).mean()
    assert err < 0.6 * err_unshaded and err < 0.03


@pytest.mark.parametrize("frame", [(0.5, 0.5, 1.0), STYLERIG_FRAME])
def test_no_edit_round_trip_returns_the_photo(sphere, frame):
    """A rig that gives back what it saw: the full-resolution result is the photo, detail and all."""
    from facerig.stylerig.model import frame_crop

    model, params = sphere
    crop = torch.rand(1, 3, 512, 512)  # all detail, no low-pass content to speak of
    seen = frame_crop(crop[0], list(frame), 64)[None]
    corr = surface_correspondence(model, params, params.clone(), 256)
    out = compose(crop, seen, seen.clone(), corr, frame)
    assert out.image.shape == (1, 3, 512, 512) and out.rig.shape == (1, 3, 512, 512)
    assert out.image.dtype == out.confidence.dtype == crop.dtype
    assert (out.image - crop).abs().max() < 1e-4


def test_a_changed_rig_output_shows_through():
    """Where nothing moved, the result is the photo plus the rig's change (upsampled)."""
    from facerig.edit.detail import Correspondence

    crop = torch.rand(1, 3, 256, 256) * 0.6 + 0.1
    seen = F.interpolate(crop, size=(64, 64), mode="area") * 2 - 1
    change = torch.zeros_like(seen)
    change[..., 20:40, 20:40] = 0.4  # +0.2 in [0,1]
    still = Correspondence(torch.zeros(1, 2, 64, 64), torch.ones(1, 1, 64, 64), torch.ones(1, 3, 64, 64), torch.ones(1, 2, 64, 64))
    out = compose(crop, seen, seen + change, still).image
    assert abs(float((out - crop)[..., 100:140, 100:140].mean()) - 0.2) < 0.01
    assert (out - crop)[..., :60, :60].abs().max() < 1e-4


def test_full_crop_is_capture_s_crop_at_the_photo_s_scale():
    from PIL import Image

    path = shared_path("data", "ffhq-samples", "00000.png")
    image = np.asarray(Image.open(path).convert("RGB"))
    landmarks = np.load(shared_path("data", "ffhq-samples", "00000.landmarks.npy"))
    aligned = align_face(image, landmarks + 0.5, 256)
    crop, _ = full_crop(image, aligned.transform, 256, size=256)
    assert crop.shape == (3, 256, 256)  # at capture's size, capture's crop
    assert (crop * 255 - torch.from_numpy(aligned.image).permute(2, 0, 1).float()).abs().max() <= 1
    own, _ = full_crop(image, aligned.transform, 256)
    assert 256 <= own.shape[-1] <= 270  # an FFHQ 256 px photo is about its own crop
    big = np.asarray(Image.fromarray(image).resize((1024, 1024), Image.Resampling.BICUBIC))
    to_big = np.diag([0.25, 0.25, 1.0])  # big pixels -> 256 px photo pixels
    crop_big, t_full = full_crop(big, aligned.transform @ to_big, 256)
    side = crop_big.shape[-1]
    assert crop_big.shape == (3, side, side) and 1000 <= side <= MAX_SIDE
    assert np.allclose(t_full, np.diag([side / 256, side / 256, 1.0]) @ aligned.transform @ to_big)
    small = F.interpolate(crop_big[None], size=(256, 256), mode="bilinear", antialias=True)[0]
    assert (small - crop).abs().mean() < 3 / 255  # the same crop, cut from the bigger photo's own pixels
    # sides clamp to [MIN_SIDE, MAX_SIDE]: a small face is upsampled, a huge one cut at 1024
    assert full_crop_size(aligned.transform @ np.diag([4.0, 4.0, 1.0]), 256) == MIN_SIDE
    assert full_crop_size(aligned.transform @ np.diag([0.1, 0.1, 1.0]), 256) == MAX_SIDE


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory):
    """FFHQ 00003 upscaled to 1024 px, and its capture session."""
    from PIL import Image

    from facerig.edit import SessionCapture
    from facerig.face3d.ict import load_ict

    image = Image.open(shared_path("data", "ffhq-samples", "00003.png")).convert("RGB").resize((1024, 1024), Image.Resampling.BICUBIC)
    path = tmp_path_factory.mktemp("photo_scale") / "big.png"
    image.save(path)
    face = load_ict(shared_path("assets", "ict-facekit"))
    return path, face, SessionCapture(face)(path)


def test_an_edit_comes_back_at_the_photo_s_scale_and_into_the_photo(big_photo):
    """A rig that gives back what it saw: the edit is the photo's own 1024 px crop, and pasted back, the photo."""
    from PIL import Image

    from facerig.edit import EditResult
    from facerig.edit.photo_scale import at_photo_scale, paste_full, photo_crop
    from facerig.render import Renderer, RenderConfig

    path, face, session = big_photo
    seen = F.interpolate(session.aligned[None], size=(64, 64), mode="area")[0] * 2 - 1
    buffers = Renderer(face, RenderConfig(64))(session.params)
    result = EditResult(seen, seen.clone(), buffers, buffers, session.params, session.params.clone())
    edit = at_photo_scale(path, session, result, face)
    assert edit.size == MAX_SIDE and edit.edited.shape == edit.source.shape == (3, MAX_SIDE, MAX_SIDE)
    assert (edit.edited - edit.source).abs().max() < 1e-4
    # the crop is capture's, at four times its size
    small = F.interpolate(edit.source[None], size=(256, 256), mode="bilinear", antialias=True)[0]
    assert (small - session.aligned).abs().mean() < 3 / 255
    pasted = paste_full(edit)
    photo = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    assert pasted.shape == photo.shape and np.abs(pasted - photo).mean() < 1.5
    # a crop cut once (as the UI keeps it) gives the same edit, without the photo for pasting
    kept = photo_crop(path, session, keep_pixels=False)
    again = at_photo_scale(kept, session, result, face)
    assert torch.equal(again.edited, edit.edited)
    with pytest.raises(ValueError, match="without the photo's pixels"):
        paste_full(again)
