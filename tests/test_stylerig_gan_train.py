"""facerig gan train: a tiny run writes its files, resumes bit-identically, refuses changed settings, exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_diffusion_train import make_dataset

from facerig import cli
from facerig.stylerig import gan_train
from facerig.stylerig.augment import diff_augment
from facerig.stylerig.gan_data import load_images
from facerig.stylerig.gan_train import GanTrainConfig, export_rosinality, load_generator, r1_penalty, train
from facerig.stylerig.rosinality import load_rosinality
from facerig.stylerig.stylegan2 import Discriminator
from facerig.weights import read_tensors

TINY = dict(size=16, channel_base=256, channel_max=16, style_dim=16, n_mlp=2, batch_size=4, precision="fp32",
            threads=1, seed=3, log_every=2, sample_every=3, ckpt_every=3, r1_every=2, path_regularize=2.0,
            path_every=2, mirror=True)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Module scope: the module's runs and their resumption share one thread count (reduction order)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Eight random non-square PNG/JPG images in nested folders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        path = root / f"sub{i % 2}" / f"img{i}.{'png' if i % 3 else 'jpg'}"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(path)
    return root


def _cfg(data: Path, out: Path, **kw) -> GanTrainConfig:
    return GanTrainConfig(data=str(data), out=str(out), **{**TINY, "steps": 6, **kw})


@pytest.fixture(scope="module")
def full_run(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    train(_cfg(images, out))
    return out


def _weights(ckdir: Path) -> dict[str, torch.Tensor]:
    return {f"{name}/{k}": v for name in (gan_train.G_FILE, gan_train.G_EMA_FILE, gan_train.D_FILE, "trainer.safetensors")
            for k, v in read_tensors(ckdir / name)[0].items()}


def test_run_writes_checkpoint_log_and_samples(full_run):
    latest = json.loads((full_run / "latest.json").read_text())
    assert latest == {"checkpoint": "checkpoints/step_00000006", "step": 6}
    assert sorted(p.name for p in (full_run / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    rows = [json.loads(ln) for ln in (full_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("d_loss", "g_loss", "real_score", "fake_score", "r1", "path_length_mean"))
    assert rows[-1]["r1"] > 0 and rows[-1]["path_length_mean"] > 0  # both regularisers ran
    grid = Image.open(full_run / "samples" / "step_00000006.png")
    assert grid.size == (8 * 18 + 2, 4 * 18 + 2)


def test_resumed_run_is_bit_identical(images, full_run, tmp_path):
    train(_cfg(images, tmp_path, steps=4))
    # Killed after step 4's first files were written: latest.json still names step 3.
    (tmp_path / "latest.json").write_text(json.dumps({"checkpoint": "checkpoints/step_00000003", "step": 3}))
    train(_cfg(images, tmp_path, resume=True))
    a, b = _weights(full_run / "checkpoints/step_00000006"), _weights(tmp_path / "checkpoints/step_00000006")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (full_run / "log.jsonl").read_text().count("\n") == (tmp_path / "log.jsonl").read_text().count("\n")


def test_resume_refuses_changed_seed_and_fresh_run_over_old(images, full_run):
    with pytest.raises(ValueError, match="seed: 3 -> 4"):
        train(_cfg(images, full_run, resume=True, seed=4, steps=8))
    with pytest.raises(ValueError, match="frame: '0.5,0.5,1' -> '0.5,0.4,1.25'"):
        train(_cfg(images, full_run, resume=True, frame="0.5,0.4,1.25", steps=8))
    with pytest.raises(ValueError, match="already holds"):
        train(_cfg(images, full_run))


def test_init_from_starts_from_another_runs_networks(images, full_run, tmp_path):
    """Fine-tuning: a run's G, G_ema and D start as another run's final ones; its optimizers and step afresh."""
    trainer = gan_train.GanTrainer(_cfg(images, tmp_path / "tuned", init_from=str(full_run)))
    final = _weights(full_run / "checkpoints/step_00000006")
    for model, name in ((trainer.g, gan_train.G_FILE), (trainer.g_ema, gan_train.G_EMA_FILE),
                        (trainer.d, gan_train.D_FILE)):
        for k, v in model.state_dict().items():
            assert torch.equal(v, final[f"{name}/{k}"]), (name, k)
    assert trainer.step == 0 and not trainer.g_opt.state and not trainer.d_opt.state
    train(_cfg(images, tmp_path / "tuned2", init_from=str(full_run / "checkpoints/step_00000003"), steps=1))
    assert (tmp_path / "tuned2" / "checkpoints" / "step_00000001").is_dir()
    with pytest.raises(FileNotFoundError, match="not a GAN run"):
        gan_train.GanTrainer(_cfg(images, tmp_path / "bad", init_from=str(images)))
    with pytest.raises(ValueError, match="does not fit"):
        gan_train.GanTrainer(_cfg(images, tmp_path / "wide", init_from=str(full_run), channel_max=32))


def test_export_loads_with_load_rosinality(full_run, tmp_path):
    g = load_generator(full_run)
    pt = export_rosinality(full_run, tmp_path / "g.pt")
    loaded, latent_avg = load_rosinality(pt)
    assert latent_avg.shape == (16,)
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, _ = loaded([z], randomize_noise=False, truncation=0.7, truncation_latent=latent_avg)
        b, _ = g([z], randomize_noise=False, truncation=0.7, truncation_latent=latent_avg)
    assert a.shape == (2, 3, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_cli_export(full_run, tmp_path):
    assert cli.main(["gan", "export", str(full_run), str(tmp_path / "g.pt")]) == 0
    assert load_rosinality(tmp_path / "g.pt")[0].size == 16


def test_capture_dataset_and_image_folder(images, tmp_path):
    crops = load_images(make_dataset(tmp_path / "capture", n=5, size=32), 16)
    assert crops.shape == (5, 3, 16, 16) and crops.dtype == torch.uint8
    assert load_images(images, 8).shape == (8, 3, 8, 8)
    with pytest.raises(ValueError, match="no training images"):
        load_images(tmp_path / "capture" / "shards", 16)


def test_frame_keeps_the_generators_part_of_each_image(tmp_path):
    """--frame 0.5,0.25,2 (a face twice the size, its centre a quarter down) keeps the square's box
    x 0.25-0.75, y 0.375-0.875: a white patch there fills the training image."""
    img = np.zeros((40, 60, 3), np.uint8)  # centre square: columns 10-50
    img[15:35, 20:40] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    cfg = GanTrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), frame="0.5,0.25,2")
    assert cfg.frame_box == (0.25, 0.375, 0.75, 0.875)
    framed = load_images(tmp_path, 8, cfg.frame_box)[0].float()
    assert framed[:, 1:-1, 1:-1].min() > 250 and framed.min() > 200  # Lanczos rings at the border only
    assert load_images(tmp_path, 8)[0].float().mean() < 100  # the default frame: the whole centre square
    for bad, why in (("0.5,0.5", "three numbers"), ("0.5,0.5,0", "SIDE > 0"), ("0.5,0.5,0.8", "outside")):
        with pytest.raises(ValueError, match=why):
            GanTrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), frame=bad)


def test_r1_is_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    d = Discriminator(16, channels={4: 8, 8: 8, 16: 8})
    real = torch.randn(4, 3, 16, 16).bfloat16()
    dtypes = []
    d.final_linear.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    augment = lambda x: diff_augment(x, generator=torch.Generator().manual_seed(1))  # noqa: E731
    expected = r1_penalty(d, real, augment)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = r1_penalty(d, real, augment)
    assert dtypes == [torch.float32, torch.float32]
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_config_checks():
    with pytest.raises(ValueError, match="power of 2"):
        GanTrainConfig(data="x", out="y", size=48)
    with pytest.raises(ValueError, match="multiple of 4"):
        GanTrainConfig(data="x", out="y", batch_size=6)
    cfg = GanTrainConfig(data="x", out="y")
    assert cfg.channels == {4: 256, 8: 256, 16: 128, 32: 64, 64: 32}
    assert cfg.ema_decay == pytest.approx(0.5 ** (16 / 10_000))
