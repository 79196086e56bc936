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
