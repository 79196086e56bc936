"""Build a StyleRig over a trained generator: ``facerig stylerig train GEN --recipe FILE --out RUN``.

What is trained is the recipe (``stylerig.recipe``, a TOML file; the shipped models' are in
``configs/stylerig/``); the command line holds where things are (GEN, RUN, ``--reuse``, ``--edited-by``) and
the run options every trainer shares. Three stages in one run folder, each skipped when its output exists,
so a killed run continues with ``--resume``:

1. ``data/``: generated faces captured as photos (``rig_data``);
2. ``dfr_KIND.safetensors`` (+ ``.json``, its held-out error): the DFR regressed onto them (``dfr_fit``);
3. ``rignet_MODE.safetensors`` (+ ``.json``, its loss log) for each mode (``rignet_fit``).

``model/`` then holds the whole rig (generator, DFR, parameter space, RigNets, framing) as ``config.json`` +
``model.safetensors`` for ``facerig edit --rig stylerig`` and ``facerig stylerig sample``; ``summary.json``
the face rate of the generator's samples and where its faces lie (``frame``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from facerig.interrupt import interrupts_say
from facerig.io import atomic_write_json, writable_folder
from facerig.stylerig.dfr_fit import train_dfr
from facerig.stylerig.recipe import Recipe, legacy_recipe, load_recipe, recipe_from_dict
from facerig.stylerig.rig import FaceDistance, ParamSpace, field_sizes
from facerig.stylerig.rig_data import MIN_FACES, RigSetup, build_data, check_edit_rig
from facerig.stylerig.rignet_fit import train_rignet
from facerig.training import RunOptions, changed_settings, option
from facerig.training.hardware import setup_hardware

CONFIG_FILE = "config.json"
# What a continued run may not change (besides the recipe): they define its captures and its networks.
RUN_FIXED = ("generator", "reuse", "edited_by", "seed")


@dataclass(kw_only=True)
class RigTrainConfig(RunOptions):
    generator: str = field(metadata={"help": "trained generator: GAN run folder, checkpoint folder or g_ema .safetensors",
                                     "positional": True})
    recipe: str | None = option(None, "the recipe: a TOML file of what to train (configs/stylerig/*.toml; "
                                      "default: every key's default, see docs/stylerig.md)")
    reuse: str | None = option(None, "another run folder whose captures (and DFR, when of the recipe's kind) to "
                                     "use: variants trained on the same data")
    edited_by: str | None = option(None, "rig model folders over the same generator (comma-separated, one per "
                                         "round) whose edits the recipe's data.edited captures, that many each")

    # The stages run on the CPU (capture's dlib and fits, and the rest beside them): not yet on a GPU.
    device: str = option("cpu", "device: the CPU only, for now", choices=("cpu",))

    def __post_init__(self):
        super().__post_init__()
        if self.device != "cpu":
            raise ValueError(f"facerig stylerig train runs on the CPU only, not {self.device!r}")

    @property
    def edited_rigs(self) -> list[str]:
        return [d.strip() for d in (self.edited_by or "").split(",") if d.strip()]

    def read_recipe(self) -> Recipe:
        return load_recipe(self.recipe) if self.recipe else Recipe()


def check_run(cfg: RigTrainConfig, recipe: Recipe) -> None:
    """What the recipe and the command line must agree on."""
    where = cfg.recipe or "the default recipe"
    if bool(recipe.data.edited) != bool(cfg.edited_rigs):
        raise ValueError(f"{where}: data.edited = {recipe.data.edited} and --edited-by "
                         f"{cfg.edited_by!r}: edited faces need the rigs that edit them, and those rigs a count")
    if recipe.data.edited and cfg.reuse:
        raise ValueError("edited faces are captured into the run's own data/: not with --reuse")


def saved_settings(cfg: RigTrainConfig, recipe: Recipe) -> dict:
    """What ``config.json`` keeps of a run: the command line's settings and the recipe's every key."""
    return {"generator": cfg.generator, "reuse": cfg.reuse, "edited_by": cfg.edited_by, "seed": cfg.seed,
            "recipe_file": cfg.recipe, "recipe": recipe.to_dict()}


def changed_run_settings(saved: dict, cfg: RigTrainConfig, recipe: Recipe, source: str) -> list[str]:
    """The settings a continued run would change (``changed_settings``'s rule: a key missing from an older
    run's config.json counts as its default). A run made before recipes keeps the old command line's flat
    settings; they are read as the recipe they meant."""
    before = saved["recipe"] if "recipe" in saved else legacy_recipe(saved, source).to_dict()
    before = recipe_from_dict(before, source).to_dict()  # keys added since: their defaults
    now = recipe.to_dict()
    changed = changed_settings(saved, cfg, RUN_FIXED)
    for section, table in now.items():
        changed += [f"{section}.{k}: {before[section][k]!r} -> {v!r}" for k, v in table.items() if before[section][k] != v]
    return changed


def captures_of(run: Path) -> Path:
    """The ``data/`` a run's captures are in: its own, or (a variant trained with ``--reuse``) its source's."""
    seen = []
    while not (run / "data").is_dir():
        config = run / CONFIG_FILE
        reused = json.loads(config.read_text()).get("reuse") if config.exists() else None
        if not reused or run in seen:
            raise FileNotFoundError(f"{run}: no data/ to reuse (nor a run it reused)")
        seen.append(run)
        run = Path(reused)
    return run / "data"


class RigTrainer:
    def __init__(self, cfg: RigTrainConfig, recipe: Recipe | None = None, *, face=None, capture=None):
        """``recipe``: the recipe itself (default: ``cfg.recipe``'s file); ``face`` and ``capture`` stand in
        for the default face model and for facerig's capture (``PhotoCapture``: ``many(images)``, ``size``)."""
        from facerig.face3d import load_model
        from facerig.stylerig.generator_io import load_generator, truncation_centre
        from facerig.stylerig.model import StyleRigModel

        self.cfg, self.recipe = cfg, recipe if recipe is not None else cfg.read_recipe()
        check_run(cfg, self.recipe)
        self.hardware = setup_hardware("cpu", cfg.precision, cfg.threads)
        self.out = writable_folder(cfg.out)
        source = Path(cfg.reuse) if cfg.reuse else self.out
        # Another run's captures, and its DFR when it trained one of this kind.
        name = f"dfr_{self.recipe.dfr.kind}.safetensors"
        self.data_dir = captures_of(source) if cfg.reuse else self.out / "data"
        self.dfr_path = source / name if (source / name).exists() else self.out / name
        generator = load_generator(cfg.generator).requires_grad_(False)
        face = face if face is not None else load_model()
        self.setup = RigSetup(generator, truncation_centre(generator), face, ParamSpace(field_sizes(face)),
                              face.default_params(1), FaceDistance(face), self.hardware.precision)
        self._capture = capture
        self.edit_rigs = []
        for folder in cfg.edited_rigs:  # before any work: they may not fit
            rig = StyleRigModel.from_pretrained(folder)
            check_edit_rig(rig, folder, generator)
            self.edit_rigs.append(rig)
        self._start_or_continue()

    def _start_or_continue(self) -> None:
        """A fresh run writes its settings; a started one continues only with ``--resume`` and the settings
        that made its finished stages (threads, precision and the recipe file's name aside)."""
        path = self.out / CONFIG_FILE
        if not path.exists():
            atomic_write_json(path, saved_settings(self.cfg, self.recipe))
            return
        if not self.cfg.resume:
            raise ValueError(f"{self.out}: already holds a StyleRig run; continue it with --resume or choose another --out")
        changed = changed_run_settings(json.loads(path.read_text()), self.cfg, self.recipe, str(path))
        if changed:
            raise ValueError(f"{self.out} was made with other settings ({'; '.join(changed)}); use a new --out")

    def capture(self):
        if self._capture is None:
            from facerig.capture.photo import PhotoCapture
            from facerig.edit.spec import CAPTURE_SIZE

            self._capture = PhotoCapture(self.setup.face, "cpu", CAPTURE_SIZE)
        return self._capture

    def run(self) -> Path:
        from facerig.stylerig.model import StyleRigModel

        start, recipe, seed, setup = time.time(), self.recipe, self.cfg.seed, self.setup
        data = build_data(self.data_dir, setup, recipe.data, seed, self.capture(), self.edit_rigs)
        found = data["found"]
        if int(found.sum()) < MIN_FACES:
            raise ValueError(f"{self.cfg.generator}: dlib found a face in only {int(found.sum())} of {found.numel()} "
                             f"generated samples (need {MIN_FACES}); train the generator longer")
        dfr = train_dfr(self.dfr_path, data, setup, recipe.dfr, seed)
        rignets = {mode: train_rignet(self.out / f"rignet_{mode}.safetensors", dfr, mode, setup, recipe.rignet,
                                      recipe.data.truncation, recipe.data.mixing, seed)
                   for mode in recipe.rignet.modes}
        frame = data["frame"].median(0).values.tolist()
        model = StyleRigModel.build(setup.generator, setup.latent_avg, dfr, setup.space, rignets, recipe.data.truncation,
                                    frame)
        folder = model.save_pretrained(self.out / "model")
        edited = {"edited": int(data["edited_found"].numel()), "edited_faces_found": int(data["edited_found"].sum())} \
            if "edited_found" in data else {}
        atomic_write_json(self.out / "summary.json", {
            "samples": int(found.numel()), "faces_found": int(found.sum()), "face_rate": float(found.float().mean()),
            "median_landmark_error_px": float(data["landmark_error"].median()), "frame": frame, **edited,
            "seconds_this_run": round(time.time() - start, 1), "threads": torch.get_num_threads(),
        })
        return folder


def train(cfg: RigTrainConfig, recipe: Recipe | None = None, **stand_ins) -> Path:
    """Train (or, with ``cfg.resume``, continue) a run; returns its ``model/`` folder."""
    with interrupts_say("interrupted; its finished stages and captured chunks are kept: continue with --resume"):
        return RigTrainer(cfg, recipe, **stand_ins).run()
