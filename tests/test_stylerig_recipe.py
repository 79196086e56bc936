"""StyleRig recipes (``facerig.stylerig.recipe``): the shipped models' recipes say what their command lines
said, and a bad recipe is one line naming the file and the key."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from facerig.cli import build_parser
from facerig.stylerig.recipe import Recipe, legacy_recipe, load_recipe, recipe_from_dict
from facerig.stylerig.rig import MODES

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs" / "stylerig"
# What each shipped run's command line (models/README.md before recipes) resolved to with the old CLI,
# recorded with it before its options were replaced by recipe files.
SHIPPED_COMMANDS = json.loads((Path(__file__).parent / "stylerig_shipped_commands.json").read_text())
SHIPPED_MODELS = {"stylerig-utk64": "utk64-rig3", "stylerig-celeba64": "celeba64-r3"}


def _readme_commands() -> dict[str, list[str]]:
    """recipe name -> the arguments of its ``facerig stylerig train`` command in models/README.md."""
    text = (ROOT / "models" / "README.md").read_text().replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        match = re.search(r"facerig stylerig train (.*--recipe configs/stylerig/([\w-]+)\.toml.*)", line)
        if match:
            out[match[2]] = shlex.split(match[1].split("#")[0])
    return out


def test_every_shipped_run_has_its_recipe_and_readme_command():
    assert sorted(p.stem for p in CONFIGS.glob("*.toml")) == sorted(SHIPPED_COMMANDS)
    assert sorted(_readme_commands()) == sorted(SHIPPED_COMMANDS)


@pytest.mark.parametrize("name", sorted(SHIPPED_COMMANDS))
def test_shipped_recipe_maps_to_the_settings_its_command_used(name):
    old = SHIPPED_COMMANDS[name]["settings"]
    recipe = load_recipe(CONFIGS / f"{name}.toml")
    assert (recipe.data.samples, recipe.data.truncation, recipe.data.mixing, recipe.data.edited) == \
        (old["samples"], old["truncation"], old["mixing"], old["edited"])
    assert (recipe.dfr.kind, recipe.dfr.steps, recipe.dfr.batch_size, recipe.dfr.lr) == \
        (old["dfr"], old["dfr_steps"], old["batch_size"], old["lr"])
    rig = recipe.rignet
    assert list(rig.modes) == old["modes"].split(",")
    assert (rig.steps, rig.batch_size, rig.lr, rig.subspace) == (old["rig_steps"], old["rig_batch_size"], old["lr"],
                                                                 old["subspace"])
    assert (rig.form == "steering", rig.form == "relative") == (old["steering"], old["relative"])
    for mode, want in old["per_mode"].items():
        assert {**rig.weights_for(mode).to_dict(), "edit_targets": rig.edit_targets_for(mode)} == \
            {k: v for k, v in want.items() if k not in ("real", "identity")}, mode
        assert want["real"] == want["identity"] == 0.0  # no shipped run used the removed terms
    assert not (old["w_real"] or old["w_identity"] or old["dfr_augment"] or old["target_spread"] or old["steered"])
    # The README's command gives the rest: where the generator, the run and the runs it builds on are.
    args = build_parser("stylerig").parse_args(["stylerig", "train", *_readme_commands()[name]])
    assert (args.generator, args.out, args.reuse, args.edited_by, args.seed) == \
        (old["generator"], old["out"], old["reuse"], old["edited_by"], old["seed"])


@pytest.mark.parametrize("model, name", sorted(SHIPPED_MODELS.items()))
def test_shipped_model_config_is_its_recipes(model, name):
    config = json.loads((ROOT / "models" / model / "config.json").read_text())
    recipe = load_recipe(CONFIGS / f"{name}.toml")
    assert config["dfr"] == recipe.dfr.kind and config["modes"] == list(recipe.rignet.modes)
    assert config["truncation"] == recipe.data.truncation
    assert (config["steering"], config.get("relative", False), config.get("subspace", 0)) == \
        (recipe.rignet.form == "steering", recipe.rignet.form == "relative", recipe.rignet.subspace)


def test_an_empty_recipe_is_the_defaults_and_every_key_round_trips(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    assert load_recipe(tmp_path / "empty.toml") == Recipe()
    recipe = load_recipe(CONFIGS / "celeba64-r3.toml")
    assert recipe_from_dict(recipe.to_dict(), "again") == recipe
    assert recipe.rignet.weights_for("expression").edit == 40.0 and recipe.rignet.weights_for("light").edit == 1.0
    assert recipe.rignet.edit_targets_for("light") == 0.0


@pytest.mark.parametrize("text, key", [
    ("[data]\nsamples = 0", "data.samples"),
    ("[data]\nsampels = 10", "data.sampels"),
    ("[data]\ntruncation = 1.5", "data.truncation"),
    ("[data]\nsamples = 2.5", "data.samples"),
    ("[data]\nsamples = true", "data.samples"),
    ("[dfr]\nkind = \"resnet\"", "dfr.kind"),
    ("[dfr]\nlr = -1", "dfr.lr"),
    ("[rignet]\nmodes = [\"pose\", \"teeth\"]", "rignet.modes"),
    ("[rignet]\nmodes = []", "rignet.modes"),
    ("[rignet]\nform = \"both\"", "rignet.form"),
    ("[rignet.weights]\nreal = 1.0", "rignet.weights.real"),
    ("[rignet.weights]\nedit = -1", "rignet.weights.edit"),
    ("[rignet.weights.smile]\nedit = 2", "rignet.weights.smile"),
    ("[rignet.weights.light]\nedit = nan", "rignet.weights.light.edit"),
    ("[rignet.edit_targets]\npose = 1.5", "rignet.edit_targets.pose"),
    ("[rignet.edit_targets]\nteeth = 0.5", "rignet.edit_targets.teeth"),
    ("[rignet]\nmodes = [\"pose\"]\n[rignet.weights.light]\nedit = 2", "rignet.weights.light"),
    ("[training]\nsteps = 1", "training"),
    ("data = 3", "data"),
])
def test_bad_recipe_is_one_error_naming_file_and_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ") and "\n" not in message


def test_unreadable_recipe_names_the_file(tmp_path):
    (tmp_path / "broken.toml").write_text("[data\nsamples = 3")
    with pytest.raises(ValueError, match="broken.toml: not a TOML file"):
        load_recipe(tmp_path / "broken.toml")
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "missing.toml")


def test_old_runs_settings_read_as_the_recipe_they_meant():
    """A run made before recipes kept the old command line's flat settings; they resume as this recipe."""
    for name, entry in SHIPPED_COMMANDS.items():
        assert legacy_recipe(entry["settings"], "config.json") == load_recipe(CONFIGS / f"{name}.toml"), name
    settings = SHIPPED_COMMANDS["utk64-rig"]["settings"]
    assert legacy_recipe({**settings, "edit_targets": "0.25"}, "c").rignet.edit_targets == {m: 0.25 for m in MODES}
    with pytest.raises(ValueError, match="w_real"):
        legacy_recipe({**settings, "w_real": 50.0}, "config.json")


def test_cli_lists_few_options_and_refuses_a_bad_recipe_in_one_line(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "facerig.cli", *a], capture_output=True, text=True)  # noqa: E731
    help_text = run("stylerig", "train", "--help").stdout
    options = set(re.findall(r"^\s+(-[-\w]+)", help_text, re.M))
    assert "--recipe" in options and len(options) <= 15, sorted(options)
    (tmp_path / "bad.toml").write_text("[rignet]\nmodes = [\"pose\", \"teeth\"]\n")
    r = run("stylerig", "train", str(tmp_path / "g"), "--recipe", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "bad.toml: rignet.modes:" in r.stderr
