import argparse
import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

import facerig.diffusion.train as train_mod
from facerig.dataset import ShardWriter
from facerig.diffusion import commands, train_data
from facerig.diffusion.checkpoint import load_checkpoint, read_tensors, read_weights
from facerig.diffusion.train import TrainConfig, train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded torch: on a busy 2-core machine two OpenMP threads slow tiny models down ~20x.

    Module scope, so the module-scoped training runs below use it too: bit-identical resumption on CPU
    holds for the same thread count (reduction order changes with it).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_dataset(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """A synthetic capture dataset written with the real ShardWriter (two shards)."""
    g = torch.Generator().manual_seed(seed)
    writer = ShardWriter(root, size)
    for start in range(0, n, 4):
        m = min(4, n - start)
        writer.write({
            "image": torch.randint(0, 256, (m, 3, size, size), generator=g, dtype=torch.uint8),
            "rendered": torch.rand(m, 3, size, size, generator=g).half(),
            "normal": (torch.rand(m, 3, size, size, generator=g) * 2 - 1).half(),
            "albedo": torch.rand(m, 3, size, size, generator=g).half(),
            "mask": torch.ones(m, 1, size, size, dtype=torch.uint8),
        }, [{"key": f"img{start + i}", "source": f"img{start + i}.png"} for i in range(m)])
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    # 48 px: the tiny model's 64 px forces the resize path.
    return make_dataset(tmp_path_factory.mktemp("data"), n=8, size=48)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="tiny", steps=6, batch_size=2, holdout=2, ema=0.9,
                sample_every=3, sample_steps=2, ckpt_every=2, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["mse"], r["grad_norm"])
            for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    train(_cfg(dataset, out))
    return out


def test_run_writes_checkpoints_log_and_previews(full_run):
    latest = json.loads((full_run / "latest.json").read_text())
    assert latest == {"checkpoint": "checkpoints/step_00000006", "step": 6}
    ck = full_run / latest["checkpoint"]
    assert {p.name for p in ck.iterdir()} == {"model.safetensors", "ema.safetensors", "trainer.safetensors",
                                             "trainer.json", "rng.rank0.safetensors"}
    meta = json.loads((ck / "trainer.json").read_text())
    # 3 batches per epoch: after 6 steps, epoch 2 starts.
    assert (meta["step"], meta["epoch"], meta["batch_in_epoch"]) == (6, 2, 0)
    assert [s for s, *_ in _losses(full_run)] == [1, 2, 3, 4, 5, 6]
    grid = Image.open(full_run / "samples" / "step_00000006.png")
    assert grid.size == (3 * 66 + 2, 2 * 66 + 2)  # 2 held-out rows x (rendered | sample | real), 2 px gaps
    model, cfg = load_checkpoint(full_run)
    assert cfg.image_size == 64 and not model.training


def test_ema_warms_up_so_the_average_forgets_the_initial_weights(full_run):
    assert train_mod.ema_decay(0.9999, 1) == pytest.approx(2 / 11) and train_mod.ema_decay(0.9, 1000) == 0.9
    # Six steps at decay 0.9 on the zero-initialised last convolution, whose weights grow about linearly:
    # without the warm-up the EMA keeps 53 % of the zeros and reaches about 0.3x the model's norm; warmed up
    # (decays 0.18 .. 0.44) it averages the last few steps, about 0.9x.
    ck = full_run / "checkpoints" / "step_00000006"
    model, _, _ = read_weights(ck / "model.safetensors")
    ema, _, _ = read_weights(ck / "ema.safetensors")
    key = "denoisingUNet.out.2.weight"  # the last convolution, zero at initialisation
    assert ema[key].norm() > 0.7 * model[key].norm() > 0


