"""The interactive rig with the shipped StyleRig: faces from seeds, live results, a projected photo, and the
page in a real browser (as tests/test_ui.py, Debian's chromium driven by playwright)."""

import shutil
import threading
from pathlib import Path

import pytest
from helpers import require, shared_path, unavailable

from facerig.stylerig.editor import StyleRigEditor
from facerig.ui.app import RigApp, TorchWorker, UserError
from facerig.ui.server import make_server

MODEL = Path(__file__).parents[1] / "models" / "stylerig-utk64"
CHROMIUM = "/usr/bin/chromium"
SEED = 1  # a shipped-model face dlib finds


@pytest.fixture(scope="module")
def app():
    worker = TorchWorker().start()
    yield RigApp(StyleRigEditor(MODEL), "stylerig", worker)
    worker.stop()


@pytest.fixture(scope="module")
def face(app):
    return app.face({"seed": SEED})


def test_live_rig_draws_faces_and_previews_carry_the_result(app, face):
    info = app.info()
    assert info["rig"] == "stylerig" and [o["name"] for o in info["options"]] == ["steps"]
    assert info["capabilities"]["live"] and info["capabilities"]["seeds"] and not info["capabilities"]["inversion"]
    assert face["overlay"].startswith("data:image/png") and "yaw" in face["controls"]
    body = {"session": face["session"], "controls": face["controls"]}
    still = app.preview(body)
    assert still["edited"] == still["source"]  # nothing moved: the generated face itself
    turned = app.preview({**body, "controls": {**face["controls"], "yaw": face["controls"]["yaw"] + 30}})
    again = app.preview({**body, "controls": {**face["controls"], "yaw": face["controls"]["yaw"] + 30}})
    assert turned["edited"] == again["edited"] != still["edited"]
    assert turned["edit_json"]["options"]["rig"] == "stylerig"


def test_bad_seeds_are_user_errors(app):
    for seed in (-1, "x", 2**40):
        with pytest.raises(UserError, match="seed"):
            app.face({"seed": seed})


@pytest.fixture(scope="module")
def server(app):
    srv = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def test_stylerig_page_in_a_real_browser(server):
    sync_api = require("playwright.sync_api")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        unavailable("Debian's chromium is not installed (apt-get install chromium)")
    shots = Path("out") / "ui-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu",
                                                                    "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server)
            page.wait_for_function("!document.getElementById('seed-panel').hidden", timeout=30_000)
            assert page.is_hidden("#generation")
            page.fill("#face-seed", str(SEED))
            page.click("#draw")
            page.wait_for_function("document.getElementById('result').dataset.done === '1'", timeout=60_000)
            first = page.get_attribute("#result", "src")
            for name, value in (("s-yaw", "30"), ("s-light_azimuth", "-70")):
                page.eval_on_selector(f"#{name}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)
            page.wait_for_function(f"document.getElementById('result').src !== {first!r}", timeout=30_000)
            page.screenshot(path=str(shots / "stylerig-seed.png"), full_page=True)
            before = page.get_attribute("#result", "src")
            page.set_input_files("#photo", str(shared_path("data", "ffhq-samples", "00003.png")))
            page.wait_for_function(f"document.getElementById('result').src !== {before!r}", timeout=120_000)
            page.screenshot(path=str(shots / "stylerig-photo.png"), full_page=True)
        finally:
            browser.close()
