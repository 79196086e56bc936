"""What every facerig training run shares: config dataclasses that drive the command line, optimizer and RNG
state saved without pickle, resume checks and the run log.

A run folder's ``latest.json`` names its newest complete checkpoint; it is rewritten (atomically) only after
every file of that checkpoint is on disk, so a run killed at any moment resumes from a whole checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
from dataclasses import field
from pathlib import Path

import torch

LATEST_FILE = "latest.json"


def option(default, help: str, **extra):
    """A config dataclass field with its command-line help (``add_dataclass_arguments`` reads it)."""
    return field(default=default, metadata={"help": help, **extra})


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One option per field of a config dataclass, its default and help taken from the field (one source)."""
    kinds = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(config_cls):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        help_text = meta.pop("help")
        required = f.default is dataclasses.MISSING
        if meta.pop("positional", False):
            parser.add_argument(f.name, help=help_text, **meta)
            continue
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if type_name == "bool":
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            continue
        kind = kinds[type_name.split("|")[0].strip()]
        shown = "" if required or f.default is None else f" (default {f.default})"
        parser.add_argument(flag, dest=f.name, type=kind, required=required,
                            default=None if required else f.default, help=help_text + shown, **meta)


def optimizer_state_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, other = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{name}"] = value
            else:
                other.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "state": other}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state(), "noise_generator": generator.get_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    generator.set_state(state["noise_generator"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


def same_setting(key: str, value):
    """A comparable form of a run setting: data folders by their resolved path."""
    return str(Path(value).resolve()) if key in ("data", "init") and value else value


def log_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def flush_statistics(pending: list[torch.Tensor], last_step: int, names: tuple[str, ...], log_path: Path | None,
                     **extra) -> list[dict]:
    """Bring the per-step statistics kept on the device to the host in one sync, stop at the first
    non-finite one (before anything is checkpointed), and append one JSON line per step to ``log_path``
    (None: another process writes the log). Returns the records; ``pending`` is emptied."""
    if not pending:
        return []
    rows = torch.stack(pending).tolist()
    pending.clear()
    first = last_step - len(rows) + 1
    records = [{**dict(zip(names, row)), "step": first + i, **extra} for i, row in enumerate(rows)]
    for record in records:
        bad = next((n for n in names if not math.isfinite(record[n])), None)
        if bad is not None:
            raise FloatingPointError(f"step {record['step']}: {bad} is {record[bad]}")
    if log_path is not None:
        with open(log_path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return records


def rotate_checkpoints(current: Path, keep: int) -> None:
    """Delete the checkpoint folders beside ``current`` past its step (a killed run's leftovers) and all but
    the newest ``keep - 1`` before it."""
    others = [p for p in sorted(current.parent.glob("step_*")) if p != current]
    older = [p for p in others if p.name < current.name]
    for path in [p for p in others if p.name > current.name] + older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(path)