def test_kill_and_resume_is_bit_identical(dataset, full_run, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    calls = {"n": 0}
    real_loss = train_mod.training_loss

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # killed during step 6: step 5 ran after the step-4 checkpoint and is lost
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "training_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(dataset, out))
    monkeypatch.setattr(train_mod, "training_loss", real_loss)
    latest = out / json.loads((out / "latest.json").read_text())["checkpoint"]
    meta = json.loads((latest / "trainer.json").read_text())
    # 6 training items / batch 2 = 3 batches per epoch: the resume point is inside epoch 1.
    assert (meta["step"], meta["epoch"], meta["batch_in_epoch"]) == (4, 1, 1)
    with pytest.raises(ValueError, match="already holds"):
        train(_cfg(dataset, out))  # no silent restart over a run
    train(_cfg(dataset, out, resume=True))

    ck_a, ck_b = full_run / "checkpoints" / "step_00000006", out / "checkpoints" / "step_00000006"
    for name in ("model.safetensors", "ema.safetensors", "trainer.safetensors", "rng.rank0.safetensors"):
        a, b = read_tensors(ck_a / name)[0], read_tensors(ck_b / name)[0]
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k}"
    meta_a, meta_b = (json.loads((c / "trainer.json").read_text()) for c in (ck_a, ck_b))
    assert meta_a["optimizer"] == meta_b["optimizer"]
    position = ("step", "epoch", "batch_in_epoch")
    assert [meta_a[k] for k in position] == [meta_b[k] for k in position]
    assert _losses(out) == _losses(full_run)  # the lost step 5 was dropped from the log and redone
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]


def test_stage2_freezes_encoder_weights_and_statistics(dataset, full_run, tmp_path):
    init, _ = load_checkpoint(full_run)  # EMA weights: what --init starts from
    out = tmp_path / "stage2"
    train(_cfg(dataset, out, stage=2, init=str(full_run), steps=2, ema=None, ckpt_every=2, sample_every=100))
    tuned, _ = load_checkpoint(out)
    before, after = init.state_dict(), tuned.state_dict()
    enc = [k for k in before if k.startswith("encoder.")]
    assert any(k.endswith("running_mean") for k in enc) and any(k.endswith("num_batches_tracked") for k in enc)
    for k in enc:
        assert torch.equal(before[k], after[k]), k
    changed = [k for k in before if k.startswith("denoisingUNet.") and not torch.equal(before[k], after[k])]
    assert len(changed) > 10
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["lr"] == 1e-5 for r in log)
    meta = json.loads((out / "checkpoints" / "step_00000002" / "trainer.json").read_text())
    n_opt = len(meta["optimizer"]["param_groups"][0]["params"])
    assert n_opt == sum(1 for k, _ in init.named_parameters() if k.startswith("denoisingUNet."))


def test_resume_refuses_changed_run_settings_and_applies_the_rest(dataset, full_run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(full_run, out)
    for change in ({"seed": 8}, {"data": str(tmp_path)}, {"model": "small"}, {"holdout": 3}):
        cfg = dataclasses.replace(_cfg(dataset, out, resume=True, steps=8), **change)
        with pytest.raises(ValueError, match="settings that define the run changed.*" + next(iter(change))):
            train(cfg)
    train(_cfg(dataset, out, resume=True, steps=8, lr=3e-5, log_every=1))
    meta = json.loads((out / "checkpoints" / "step_00000008" / "trainer.json").read_text())
    assert meta["train_config"]["lr"] == 3e-5
    assert all(g["lr"] == 3e-5 for g in meta["optimizer"]["param_groups"])  # used, not only recorded
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log if r["step"] > 6] == [3e-5, 3e-5]


