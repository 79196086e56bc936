"""Trained StyleGAN2 generators from files: what rigging, evaluating and exporting a generator read.

``load_generator(path)`` takes a G_ema (or G) ``.safetensors``, a checkpoint folder or a ``facerig gan train``
run folder (its latest checkpoint); the network's config rides in the file's metadata, so nothing but the
file is needed. ``truncation_centre`` is the mean W that our generators truncate towards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from facerig.stylerig.stylegan2 import Generator
from facerig.weights import LATEST_FILE, latest_checkpoint, load_state_dict_checked, read_tensors

GENERATOR_FORMAT = "facerig-stylegan2-generator"
G_FILE, G_EMA_FILE = "generator.safetensors", "g_ema.safetensors"


def generator_file(path: str | Path, name: str = G_EMA_FILE) -> Path:
    """The weights file of ``path``: itself (a .safetensors), a checkpoint folder's ``name`` (G_ema by
    default), a run's latest checkpoint's."""
    path = Path(path)
    if path.is_dir():
        if (path / LATEST_FILE).exists():
            path = latest_checkpoint(path)
        path = path / name
    return path


def load_network(file: Path, fmt: str, build: Callable[..., nn.Module]) -> nn.Module:
    """The network ``build(**config)`` holding ``file``'s tensors (eval mode), its config read from the
    file's metadata; a file of another format or with a bad config is a ValueError naming it."""
    state, meta = read_tensors(file)
    if meta.get("format") != fmt:
        raise ValueError(f"{file}: not a {fmt} file (format {meta.get('format')!r})")
    try:
        config = json.loads(meta["config"])
        config["channels"] = {int(k): v for k, v in config["channels"].items()}
    except (KeyError, ValueError, AttributeError) as exc:
        raise ValueError(f"{file}: bad network config in metadata ({exc})") from None
    # Built on the meta device, then given the file's tensors: no random initialisation.
    with torch.device("meta"):
        network = build(**config)
    load_state_dict_checked(network, state, str(file), assign=True)
    return network.eval()


def load_generator(path: str | Path) -> Generator:
    """A trained generator (CPU, eval mode) from a weights file, checkpoint or run folder (``generator_file``)."""
    return load_network(generator_file(path), GENERATOR_FORMAT, Generator)


@torch.no_grad()
def truncation_centre(g: Generator, n_mean: int = 4096) -> Tensor:
    """(style_dim,) the mean W of ``n_mean`` z drawn with seed 0: the truncation centre of our generators."""
    return g.style(torch.randn(n_mean, g.style_dim, generator=torch.Generator().manual_seed(0))).mean(0)
