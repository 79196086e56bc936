import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_close, shared_path

from facerig.edit import EditSpec, Session
from facerig.face3d import FaceParams
from facerig.face3d.ict import load_ict
from facerig.face3d.light import directional_light, dominant_direction, split_light
from facerig.face3d.rotation import axis_angle_to_euler, euler_to_axis_angle
from facerig.stylerig.model import StyleRigModel, frame_crop, style_mix, to_frame
from facerig.stylerig.rig import (
    DFR, MODES, FaceDistance, ImageDFR, LossWeights, ParamSpace, RigNet, build_dfr, field_sizes, mix,
    principal_directions, read_parameters, rignet_losses,
)
from facerig.stylerig.stylegan2 import Generator, render_latents
from facerig.stylerig.targets import EDIT_YAW, TargetSampler

pytestmark = pytest.mark.usefixtures("one_thread")
CHANNELS = {4: 32, 8: 32, 16: 16}


@pytest.fixture(scope="module")
def face():
    return load_ict(shared_path("assets", "ict-facekit"))


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return Generator(16, style_dim=32, n_mlp=2, channels=CHANNELS).eval().requires_grad_(False)


def _yawed(face, degrees: float, n: int = 1) -> FaceParams:
    p = face.default_params(n)
    p.rotation = euler_to_axis_angle(torch.full((n,), float(degrees)), torch.zeros(n), torch.zeros(n))
    return p


def test_param_space_round_trip_and_mix(face):
    space = ParamSpace(field_sizes(face), torch.randn(sum(field_sizes(face).values())), torch.rand(sum(field_sizes(face).values())) + 0.5)
    p = _yawed(face, 20.0, 2)
    p.expression[:, 3] = 0.7
    back = space.decode(space.encode(p), face.default_params(1))
    for k, v in p.to_dict().items():
        assert_close(getattr(back, k), v, atol=1e-5)
    a, b = space.encode(p), space.encode(face.default_params(2))
    mixed = space.decode(mix(a, b, space, ("rotation",)), face.default_params(1))
    assert_close(mixed.rotation, torch.zeros(2, 3), atol=1e-5)
    assert_close(mixed.expression, p.expression, atol=1e-5)


def test_face_distance_sees_pose_light_and_expression(face):
    d = FaceDistance(face)
    base = face.default_params(1)
    assert float(d(base, base)) == 0.0
    turned = _yawed(face, 10.0)
    smiling = base.clone()
    smiling.expression[:, face.expression_index("mouthSmile_L")] = 1.0
    relit = base.replace(light=directional_light(torch.tensor([[-1.0, 0.0, 0.5]]), 1.0, 0.5))
    for other in (turned, smiling, relit):
        assert float(d(base, other)) > 1.0 and torch.allclose(d(base, other), d(other, base))
    assert float(d(base, _yawed(face, 20.0))) > float(d(base, turned))


def test_rignet_starts_as_identity_and_steering_needs_the_source():
    net = RigNet(6, 32, 3)
    w = torch.randn(2, 6, 32)
    assert torch.equal(net(w, torch.randn(2, 3)), w)
    with pytest.raises(ValueError, match="source"):
        RigNet(6, 32, 3, steering=True)(w, torch.randn(2, 3))


def test_relative_rignet_keeps_w_when_asked_for_its_own_parameters():
    """Trained weights (here random, biases too) move w for any other target, never for the source's own."""
    torch.manual_seed(0)
    net = RigNet(6, 32, 3, relative=True)
    for p in (net.out, net.out_bias, net.hidden_bias):
        torch.nn.init.normal_(p, std=0.1)
    w, own, other = torch.randn(4, 6, 32), torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(net(w, own, own), w)
    assert (net(w, other, own) - w).abs().amax((1, 2)).min() > 1e-3
    direct = RigNet(6, 32, 3)
    direct.load_state_dict(net.state_dict())
    assert (direct(w, own) - w).abs().amax() > 1e-3  # the paper's form needs L_rec to learn this
    with pytest.raises(ValueError, match="source"):
        net(w, other)
    with pytest.raises(ValueError, match="both"):
        RigNet(6, 32, 3, steering=True, relative=True)