def test_log_is_flushed_every_log_every_steps_and_stops_on_nan(dataset, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    real_loss = train_mod.training_loss
    calls = {"n": 0}

    def nan_at_step_3(*args, **kwargs):
        calls["n"] += 1
        out_ = real_loss(*args, **kwargs)
        if calls["n"] == 3:
            out_["loss"] = out_["loss"] * float("nan")
        return out_

    monkeypatch.setattr(train_mod, "training_loss", nan_at_step_3)
    with pytest.raises(FloatingPointError, match="step 3: loss is nan"):
        train(_cfg(dataset, out, log_every=4, ckpt_every=100, sample_every=100))
    assert not (out / "latest.json").exists()  # the NaN was caught before any checkpoint


def test_cond_dropout_marks_the_model_for_guidance(dataset, full_run, tmp_path):
    from facerig.diffusion.checkpoint import load_checkpoint

    assert not load_checkpoint(full_run)[1].null_condition
    train(_cfg(dataset, tmp_path / "cfg", steps=2, sample_every=10, cond_dropout=0.2))
    assert load_checkpoint(tmp_path / "cfg")[1].null_condition
    with pytest.raises(ValueError, match="cond_dropout"):
        _cfg(dataset, tmp_path / "x", cond_dropout=1.0)


def test_stage2_needs_init(dataset, tmp_path):
    with pytest.raises(ValueError, match="init"):
        train(_cfg(dataset, tmp_path / "x", stage=2))


def test_too_small_dataset_is_a_clear_error(dataset, tmp_path):
    with pytest.raises(ValueError, match="fewer than batch size"):
        train(_cfg(dataset, tmp_path / "x", batch_size=7))
    with pytest.raises(ValueError, match="holdout"):
        train(_cfg(dataset, tmp_path / "y", holdout=8))


def test_cli_parses_into_train_config(dataset, tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    seen = {}
    monkeypatch.setattr(train_mod, "train", lambda cfg: seen.setdefault("cfg", cfg) and tmp_path)
    args = parser.parse_args(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), "--config", "tiny",
                              "--stage", "2", "--init", "ck", "--steps", "9", "--batch-size", "3", "--lr", "2e-5",
                              "--resume", "--ema", "0.999", "--precision", "bf16", "--sample-every", "4",
                              "--ckpt-every", "5"])
    assert args.func(args) == 0
    cfg = seen["cfg"]
    assert (cfg.model, cfg.stage, cfg.init, cfg.steps, cfg.batch_size, cfg.lr, cfg.resume, cfg.ema, cfg.precision,
            cfg.sample_every, cfg.ckpt_every) == ("tiny", 2, "ck", 9, 3, 2e-5, True, 0.999, "bf16", 4, 5)
    # Every option's default is the TrainConfig field's default (one source).
    defaults = parser.parse_args(["train", "--data", "d", "--out", "o"])
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            assert getattr(defaults, f.name) == f.default, f.name


@pytest.mark.slow
def test_torchrun_two_processes_and_resume(dataset, tmp_path):
    """DDP on CPU (gloo) with 2 processes, then a resumed continuation."""
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "facerig.diffusion.commands", "train",
            "--data", str(dataset), "--out", str(out), "--config", "tiny", "--batch-size", "1", "--holdout", "2",
            "--ckpt-every", "2", "--sample-every", "100"]
    subprocess.run(base + ["--steps", "2"], check=True, env=env, timeout=600)
    subprocess.run(base + ["--steps", "4", "--resume"], check=True, env=env, timeout=600)
    ck = out / "checkpoints" / "step_00000004"
    assert (ck / "rng.rank0.safetensors").exists() and (ck / "rng.rank1.safetensors").exists()
    meta = json.loads((ck / "trainer.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 4
    # 6 training items over 2 processes with batch 1: 3 steps per epoch.
    assert (meta["epoch"], meta["batch_in_epoch"]) == (1, 1)
    assert load_checkpoint(out)[1].image_size == 64


def test_v_prediction_min_snr_and_flips_train_and_evaluate_held_out(dataset, tmp_path):
    """A v model records its prediction in the saved config, and --heldout-data writes one line per evaluation."""
    out = tmp_path / "v"
    train(_cfg(dataset, out, steps=4, prediction="v", weighting="min-snr", flip=True, heldout_data=str(dataset),
               eval_every=2, sample_every=100))
    model, cfg = load_checkpoint(out)
    assert cfg.prediction == "v"
    lines = [json.loads(ln) for ln in (out / "heldout.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [2, 4]
    assert lines[-1]["samples"] == 8
    assert set(lines[-1]) >= {"t0-100", "t900-1000", "mean"}
    assert all(v["eps_mse"] > 0 for k, v in lines[-1].items() if k.startswith("t"))
    with pytest.raises(ValueError, match="prediction"):
        train(_cfg(dataset, tmp_path / "v2", init=str(out), prediction="epsilon"))


def test_mirror_half_mirrors_buffers_with_the_face():
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(64, 3, 4, 5), "buffers": torch.randn(64, 9, 4, 5)}
    out = train_data.mirror_half(batch, g)
    flipped = (out["image"] != batch["image"]).flatten(1).any(1)
    assert 16 < int(flipped.sum()) < 48
    f = flipped.nonzero()[:, 0]
    assert torch.equal(out["image"][f], batch["image"][f].flip(-1))
    expected = batch["buffers"][f].flip(-1)
    expected[:, train_data.NORMAL_X] *= -1
    assert torch.equal(out["buffers"][f], expected)
    kept = (~flipped).nonzero()[:, 0]
    assert torch.equal(out["buffers"][kept], batch["buffers"][kept])
