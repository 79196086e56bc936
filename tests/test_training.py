import argparse
import dataclasses
import json

import pytest
import torch

from facerig.training import (
    add_dataclass_arguments, log_step, optimizer_state_from_files, optimizer_state_to_files, option, rng_state,
    same_setting, set_rng_state,
)


@dataclasses.dataclass
class _Config:
    data: str = dataclasses.field(metadata={"help": "input"})
    steps: int = option(10, "steps")
    lr: float | None = option(None, "learning rate")
    fast: bool = option(False, "go fast")
    model: str = option("tiny", "which", flag="--config", choices=("tiny", "small"))


def test_dataclass_drives_the_command_line():
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, _Config)
    args = p.parse_args(["--data", "d", "--steps", "3", "--fast", "--config", "small"])
    assert _Config(**vars(args)) == _Config("d", 3, None, True, "small")
    assert p.parse_args(["--data", "d"]).steps == 10
    with pytest.raises(SystemExit):
        p.parse_args(["--data", "d", "--config", "huge"])


def test_optimizer_state_round_trips_without_pickle():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()
    tensors, meta = optimizer_state_to_files(opt)
    opt2 = torch.optim.Adam([torch.nn.Parameter(p.detach().clone()) for p in params], lr=5.0)
    opt2.load_state_dict(optimizer_state_from_files(tensors, json.loads(json.dumps(meta))))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])


def test_rng_state_round_trip_and_small_helpers(tmp_path):
    g = torch.Generator().manual_seed(3)
    state = rng_state(g, torch.device("cpu"))
    first = (torch.rand(2), torch.rand(2, generator=g))
    set_rng_state(state, g, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(first, (torch.rand(2), torch.rand(2, generator=g))))
    assert same_setting("data", str(tmp_path / "x" / "..")) == same_setting("data", str(tmp_path))
    assert log_step('{"step": 4}') == 4 and log_step("{torn") is None


def test_flush_statistics_logs_each_step_and_stops_at_non_finite(tmp_path):
    from facerig.training import flush_statistics

    log = tmp_path / "log.jsonl"
    pending = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    records = flush_statistics(pending, 7, ("a", "b"), log, lr=0.1)
    assert pending == [] and [r["step"] for r in records] == [6, 7]
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        {"a": 1.0, "b": 2.0, "step": 6, "lr": 0.1}, {"a": 3.0, "b": 4.0, "step": 7, "lr": 0.1}]
    with pytest.raises(FloatingPointError, match="step 9: b is inf"):
        flush_statistics([torch.tensor([1.0, 1.0]), torch.tensor([1.0, float("inf")])], 9, ("a", "b"), log)
    assert len(log.read_text().splitlines()) == 2  # nothing of the bad batch was logged


def test_rotate_checkpoints_keeps_the_newest_and_drops_leftovers(tmp_path):
    from facerig.training import rotate_checkpoints

    for step in (2, 4, 6, 8, 10):
        (tmp_path / f"step_{step:08d}").mkdir()
        (tmp_path / f"step_{step:08d}" / "model.safetensors").write_bytes(b"x")
    rotate_checkpoints(tmp_path / "step_00000006", keep=2)  # resumed at 6: 8 and 10 are a killed run's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000006"]


def test_train_and_gan_train_share_one_definition_of_the_run_options():
    from facerig.diffusion.train import TrainConfig
    from facerig.stylerig.gan_train import GanTrainConfig
    from facerig.training import StepOptions
    from facerig.training.options import COMMON

    helps = []
    for config in (TrainConfig, GanTrainConfig):
        assert issubclass(config, StepOptions)
        p = argparse.ArgumentParser()
        add_dataclass_arguments(p, config)
        group = next(g for g in p._action_groups if g.title.startswith("run options"))
        assert sorted(a.dest for a in group._group_actions) == sorted(COMMON)
        helps.append({a.dest: a.help.split(" (default")[0] for a in group._group_actions})
    assert helps[0] == helps[1]
    # Each trainer keeps its own default cadence.
    assert (TrainConfig.__dataclass_fields__["ckpt_every"].default, GanTrainConfig.__dataclass_fields__["ckpt_every"].default) == (5000, 2000)


def test_changed_settings_reads_a_missing_setting_as_its_default(tmp_path):
    from facerig.training import RunOptions, changed_settings

    @dataclasses.dataclass(kw_only=True)
    class Config(RunOptions):
        data: str = "d"
        width: int = 8

    cfg = Config(out="o", data=str(tmp_path / "x" / ".."), seed=1)
    assert changed_settings({"data": str(tmp_path), "seed": 1}, cfg, ("data", "seed", "width")) == []  # width: 8
    assert changed_settings({"seed": 0, "width": 4}, cfg, ("seed", "width")) == ["seed: 0 -> 1", "width: 4 -> 8"]
    with pytest.raises(ValueError, match="threads must be >= 1"):
        Config(out="o", threads=0)


def test_run_folder_resume_rule_commit_and_log_truncation(tmp_path, capsys):
    from facerig.training import RunFolder

    run = RunFolder(tmp_path / "run", "x train", logs=("log.jsonl", "eval.jsonl"))
    assert run.resume_from(False) is None and run.resume_from(True) is None
    assert "facerig x train: nothing to resume" in capsys.readouterr().out
    run.start({"a": 1})
    for step in (1, 2, 3):
        run.log([torch.tensor([float(step)])], step, ("loss",))
        run.append("eval.jsonl", {"step": step})
        run.checkpoint(step).mkdir(parents=True)
        assert run.commit(step, keep=2) == run.checkpoint(step)
    assert json.loads((run.path / "latest.json").read_text()) == {"checkpoint": "checkpoints/step_00000003", "step": 3}
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    with pytest.raises(ValueError, match="already holds a run's checkpoints"):
        run.resume_from(False)
    assert run.resume_from(True) == run.checkpoint(3)
    with open(run.log_path, "a") as f:
        f.write('{"loss": 4.0, "st')  # a kill mid-line
    run.truncate_logs(2)
    assert [json.loads(ln)["step"] for ln in run.log_path.read_text().splitlines()] == [1, 2]
    assert [json.loads(ln)["step"] for ln in (run.path / "eval.jsonl").read_text().splitlines()] == [1, 2]
    with pytest.raises(ValueError, match="settings that define the run changed \\(seed: 0 -> 1\\)"):
        run.refuse_changes(run.checkpoint(3), ["seed: 0 -> 1"])


def test_interrupts_say_turns_ctrl_c_into_its_line():
    from facerig.interrupt import Interrupted, interrupts_say

    with pytest.raises(Interrupted, match="^stopped at 3$"):
        with interrupts_say(lambda: "stopped at 3"):
            raise KeyboardInterrupt
    with pytest.raises(Interrupted, match="^inner$"):  # the innermost job's line wins
        with interrupts_say("outer"), interrupts_say("inner"):
            raise KeyboardInterrupt