def test_subspace_rignet_moves_w_only_along_its_basis(generator):
    """Delta w lies in the span of the generator's leading principal directions, which are orthonormal."""
    torch.manual_seed(0)
    basis = principal_directions(generator, 4, n=2000)
    assert_close(basis @ basis.T, torch.eye(4), atol=1e-5, rtol=0)
    net = RigNet(generator.n_latent, generator.style_dim, 3, subspace=4)
    net.basis.copy_(basis)
    torch.nn.init.normal_(net.out, std=0.1)
    w = torch.randn(2, generator.n_latent, generator.style_dim)
    delta = net(w, torch.randn(2, 3)) - w
    assert delta.abs().amax() > 1e-3
    assert_close(delta @ basis.T @ basis, delta, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="subspace"):
        RigNet(6, 32, 3, subspace=33)


def test_rignet_losses_train(face):
    """A few steps through a fixed random DFR lower L_edit: RigNet learns to move the controlled parameters."""
    torch.manual_seed(0)
    dim = sum(field_sizes(face).values())
    neutral = ParamSpace(field_sizes(face)).encode(face.default_params(1))[0]
    space = ParamSpace(field_sizes(face), neutral, torch.full((dim,), 0.2))  # faces ~0.2 rad around the neutral one
    dfr = DFR(6, 32, space.dim, hidden=64).requires_grad_(False)
    net = RigNet(6, 32, 3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    d, template = FaceDistance(face), face.default_params(1)
    w, v = torch.randn(16, 6, 32), torch.randn(16, 6, 32)
    first = None
    for _ in range(40):
        losses = rignet_losses(net, dfr, space, d, template, w, v, "pose", LossWeights())
        first = first or float(losses["edit"].detach())
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    assert all(torch.isfinite(x) for x in losses.values())
    assert float(losses["edit"].detach()) < 0.5 * first
    no_consist = rignet_losses(net, dfr, space, d, template, w, v, "pose", LossWeights(consist=0.0))
    assert float(no_consist["consist"]) == 0.0
    assert_close(no_consist["total"], no_consist["rec"] + no_consist["edit"], rtol=1e-5)


def test_dfr_kinds_read_w_plus_or_the_image_it_draws(generator):
    """An MLP DFR reads W+; an image DFR the generator's image of it: one gradient path either way."""
    w = torch.randn(2, generator.n_latent, generator.style_dim, requires_grad=True)
    mlp, image = build_dfr("mlp", generator, 5), build_dfr("image", generator, 5)
    assert isinstance(mlp, DFR) and isinstance(image, ImageDFR) and (mlp.kind, image.kind) == ("mlp", "image")
    assert torch.equal(read_parameters(mlp, generator, w), mlp(w))
    assert torch.equal(read_parameters(image, generator, w), image(render_latents(generator, w)))
    read_parameters(image, generator, w).sum().backward()
    assert w.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown DFR kind"):
        build_dfr("resnet", generator, 5)


def _euler(params: FaceParams) -> torch.Tensor:
    return axis_angle_to_euler(params.rotation)


def test_target_sampler_edits_only_the_modes_fields(face):
    """Sampled edits change the mode's fields as facerig edit would and leave every other parameter as the
    source's; the rest of the batch keeps the other face's targets."""
    space, template = ParamSpace(field_sizes(face)), face.default_params(1)
    torch.manual_seed(0)
    p_a, p_b = 0.1 * torch.randn(64, space.dim), 0.1 * torch.randn(64, space.dim)
    source = space.decode(p_a, template)
    smile = [face.expression_index("mouthSmile_L"), face.expression_index("mouthSmile_R")]
    for mode in MODES:
        sampler = TargetSampler(face, space, template, mode, edits=1.0, generator=torch.Generator().manual_seed(2))
        out = space.decode(sampler(p_a, p_b), template)
        for name in ("shape", "albedo", "cam"):
            assert_close(getattr(out, name), getattr(source, name), atol=1e-5)
        changed = {"rotation": (_euler(out) - _euler(source)).abs().amax(1) > 1e-3,
                   "light": (out.light - source.light).abs().amax((1, 2)) > 1e-5,
                   "expression": (out.expression - source.expression).abs().amax(1) > 1e-6}
        for name, moved in changed.items():
            if name in MODES[mode]:
                assert moved.float().mean() > (0.9 if mode != "all" else 0.2), (mode, name)
            else:
                assert not moved.any(), (mode, name)
        assert torch.stack([changed[k] for k in MODES[mode]]).any(0).all()  # every item gets an edit
        if "rotation" in MODES[mode]:
            yaw = _euler(out)[changed["rotation"], 0]
            assert yaw.abs().max() <= EDIT_YAW + 1e-3 and yaw.abs().max() > 20  # well past generated faces' +-12
        if "light" in MODES[mode]:
            relit = out.light[changed["light"]]
            assert (dominant_direction(relit)[:, 2] > 0).all()  # from in front of the face
            assert_close(split_light(relit)[1], split_light(source.light[changed["light"]])[1], rtol=1e-4)
        if mode == "expression":
            assert (out.expression[:, smile] != source.expression[:, smile]).any()
            assert ((out.expression - source.expression).abs() > 1e-6).sum(1).max() <= 4  # one or two groups
    half = TargetSampler(face, space, template, "pose", edits=0.5, generator=torch.Generator().manual_seed(3))(p_a, p_b)
    kept = (half == p_b).all(1)
    assert 0.25 < kept.float().mean() < 0.75
    assert torch.equal(space.select(half[~kept], ("shape",)), space.select(p_a[~kept], ("shape",)))
    with pytest.raises(ValueError, match="edits"):
        TargetSampler(face, space, template, "pose", edits=1.5)


def _model(face, generator, modes=tuple(MODES), relative: bool = False) -> StyleRigModel:
    space = ParamSpace(field_sizes(face))
    torch.manual_seed(1)
    dfr = DFR(generator.n_latent, generator.style_dim, space.dim)
    rignets = {}
    for mode in modes:
        net = RigNet(generator.n_latent, generator.style_dim, sum(s.stop - s.start for s in space.slices(MODES[mode])),
                     relative=relative)
        torch.nn.init.normal_(net.out, std=0.05)  # not the identity, so edits show
        rignets[mode] = net
    return StyleRigModel.build(generator, torch.zeros(generator.style_dim), dfr, space, rignets, 0.7, [0.5, 0.55, 1.6])


def test_model_folder_round_trip_and_rig_modes(face, generator, tmp_path):
    model = _model(face, generator)
    folder = model.save_pretrained(tmp_path / "rig")
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "StyleRigModel"
    loaded = StyleRigModel.from_pretrained(folder)
    w = loaded.latent(5)
    assert torch.equal(w, model.latent(5)) and not torch.equal(w, model.latent(6))
    assert torch.equal(loaded.generate(w), model.generate(w))
    target = _yawed(face, 30.0)
    assert loaded.rig(w, target, ("rotation",))[1] == "pose"
    assert loaded.rig(w, target, ("rotation", "light"))[1] == "all"
    assert not torch.equal(loaded.rig(w, target, ("rotation",))[0], w)


def test_relative_model_round_trip_keeps_unedited_faces(face, generator, tmp_path):
    """A relative rig saved and loaded is still relative: asked for DFR's own parameters it returns w."""
    loaded = StyleRigModel.from_pretrained(_model(face, generator, relative=True).save_pretrained(tmp_path / "rig"))
    assert loaded.config.relative and all(net.relative for net in loaded.rignets.values())
    w, template = loaded.latent(3), face.default_params(1)
    own = loaded.face_params(w, template)
    # exact up to the float round trip of parameters -> normalised vector
    assert_close(loaded.rig(w, own, ("rotation", "expression", "light"))[0], w, atol=1e-5, rtol=0)
    assert not torch.equal(loaded.rig(w, _yawed(face, 30.0), ("rotation",))[0], w)


def test_style_mix_takes_layer_groups(generator):
    a, b = torch.zeros(1, generator.n_latent, 32), torch.ones(1, generator.n_latent, 32)
    took = [style_mix(a, b, g)[0, :, 0] for g in ("coarse", "middle", "fine")]
    assert torch.equal(sum(took), torch.ones(generator.n_latent))  # every layer in exactly one group
    assert took[0][0] == 1 and took[2][-1] == 1
    with pytest.raises(ValueError):
        style_mix(a, b, "all")


def test_to_frame_and_frame_crop_agree(face):
    """A landmark projected with to_frame lands where frame_crop puts that FFHQ-crop pixel."""
    from facerig.face3d.camera import project

    frame, size, aligned_size = [0.45, 0.55, 1.6], 32, 256
    p = face.default_params(1)
    lmk = face(p).landmarks
    in_crop = project(lmk, p, "orthographic", aligned_size)[0, :, :2] / aligned_size
    in_frame = project(lmk, to_frame(p, frame), "orthographic", size)[0, :, :2] / size
    assert_close(in_frame, torch.tensor(frame[:2]) + (in_crop - 0.5) * frame[2], atol=1e-5)
    aligned = torch.zeros(3, aligned_size, aligned_size)
    x, y = (in_crop[30] * aligned_size).long().tolist()  # the nose tip
    aligned[:, y - 8:y + 8, x - 8:x + 8] = 1.0
    crop = frame_crop(aligned, frame, size)
    peak = torch.nonzero(crop[0] == crop[0].max()).float().mean(0).flip(0) + 0.5
    assert_close(peak / size, in_frame[30], atol=1.5 / size)


@pytest.fixture(scope="module")
def editor(face, generator, tmp_path_factory):
    from facerig.stylerig.editor import StyleRigEditor

    folder = _model(face, generator).save_pretrained(tmp_path_factory.mktemp("rig") / "model")
    ed = StyleRigEditor(folder, face_model=face)

    def fake_capture(photo, name=None):  # generated 16 px faces have no dlib face: a fixed fit stands in
        return Session(name or "image", torch.rand(3, 64, 64), _yawed(face, 5.0))

    ed._capture = fake_capture
    return ed


def test_editor_seeds_edits_and_mixing(editor, face):
    s = editor.prepare_seed(3)
    nothing = editor.edit(s, EditSpec())
    assert torch.equal(nothing.edited, s.cache.image)  # no field edited: no RigNet pass
    seen = []
    turned = editor.edit(s, EditSpec(yaw=30.0), on_step=seen.append)
    again = editor.edit(editor.prepare_seed(3), EditSpec(yaw=30.0))
    assert torch.equal(turned.edited, again.edited) and not torch.equal(turned.edited, nothing.edited)
    assert [p.stage for p in seen] == ["generate"]
    assert turned.target_params.rotation[0, 1] == pytest.approx(np.radians(30.0), abs=1e-4)
    other = editor.prepare_seed(9)
    mixed = editor.edit(s, EditSpec(latent_from="x"), {"latent": other})
    assert not torch.equal(mixed.edited, nothing.edited)


def test_editor_projects_a_photo(editor):
    s = editor.prepare(np.zeros((64, 64, 3), dtype=np.uint8))
    seen = []
    result = editor.edit(s, EditSpec(), steps=30, on_step=seen.append)
    assert [p.stage for p in seen] == ["project"] * 30 + ["generate"]
    assert result.source.shape == result.edited.shape == (3, 16, 16)
    start = (editor.model.generate(editor.model.latent_avg[None, None].repeat(1, 6, 1)) - result.source).pow(2).mean()
    assert (result.edited - result.source).pow(2).mean() < start  # projection got closer than the mean face
    assert 30 in s.cache.projections


def test_editor_refuses_refine_and_albums():
    from facerig.stylerig.editor import StyleRigEditor

    with pytest.raises(ValueError, match="refine"):
        StyleRigEditor.check_options(refine=1)
    with pytest.raises(ValueError, match="album"):
        StyleRigEditor("x", shape=torch.zeros(1, 100))


def test_cli_refuses_bad_input_in_one_line(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "facerig.cli", *a], capture_output=True, text=True)  # noqa: E731
    r = run("stylerig", "sample", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "missing" in r.stderr


def test_evaluate_protocol_with_a_stand_in_capture(face, generator, tmp_path, monkeypatch):
    """The protocol's bookkeeping: every edit scored, the gates and the sheet written. The stand-in capture
    reads the light's ambient level from the image brightness and knows nothing else, so only light moves."""
    import facerig.capture.photo as photo
    import facerig.eval.identity as identity
    from facerig.stylerig.evaluate import EDITS, evaluate

    class Item:
        def __init__(self, image):
            self.image = image

    class Fit:
        def __init__(self, items):
            self.params = _yawed(face, 0.0, len(items))
            self.params.light = self.params.light * torch.tensor([float(it.image.mean()) / 128 for it in items])[:, None, None]

    monkeypatch.setattr(photo, "align_image", lambda image, size, name: Item(image))
    monkeypatch.setattr(photo.ModelFitter, "fit_items", lambda self, items: Fit(items))
    monkeypatch.setattr("facerig.face3d.load_model", lambda *a, **k: face)
    monkeypatch.setattr(identity, "analyze_face", lambda image, what="": identity.FaceAnalysis(
        image.reshape(-1, 3).mean(0).astype(np.float64) / 255, None))
    folder = _model(face, generator).save_pretrained(tmp_path / "model")
    summary = evaluate(folder, n=5, out=tmp_path / "eval")
    assert summary["faces"] == 5 and summary["source_face_rate"] == 1.0
    assert set(summary["edits"]) == set(EDITS) and all(e["items"] == 5 for e in summary["edits"].values())
    assert summary["edits"]["yaw+30"]["gap_rotation"] == pytest.approx(0.0)  # the stand-in never sees pose
    smile = summary["edits"]["smile"]  # nor expression: scored on the smile coefficients and on all of them
    assert smile["gap_expression_edited"] == pytest.approx(0.0) and smile["gap_expression"] == pytest.approx(0.0)
    assert summary["gate_values"]["smile_gap_closed"]["value"] == smile["gap_expression_edited"]
    assert smile["drift_expression_others_rmse"] == pytest.approx(0.0)
    assert summary["gate_values"]["drift_within_dfr_error"]["items"]["smile:expression_others_rmse"]["dfr_error"] \
        == summary["dfr_error_median"]["expression_rmse"]
    assert set(summary["gates"]) == {"yaw_gap_closed", "light_gap_closed", "smile_gap_closed", "jaw_open_gap_closed",
                                     "identity_median", "drift_within_dfr_error"}
    assert (tmp_path / "eval" / "sheet.png").exists()
    # A variant with some RigNets only (an ablation): the edits it can make, and their gates.
    partial = _model(face, generator, modes=("light",)).save_pretrained(tmp_path / "light_only")
    summary = evaluate(partial, n=2, out=tmp_path / "eval_light")
    assert set(summary["edits"]) == {"light_left", "light_right"}
    assert set(summary["gates"]) == {"light_gap_closed", "identity_median", "drift_within_dfr_error"}


SHIPPED = sorted((Path(__file__).parents[1] / "models").glob("stylerig-*"))


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_turns_heads_and_smiles(face, folder):
    """The shipped StyleRig models, read back by their own DFR: a +20 degree yaw edit turns 8 seeded faces
    right, a smile edit raises mouthSmile, and no file is over 100 MB."""
    assert all(f.stat().st_size < 100e6 for f in folder.iterdir())
    model = StyleRigModel.from_pretrained(folder).float().eval()
    template = face.default_params(8)
    with torch.no_grad():
        w = torch.cat([model.latent(seed) for seed in range(8)])
        source = model.face_params(w, template)
        yaw, pitch, roll = axis_angle_to_euler(source.rotation).unbind(1)
        turned, mode = model.rig(w, source.replace(rotation=euler_to_axis_angle(yaw + 20, pitch, roll)), ("rotation",))
        smile = source.expression.clone()
        smile[:, [face.expression_index(n) for n in ("mouthSmile_L", "mouthSmile_R")]] = 0.8
        smiled, _ = model.rig(w, source.replace(expression=smile), ("expression",))
        yaw_gain = axis_angle_to_euler(model.face_params(turned, template).rotation)[:, 0] - yaw
        left = face.expression_index("mouthSmile_L")
        smile_gain = model.face_params(smiled, template).expression[:, left] - source.expression[:, left]
    assert mode == "pose"
    assert yaw_gain.median() > 5 and (yaw_gain > 0).float().mean() >= 0.75
    assert smile_gain.median() > 0.05 and (smile_gain > 0).all()
