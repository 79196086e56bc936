"""Ctrl-C (SIGINT to the process group, as a terminal sends it) during a long facerig job: one line that says
where it stopped, exit code 130, no traceback, and the job's folder resumes to what an uninterrupted job
makes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_capture_load import ffhq_sample
from test_diffusion_train import make_dataset

from facerig import cli
from facerig.dataset import read_manifest
from facerig.stylerig.generator_io import GENERATOR_FORMAT
from facerig.stylerig.stylegan2 import Generator
from facerig.weights import read_tensors, save_weights


def ctrl_c_when(argv: list[str], ready: Callable[[], bool], log: Path, timeout: float = 300) -> tuple[int, str]:
    """Run ``facerig ARGV`` in a process group of its own, press Ctrl-C once ``ready()``; (exit code, stderr)."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "facerig.cli", *argv], stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"facerig {argv[0]} ended or hung before it could be interrupted: {log.read_text()[-3000:]}")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
    return rc, log.read_text()


def last_line(stderr: str) -> str:
    """The last line written (progress bars redraw with carriage returns)."""
    return [ln for ln in re.split(r"[\r\n]+", stderr) if ln.strip()][-1]


def _checkpoint(run: Path, step: int) -> dict[str, torch.Tensor]:
    ckdir = run / "checkpoints" / f"step_{step:08d}"
    return {f"{p.name}/{k}": v for p in sorted(ckdir.glob("*.safetensors")) for k, v in read_tensors(p)[0].items()}


def _log(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if k != "elapsed_s"} for ln in (run / "log.jsonl").read_text().splitlines()]


def _interrupt_resume_and_compare(tmp_path: Path, command: list[str], args: list[str], more_steps: int) -> None:
    """Ctrl-C ``facerig COMMAND`` after its first checkpoint, resume it ``more_steps`` past the checkpoint it
    names, and compare with a run that went there in one go."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    rc, err = ctrl_c_when([*command, *args, "--out", str(run), "--steps", "100000"], (run / "latest.json").exists,
                          tmp_path / "stderr.txt")
    name = " ".join(command)
    line = re.fullmatch(rf"facerig {name}: interrupted at step (\d+); resume with --resume \(from its step (\d+) checkpoint\)",
                        last_line(err))
    assert rc == 130 and line and "Traceback" not in err, err[-3000:]
    stopped, saved = int(line[1]), int(line[2])
    assert saved == json.loads((run / "latest.json").read_text())["step"] and 0 < saved <= stopped
    end = saved + more_steps
    assert cli.main([*command, *args, "--out", str(run), "--steps", str(end), "--resume"]) == 0
    # One checkpoint, at the end (the cadence of checkpoints changes nothing that is trained).
    assert cli.main([*command, *args, "--out", str(straight), "--steps", str(end), "--ckpt-every", str(end)]) == 0
    a, b = _checkpoint(straight, end), _checkpoint(run, end)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log(run) == _log(straight)  # the steps after the checkpoint were dropped from the log and redone


def test_ctrl_c_in_facerig_train(tmp_path, one_thread):
    data = make_dataset(tmp_path / "data", n=8, size=16)
    args = ["--data", str(data), "--config", "tiny", "--batch-size", "2", "--holdout", "2", "--ckpt-every", "2",
            "--log-every", "1", "--sample-every", "1000", "--seed", "3", "--threads", "1"]
    _interrupt_resume_and_compare(tmp_path, ["train"], args, more_steps=2)


def test_ctrl_c_in_facerig_gan_train(tmp_path, one_thread):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
    args = ["--data", str(images), "--size", "16", "--channel-base", "256", "--channel-max", "16", "--style-dim", "16",
            "--n-mlp", "2", "--batch-size", "4", "--precision", "fp32", "--log-every", "2", "--sample-every", "1000",
            "--ckpt-every", "3", "--seed", "3", "--threads", "1"]
    _interrupt_resume_and_compare(tmp_path, ["gan", "train"], args, more_steps=3)


def test_ctrl_c_in_facerig_capture(tmp_path, one_thread):
    """Interrupted after its first photo (the real fitter, one photo a batch, a worker process preparing
    photos); the rerun captures only the rest."""
    photos, out = tmp_path / "photos", tmp_path / "ds"
    photos.mkdir()
    for i in range(2):
        ffhq_sample(i).save(photos / f"{i}.png")
    args = ["capture", str(photos), "--out", str(out), "--size", "64", "--batch-size", "1", "--threads", "1"]
    rc, err = ctrl_c_when([*args, "--workers", "1"], lambda: len(read_manifest(out)) > 0 if out.exists() else False,
                          tmp_path / "stderr.txt")
    line = last_line(err)
    assert rc == 130 and "Traceback" not in err, err[-3000:]
    assert re.fullmatch(r"facerig capture: interrupted after \d+ faces captured and 0 inputs failed in this run; "
                        r"rerun the same command to resume \(what is done is skipped\)", line), line
    assert read_manifest(out), "the photo captured before Ctrl-C is kept"
    assert cli.main(args) == 0
    assert sorted(r["key"] for r in read_manifest(out)) == ["0.png", "1.png"]  # each once: nothing redone


def test_ctrl_c_in_facerig_stylerig_train(tmp_path, one_thread, capsys):
    """Interrupted while capturing generated faces (real dlib, which finds none in a random 16 px generator's
    images); --resume captures only the missing chunks and ends as an uninterrupted run does."""
    channels = {4: 32, 8: 32, 16: 16}
    torch.manual_seed(0)
    generator = tmp_path / "g_ema.safetensors"
    save_weights(Generator(16, style_dim=32, n_mlp=2, channels=channels).state_dict(), generator, GENERATOR_FORMAT,
                 {"size": 16, "style_dim": 32, "n_mlp": 2, "channels": channels})
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[data]\nsamples = 128\n")  # two chunks of 64
    run, straight = tmp_path / "run", tmp_path / "straight"
    args = ["stylerig", "train", str(generator), "--recipe", str(recipe), "--threads", "1"]
    first_chunk = run / "data" / "chunk_0000.safetensors"
    rc, err = ctrl_c_when([*args, "--out", str(run)], first_chunk.exists, tmp_path / "stderr.txt")
    assert rc == 130 and "Traceback" not in err, err[-3000:]
    assert re.fullmatch(r"facerig stylerig train: interrupted;.* continue with --resume", last_line(err)), last_line(err)
    kept = first_chunk.read_bytes()
    capsys.readouterr()
    assert cli.main([*args, "--out", str(run)]) == 2 and "--resume" in capsys.readouterr().err  # not over a run
    assert cli.main([*args, "--out", str(run), "--resume"]) == 2
    assert cli.main([*args, "--out", str(straight)]) == 2
    errors = re.findall(r"facerig stylerig train: error: [^\r\n]*", capsys.readouterr().err)
    assert len(errors) == 2 and all("found a face in only 0 of 128" in e for e in errors), errors
    assert first_chunk.read_bytes() == kept  # not captured again
    chunks = sorted(p.name for p in (straight / "data").iterdir())
    assert sorted(p.name for p in (run / "data").iterdir()) == chunks and len(chunks) == 2
    assert all((run / "data" / c).read_bytes() == (straight / "data" / c).read_bytes() for c in chunks)
