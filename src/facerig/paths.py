"""Where facerig finds data it may read but never ships: the shared folder and the model cache."""

from __future__ import annotations

import os
from pathlib import Path


def shared_dir() -> Path:
    """The shared data folder: ``$FACERIG_SHARED``, else ``../shared`` from the working directory."""
    return Path(os.environ.get("FACERIG_SHARED", "../shared")).expanduser().resolve()


def ict_dir() -> Path:
    """ICT-FaceKit's FaceXModel folder: ``$FACERIG_ICT`` or ``<shared>/assets/ict-facekit``."""
    env = os.environ.get("FACERIG_ICT")
    return Path(env).expanduser().resolve() if env else shared_dir() / "assets" / "ict-facekit"


def cache_dir() -> Path:
    """Where derived files (imported face models) are cached: ``$FACERIG_CACHE`` or ``~/.cache/facerig``."""
    env = os.environ.get("FACERIG_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "facerig"
    path.mkdir(parents=True, exist_ok=True)
    return path


# Each rig's default model in models/: what README's demo, `facerig personalize` and `facerig ui` open.
DEFAULT_MODELS = {"diffusion": "diffusionrig-tiny-celebawild64.safetensors", "stylerig": "stylerig-utk64"}


def shipped_model(name: str = DEFAULT_MODELS["diffusion"]) -> Path:
    """A model file shipped in the checkout's ``models/`` folder (present for source and editable installs)."""
    path = Path(__file__).resolve().parents[2] / "models" / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: shipped model not found (installed without the checkout?); give --init")
    return path
