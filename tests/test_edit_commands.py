import numpy as np
import pytest
from helpers import shared_path
from PIL import Image

from facerig.cli import main

MODEL = "models/diffusionrig-tiny-celeba64.safetensors"


@pytest.fixture(scope="module")
def photo():
    return str(shared_path("data", "ffhq-samples", "00003.png"))


def _edit(tmp_path, photo, *extra):
    return main(["edit", photo, "--model", MODEL, "--out", str(tmp_path / "out"), "--threads", "1", *extra])


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps must be in"),
    (["--steps", "-5"], "--steps must be in"),
    (["--refine", "-1"], "--refine must be in"),
    (["--steps", "700"], "no DDIM respacing of 1000 steps into exactly 700"),
    (["--yaw", "nan"], "yaw must be a finite number"),
    (["--pitch", "inf"], "pitch must be a finite number"),
    (["--light-dir=0,0,0"], "light direction must not be zero"),
    (["--light-dir=1,nan,0"], "three finite numbers"),
    (["--expr", "jawOpen=1e30"], "expression weight jawOpen 1e\\+30 is outside"),
    (["--expr", "smile=0.5"], "unknown expression 'smile'"),
    (["--light-from", "no/such/photo.png"], "no/such/photo.png: no such photo"),
    (["--guidance", "nan"], "--guidance must be in"),
    # an option the rig does not declare is refused, never ignored
    (["--rig", "stylerig", "--refine", "1"], "--refine: the stylerig rig has no such option \\(its options: --steps\\)"),
    (["--rig", "stylerig", "--seed", "3"], "--seed: the stylerig rig has no such option"),
    (["--rig", "stylerig", "--invert"], "--invert: the stylerig rig has no such option"),
    (["--rig", "stylerig", "--album", "data/me"], "the stylerig rig has no personal models"),
])
def test_bad_arguments_are_one_line_before_any_capture(tmp_path, photo, capsys, extra, message):
    assert _edit(tmp_path, photo, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out" / "00003" / "edited.png").exists()


def test_unusable_photos_and_outputs_are_one_line(tmp_path, photo, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(blank)
    assert _edit(tmp_path, str(blank)) == 2
    assert "blank.png: no face found" in capsys.readouterr().err
    assert _edit(tmp_path, str(tmp_path / "missing.png")) == 2
    assert "missing.png: no such photo" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["edit", photo, "--model", MODEL, "--out", str(tmp_path / "file"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "file" in err and "is a file" in err and len(err.strip().splitlines()) == 1
    assert _edit(tmp_path, photo, "--model", str(tmp_path / "file")) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_edit_writes_the_result(tmp_path, photo):
    assert _edit(tmp_path, photo, "--yaw", "20", "--steps", "4", "--expr", "mouthSmile_L=0.8", "--paste-back") == 0
    folder = tmp_path / "out" / "00003"
    assert all((folder / n).stat().st_size > 0 for n in ("source.png", "edited.png", "sheet.png", "edit.json"))
    # at the photo's scale: FFHQ's 256 px photo is about its own crop; the rig's 64 px output beside it
    sizes = __import__("json").loads((folder / "edit.json").read_text())["sizes"]
    assert sizes["edited"] == sizes["source"] == list(Image.open(folder / "edited.png").size)
    assert 256 <= sizes["edited"][0] <= 270 and sizes["edited_rig"] == [64, 64]
    assert Image.open(folder / "pasted.png").size == Image.open(photo).size
    assert _edit(tmp_path, photo, "--light-dir=-1,0.3,0.6", "--steps", "4", "--rig-size") == 0
    assert Image.open(folder / "edited.png").size == Image.open(folder / "source.png").size == (64, 64)
    assert __import__("json").loads((folder / "edit.json").read_text())["sizes"]["edited"] == [64, 64]


def test_help_lists_every_rigs_options_from_their_contracts(capsys):
    from facerig.edit.editor import RIGS, editor_class

    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS diffusion: DDIM steps (default 20, 2 to 1000); stylerig: W+ projection iterations" in text
    assert "(default 1, 0 to 10); diffusion rig only" in text and "--invert, --no-invert" in text
    for rig in RIGS:
        for option in editor_class(rig).contract.options:
            assert f"--{option.name}" in text
