"""Optimizer and RNG state as safetensors-ready tensors plus JSON, so a checkpoint holds no pickle."""

from __future__ import annotations

import torch


def optimizer_state_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors named ``optimizer.{param index}.{name}``, everything else as JSON-able data)."""
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
    """The ``state_dict`` that ``optimizer_state_to_files`` split (its JSON read back)."""
    state: dict[int, dict] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """The global CPU RNG (it drives dropout and noise injection), ``generator`` and, on CUDA, the device's."""
    state = {"torch_cpu": torch.get_rng_state(), "noise_generator": generator.get_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    generator.set_state(state["noise_generator"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)
