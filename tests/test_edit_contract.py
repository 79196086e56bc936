"""The rig contract, over every rig registered in RIGS with its shipped model: each declares its options,
capabilities and progress stages; refuses options it does not declare; reports only its declared stages;
and its edit.json, written by facerig edit or offered by the UI, has the same fields."""

import json
import time
from pathlib import Path

import pytest
from helpers import shared_path

from facerig.edit import EditSpec, Editor, RigOption, Stage, write_edit
from facerig.edit.editor import RIGS, editor_class, load_editor
from facerig.face3d import FaceParams
from facerig.ui.app import RigApp, TorchWorker

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"diffusion": ROOT / "models" / "diffusionrig-tiny-celeba64.safetensors", "stylerig": ROOT / "models" / "stylerig-utk64"}
EDIT_JSON_FIELDS = {"edit", "options", "model_face", "source_params", "target_params", "sizes"}
ALL_OPTIONS = {o.name for rig in RIGS for o in editor_class(rig).contract.options}


def test_every_registered_rig_has_a_shipped_model_to_check():
    assert set(MODELS) == set(RIGS)


def _cheap(option: RigOption):
    """The option's cheapest value that still exercises it: the low end of a whole-number range (fewest
    steps), flags on (inversion adds its stage), other numbers at their default."""
    if option.type is bool:
        return True
    return option.range[0] if option.type is int else option.default


@pytest.mark.parametrize("rig", sorted(RIGS))
def test_each_rig_declares_options_capabilities_and_stages(rig):
    cls = editor_class(rig)
    contract = cls.contract
    assert issubclass(cls, Editor) and contract.rig == rig
    names = [o.name for o in contract.options]
    assert len(set(names)) == len(names)
    for o in contract.options:
        assert o.type in (int, float, bool) and o.help and isinstance(o.default, o.type)
        if o.type is not bool:
            low, high = o.range
            assert low <= o.default <= high
    assert contract.resolve({}) == {o.name: o.default for o in contract.options}
    assert contract.stages and all(isinstance(s, Stage) for s in contract.stages)
    assert any(s.shows_result for s in contract.stages)  # some stage's previews are the result
    # a capability is declared exactly where the rig implements it
    caps = contract.capabilities
    assert caps.seeds == (cls.prepare_seed is not Editor.prepare_seed)
    assert caps.projection == (cls.project is not Editor.project)
    described = json.loads(json.dumps(contract.describe()))
    assert [o["name"] for o in described["options"]] == names
    assert described["capabilities"]["inversion"] == ("invert" in names)


@pytest.mark.parametrize("rig", sorted(RIGS))
def test_each_rig_refuses_what_it_does_not_declare_in_one_line(rig):
    cls = editor_class(rig)
    for name in sorted(ALL_OPTIONS - {o.name for o in cls.contract.options} | {"bogus"}):
        with pytest.raises(ValueError, match=f"--{name}: the {rig} rig has no such option") as err:
            cls.check_options(**{name: 1})
        assert "\n" not in str(err.value)
    for o in cls.contract.options:
        bad = [1] if o.type is bool else [o.range[1] + 1, o.range[0] - 1, "3"] + ([2.5] if o.type is int else [float("nan")])
        for value in bad:
            with pytest.raises(ValueError, match=f"--{o.name} must be"):
                cls.check_options(**{o.name: value})


@pytest.fixture(scope="module", params=sorted(RIGS))
def editor(request):
    return load_editor(request.param, str(MODELS[request.param]), precision="fp32")


@pytest.fixture(scope="module")
def photo():
    return str(shared_path("data", "ffhq-samples", "00003.png"))


