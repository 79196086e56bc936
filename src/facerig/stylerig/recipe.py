"""A StyleRig training recipe: what ``facerig stylerig train --recipe FILE`` trains, as a TOML file.

``configs/stylerig/`` holds the recipes of the shipped models (``models/README.md``). Every key may be left
out (its default below); an unknown key, a wrong type or a value out of range is one ValueError naming the
file and the key. Meanings and measurements: ``docs/stylerig.md``.

    [data]                      # stage 1: generated faces captured as photos
    samples = 3000              # faces captured for the DFR
    truncation = 0.8            # psi of every sampled latent (data, RigNet training, seeds)
    mixing = 0.5                # probability a data sample mixes two latents at a random layer
    edited = 0                  # per rig of --edited-by: faces it edits, captured for the DFR (a round)

    [dfr]                       # stage 2
    kind = "image"              # "image": a CNN on the generated image; "mlp": the paper's MLP on W+
    steps = 6000
    batch_size = 64             # captures per step
    lr = 1e-3

    [rignet]                    # stage 3: one RigNet per mode
    modes = ["pose", "expression", "light", "all"]
    form = "paper"              # "paper"; "relative": w + delta(w, target) - delta(w, source);
                                # "steering": the paper's baseline, delta w from the parameter change
    subspace = 0                # delta w in this many leading principal directions of W (0: all of W)
    steps = 3000
    batch_size = 64             # latent pairs per step
    lr = 1e-3

    [rignet.weights]            # every RigNet's loss weights ...
    rec = 1.0
    edit = 1.0
    consist = 1.0
    [rignet.weights.expression] # ... and one mode's, over those
    edit = 20.0

    [rignet.edit_targets]       # per mode: the fraction of targets that are the source's own parameters
    expression = 0.5            # with a sampled edit, instead of the other face's (modes not named: 0)
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from facerig.stylerig.rig import DFR_KINDS, MODES, LossWeights

FORMS = ("paper", "relative", "steering")


def _spec(default, rule: str, check, **extra):
    """A recipe field: its default and what a valid value is (``check``, described by ``rule``)."""
    return field(default=default, metadata={"rule": rule, "check": check, **extra})


def _positive(x) -> bool:
    return x >= 1


@dataclass(frozen=True)
class DataRecipe:
    samples: int = _spec(3000, "an integer >= 1", _positive)
    truncation: float = _spec(0.8, "a number in (0, 1]", lambda x: 0 < x <= 1)
    mixing: float = _spec(0.5, "a number in [0, 1]", lambda x: 0 <= x <= 1)
    edited: int = _spec(0, "an integer >= 0", lambda x: x >= 0)


@dataclass(frozen=True)
class DFRRecipe:
    kind: str = _spec("image", f"one of {', '.join(DFR_KINDS)}", lambda x: x in DFR_KINDS)
    steps: int = _spec(6000, "an integer >= 1", _positive)
    batch_size: int = _spec(64, "an integer >= 1", _positive)
    lr: float = _spec(1e-3, "a number > 0", lambda x: x > 0)


@dataclass(frozen=True)
class RigNetRecipe:
    modes: tuple[str, ...] = _spec(tuple(MODES), f"a non-empty list of distinct modes of {', '.join(MODES)}",
                                   lambda x: len(x) > 0 and len(set(x)) == len(x) and set(x) <= set(MODES))
    form: str = _spec("paper", f"one of {', '.join(FORMS)}", lambda x: x in FORMS)
    subspace: int = _spec(0, "an integer >= 0", lambda x: x >= 0)
    steps: int = _spec(3000, "an integer >= 1", _positive)
    batch_size: int = _spec(64, "an integer >= 1", _positive)
    lr: float = _spec(1e-3, "a number > 0", lambda x: x > 0)
    weights: LossWeights = field(default_factory=LossWeights)
    mode_weights: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> {term: weight}
    edit_targets: dict[str, float] = field(default_factory=dict)  # mode -> fraction (absent: 0)

    def weights_for(self, mode: str) -> LossWeights:
        """The loss weights of ``mode``'s RigNet: ``weights`` with the mode's own over them."""
        return replace(self.weights, **self.mode_weights.get(mode, {}))

    def edit_targets_for(self, mode: str) -> float:
        return self.edit_targets.get(mode, 0.0)


@dataclass(frozen=True)
class Recipe:
    data: DataRecipe = field(default_factory=DataRecipe)
    dfr: DFRRecipe = field(default_factory=DFRRecipe)
    rignet: RigNetRecipe = field(default_factory=RigNetRecipe)

    def to_dict(self) -> dict:
        """The recipe as the nested tables of its file, every key present (what a run's config.json keeps)."""
        out = {}
        for section in ("data", "dfr", "rignet"):
            part = getattr(self, section)
            out[section] = {f.name: getattr(part, f.name) for f in fields(part) if "rule" in f.metadata}
        out["rignet"]["modes"] = list(self.rignet.modes)
        out["rignet"]["weights"] = {**self.rignet.weights.to_dict(),
                                    **{m: dict(w) for m, w in sorted(self.rignet.mode_weights.items())}}
        out["rignet"]["edit_targets"] = dict(sorted(self.rignet.edit_targets.items()))
        return out


class RecipeError(ValueError):
    def __init__(self, source: str, key: str, reason: str):
        super().__init__(f"{source}: {key}: {reason}")


def _value(source: str, key: str, value, f):
    """``value`` checked against field ``f``'s type and rule."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind == "str":
        ok = isinstance(value, str)
    else:  # tuple[str, ...]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    if not ok or not f.metadata["check"](value):
        raise RecipeError(source, key, f"must be {f.metadata['rule']}, not {value!r}")
    return value


def _table(source: str, key: str, value) -> dict:
    if not isinstance(value, dict):
        raise RecipeError(source, key, f"must be a table, not {value!r}")
    return value


def _section(cls, table: dict, source: str, where: str, skip: tuple[str, ...] = ()):
    known = {f.name: f for f in fields(cls) if "rule" in f.metadata}
    unknown = sorted(set(table) - set(known) - set(skip))
    if unknown:
        raise RecipeError(source, f"{where}.{unknown[0]}", f"unknown key (known: {', '.join([*known, *skip])})")
    return {k: _value(source, f"{where}.{k}", v, known[k]) for k, v in table.items() if k in known}


def _weights(table: dict, source: str, where: str) -> dict[str, float]:
    """A table of loss weights (finite, >= 0) by term."""
    terms = [f.name for f in fields(LossWeights)]
    out = {}
    for term, value in table.items():
        if term not in terms:
            raise RecipeError(source, f"{where}.{term}", f"unknown loss term (terms: {', '.join(terms)}; modes: "
                                                         f"{', '.join(MODES)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise RecipeError(source, f"{where}.{term}", f"must be a finite number >= 0, not {value!r}")
        out[term] = float(value)
    return out


def recipe_from_dict(tables: dict, source: str) -> Recipe:
    """A checked ``Recipe`` from a file's nested tables (``source`` names it in errors)."""
    tables = _table(source, "(top level)", tables)
    unknown = sorted(set(tables) - {"data", "dfr", "rignet"})
    if unknown:
        raise RecipeError(source, unknown[0], "unknown table (known: data, dfr, rignet)")
    data = DataRecipe(**_section(DataRecipe, _table(source, "data", tables.get("data", {})), source, "data"))
    dfr = DFRRecipe(**_section(DFRRecipe, _table(source, "dfr", tables.get("dfr", {})), source, "dfr"))
    rig = _table(source, "rignet", tables.get("rignet", {}))
    settings = _section(RigNetRecipe, rig, source, "rignet", skip=("weights", "edit_targets"))
    weights, per_mode = {}, {}
    for key, value in _table(source, "rignet.weights", rig.get("weights", {})).items():
        if key in MODES:
            per_mode[key] = _weights(_table(source, f"rignet.weights.{key}", value), source, f"rignet.weights.{key}")
        else:
            weights.update(_weights({key: value}, source, "rignet.weights"))
    targets = {}
    for mode, value in _table(source, "rignet.edit_targets", rig.get("edit_targets", {})).items():
        if mode not in MODES:
            raise RecipeError(source, f"rignet.edit_targets.{mode}", f"unknown mode (modes: {', '.join(MODES)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise RecipeError(source, f"rignet.edit_targets.{mode}", f"must be a fraction in [0, 1], not {value!r}")
        targets[mode] = float(value)
    trained = settings.get("modes", RigNetRecipe.modes)
    for key, table in (("rignet.weights", per_mode), ("rignet.edit_targets", targets)):
        idle = sorted(set(table) - set(trained))
        if idle:
            raise RecipeError(source, f"{key}.{idle[0]}", f"this recipe trains no {idle[0]} RigNet (rignet.modes)")
    return Recipe(data, dfr, RigNetRecipe(**settings, weights=LossWeights(**weights), mode_weights=per_mode,
                                          edit_targets=targets))


def load_recipe(path: str | Path) -> Recipe:
    """The recipe in a TOML file; a file that cannot be read or parsed is an error naming it."""
    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not a TOML file ({exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a TOML file (not UTF-8 text)") from None
    return recipe_from_dict(tables, str(path))


# Options of the command line before recipes, measured and removed (docs/stylerig.md; git keeps them), with
# the value that meant "off": a run made with one of them on cannot resume.
REMOVED_OPTIONS = {"w_real": 0.0, "w_identity": 0.0, "dfr_augment": False, "target_spread": 0.0, "steered": 0}


def legacy_recipe(settings: dict, source: str) -> Recipe:
    """The recipe of a run made before recipes (its config.json holds the old command line's flat settings:
    ``mode_weights`` as 'MODE:TERM=W,...;MODE:...', ``edit_targets`` as 'F' or 'MODE=F,...')."""
    try:
        return _legacy_recipe(settings, source)
    except (TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, RecipeError) or str(exc).startswith(source):
            raise
        raise ValueError(f"{source}: not the settings of a StyleRig run ({exc})") from None


def _legacy_recipe(settings: dict, source: str) -> Recipe:
    for key, off in REMOVED_OPTIONS.items():
        if settings.get(key, off) != off:
            raise ValueError(f"{source}: made with {key} = {settings[key]!r}, an option since removed")
    pick = lambda *keys: {k: settings[k] for k in keys if k in settings}  # noqa: E731
    rig = {**pick("subspace"), **{new: settings[old] for old, new in (("rig_steps", "steps"), ("rig_batch_size", "batch_size"),
                                                                        ("lr", "lr")) if old in settings}}
    if "modes" in settings:
        rig["modes"] = [m.strip() for m in settings["modes"].split(",") if m.strip()]
    rig["form"] = "steering" if settings.get("steering") else "relative" if settings.get("relative") else "paper"
    weights = {term: settings[f"w_{term}"] for term in ("rec", "edit", "consist") if f"w_{term}" in settings}
    for item in filter(None, (part.strip() for part in settings.get("mode_weights", "").split(";"))):
        mode, _, assignments = item.partition(":")
        for assignment in assignments.split(","):
            term, _, value = (x.strip() for x in assignment.partition("="))
            if term in ("real", "identity") and float(value) == 0:
                continue
            weights.setdefault(mode.strip(), {})[term] = float(value)
    text = str(settings.get("edit_targets", "0")).strip()
    if "=" not in text:
        text = ",".join(f"{m}={text or 0}" for m in MODES)
    targets = {m.strip(): float(f) for m, _, f in (item.partition("=") for item in text.split(",")) if float(f)}
    # The old options took settings for modes a run did not train, to no effect.
    trained = rig.get("modes", list(MODES))
    rig["weights"] = {k: v for k, v in weights.items() if k not in MODES or k in trained}
    rig["edit_targets"] = {m: f for m, f in targets.items() if m in trained}
    dfr = {**pick("batch_size", "lr"), **({"kind": settings["dfr"]} if "dfr" in settings else {}),
           **({"steps": settings["dfr_steps"]} if "dfr_steps" in settings else {})}
    return recipe_from_dict({"data": pick("samples", "truncation", "mixing", "edited"), "dfr": dfr, "rignet": rig}, source)