def test_each_rig_reports_only_its_declared_stages_and_writes_the_common_edit_json(editor, photo, tmp_path):
    contract = editor.contract
    options = {o.name: _cheap(o) for o in contract.options}
    session = editor.prepare(photo)
    spec = EditSpec(yaw=15.0)
    with pytest.raises(ValueError, match="no such option"):
        editor.edit(session, spec, bogus=1)
    seen = []
    result = editor.edit(session, spec, on_step=seen.append, **options)
    assert seen and {p.stage for p in seen} <= set(contract.stages)
    order = [contract.stages.index(p.stage) for p in seen]
    assert order == sorted(order)  # stages come in their declared order
    assert all(0 <= p.index < p.total and p.preview.shape == result.edited.shape for p in seen)
    assert seen[-1].stage.shows_result and seen[-1].index == seen[-1].total - 1

    resolved = editor.check_options(**options)
    recorded = {"rig": contract.rig, "model": str(MODELS[contract.rig]), **resolved}
    record = json.loads((write_edit(tmp_path / "edit", result, spec, editor.face, recorded) / "edit.json").read_text())
    assert set(record) == EDIT_JSON_FIELDS and set(record["options"]) == {"rig", "model", *resolved}
    assert {"source", "edited"} <= set(record["sizes"])
    params = {f for f in FaceParams.__dataclass_fields__}
    assert set(record["source_params"]) == set(record["target_params"]) == params


def test_the_ui_offers_the_very_edit_json_facerig_edit_writes(editor, photo, tmp_path):
    """The same edit of the same face through the UI's public calls and through write_edit: a face drawn
    from a seed where the rig draws them (an upload would project it at full length), else the photo."""
    contract = editor.contract
    options = {o.name: _cheap(o) for o in contract.options}
    seeds = contract.capabilities.seeds
    spec = EditSpec(yaw=15.0)
    session = editor.prepare_seed(1) if seeds else editor.prepare(photo)
    result = editor.edit(session, spec, **options)
    recorded = {"rig": contract.rig, "model": str(MODELS[contract.rig]), **editor.check_options(**options)}
    record = json.loads((write_edit(tmp_path / "edit", result, spec, editor.face, recorded) / "edit.json").read_text())
    worker = TorchWorker().start()
    try:
        app = RigApp(editor, contract.rig, worker, model=str(MODELS[contract.rig]))
        assert app.info() == contract.describe()
        added = app.face({"seed": 1}) if seeds else app.upload(Path(photo).read_bytes(), "00003.png")
        job = app.start_edit({"session": added["session"], "controls": {"yaw": 15.0}, "options": options})["job"]
        for _ in range(1200):
            state = app.job(job)
            if state["done"]:
                break
            time.sleep(0.05)
    finally:
        worker.stop()
    assert state["error"] is None
    served = json.loads(json.dumps(state["result"]["edit_json"]))
    # the UI serves the result at the uploaded photo's scale, write_edit here got the rig's: only sizes differ
    assert set(served.pop("sizes")) == set(record.pop("sizes")) and served == record
    assert state["progress"]["stage"] in {s.value for s in contract.stages}


def test_seeds_and_projection_are_there_exactly_where_declared(editor, photo):
    caps = editor.contract.capabilities
    steps = {"steps": 2} if editor.contract.declares("steps") else {}
    if caps.seeds:
        session = editor.prepare_seed(1)
        seen = []
        editor.edit(session, EditSpec(), on_step=seen.append)
        assert all(p.stage.shows_result for p in seen)  # a drawn face's latent is known: nothing to fit
    else:
        with pytest.raises(ValueError, match="no faces from seeds"):
            editor.prepare_seed(1)
    session = editor.prepare(photo)
    if caps.projection:
        projected = []
        editor.project(session, on_step=projected.append, **steps)
        assert projected and {p.stage for p in projected} == {Stage.PROJECT}
        seen = []
        editor.edit(session, EditSpec(), on_step=seen.append, **steps)
        assert all(p.stage.shows_result for p in seen)  # the projection is reused
    else:
        with pytest.raises(ValueError, match="no projection"):
            editor.project(session)
