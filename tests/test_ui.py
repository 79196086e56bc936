"""The interactive rig: the app logic directly, then the page in a real browser (Debian's chromium driven by
playwright with the system browser; .ci/run installs it)."""

import base64
import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import require, shared_path, unavailable
from PIL import Image

from facerig.diffusion.editor import DiffusionRigEditor
from facerig.ui.app import RigApp, TorchWorker, UserError
from facerig.ui.server import make_server

MODEL = Path(__file__).parents[1] / "models" / "diffusionrig-tiny-celeba64.safetensors"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def app():
    worker = TorchWorker().start()
    yield RigApp(DiffusionRigEditor(MODEL, precision="fp32"), "diffusion", worker, model=str(MODEL))
    worker.stop()


@pytest.fixture(scope="module")
def photo_bytes():
    return shared_path("data", "ffhq-samples", "00003.png").read_bytes()


@pytest.fixture(scope="module")
def uploaded(app, photo_bytes):
    return app.upload(photo_bytes, "00003.png")


def _wait(app, job_id, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        state = app.job(job_id)
        if state["done"]:
            return state
        time.sleep(0.05)
    raise AssertionError("edit job did not finish")


def test_upload_gives_session_overlay_and_the_fitted_controls(uploaded):
    assert uploaded["overlay"].startswith("data:image/png;base64,")
    c = uploaded["controls"]
    assert abs(c["yaw"]) < 45 and 0 <= c["expression"]["jawOpen"] <= 1 and c["light_intensity"] >= 0


def test_preview_follows_the_sliders(app, uploaded):
    base = {"session": uploaded["session"], "controls": dict(uploaded["controls"])}
    a = app.preview(base)["buffers"]
    assert app.preview(base)["buffers"] == a  # same controls, same picture
    turned = {**base, "controls": {**base["controls"], "yaw": 30.0}}
    lit = {**base, "controls": {**base["controls"], "light_azimuth": -80.0}}
    assert app.preview(turned)["buffers"] != a and app.preview(lit)["buffers"] != a


def test_untouched_sliders_leave_transfers_alone(app, uploaded, photo_bytes):
    session = app.sessions[uploaded["session"]]
    target = app.upload(Path(shared_path("data", "ffhq-samples", "00001.png")).read_bytes(), "00001.png")
    body = {"controls": dict(uploaded["controls"]), "targets": {"pose": target["session"]}}
    spec, targets = app.spec(body, session)
    assert spec.yaw is None and spec.light_dir is None and spec.expression == {} and "pose" in targets
    moved = {**body, "controls": {**body["controls"], "yaw": 12.0, "expression": {"jawOpen": 0.9}}}
    spec, _ = app.spec(moved, session)
    assert spec.yaw == 12.0 and spec.pitch is None and spec.expression == {"jawOpen": 0.9}


@pytest.mark.parametrize("data, name, message", [
    (b"", "empty.png", "empty"),
    (b"\x89PNG\r\n\x1a\n this is not a png", "corrupt.png", "corrupt.png"),
    (b"0" * (26 << 20), "huge.jpg", "over the 25 MB limit"),
])
def test_bad_uploads_are_user_errors(app, data, name, message):
    with pytest.raises(UserError, match=message):
        app.upload(data, name)


def test_photo_without_a_face_is_a_user_error(app):
    buf = io.BytesIO()
    Image.fromarray(np.full((300, 300, 3), 90, np.uint8)).save(buf, format="PNG")
    with pytest.raises(UserError, match="blank.png: no face found"):
        app.upload(buf.getvalue(), "blank.png")


def test_edit_job_reports_progress_and_same_seed_same_result(app, uploaded):
    options = {"steps": 3, "seed": 5, "invert": False}
    body = {"session": uploaded["session"], "controls": {**uploaded["controls"], "yaw": 20.0}, "options": options}
    first = _wait(app, app.start_edit(body)["job"])
    assert first["error"] is None and first["progress"] == {"stage": "sample", "index": 3, "total": 3}
    again = _wait(app, app.start_edit(body)["job"])
    other = _wait(app, app.start_edit({**body, "options": {**options, "seed": 6}})["job"])
    assert again["result"]["edited"] == first["result"]["edited"] != other["result"]["edited"]
    record = first["result"]["edit_json"]
    assert record["edit"]["yaw"] == 20.0 and record["model_face"] == app.editor.face.name
    # the result comes back at the photo's own scale (FFHQ's 256 px photo is about its own crop)
    size = Image.open(io.BytesIO(base64.b64decode(first["result"]["edited"].split(",", 1)[1]))).size
    assert list(size) == record["sizes"]["edited"] == record["sizes"]["source"] and 256 <= size[0] <= 270
    assert record["sizes"]["edited_rig"] == [64, 64]
    # the options as facerig edit records them: rig, model, and every option the rig declares
    assert record["options"] == {"rig": "diffusion", "model": str(MODEL), "steps": 3, "seed": 5, "invert": False,
                                 "refine": 1, "guidance": 1.0}
    for bad, message in (({"steps": 0}, "steps must be in"), ({"refine": 2.5}, "refine must be a whole number"),
                         ({"invert": "yes"}, "invert must be true or false"), ({"truncation": 1}, "no such option")):
        with pytest.raises(UserError, match=message):
            app.start_edit({**body, "options": {**options, **bad}})
    with pytest.raises(UserError, match="unknown request field 'steps'"):  # options outside "options"
        app.start_edit({**body, "steps": 3})
    with pytest.raises(UserError, match="yaw must be a finite number"):
        app.preview({**body, "controls": {**body["controls"], "yaw": float("nan")}})


@pytest.fixture(scope="module")
def server(app):
    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def test_page_in_a_real_browser(server, tmp_path):
    sync_api = require("playwright.sync_api")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        unavailable("Debian's chromium is not installed (apt-get install chromium)")
    shots = Path("out") / "ui-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server)
            page.set_input_files("#photo", str(shared_path("data", "ffhq-samples", "00003.png")))
            page.wait_for_function("document.getElementById('overlay').src.startsWith('data:image')", timeout=60_000)
            page.wait_for_function("Number(document.getElementById('buffers').dataset.count) >= 1", timeout=30_000)
            before = page.get_attribute("#buffers", "src")
            for name, value in (("s-yaw", "35"), ("s-light_azimuth", "-70")):
                page.eval_on_selector(f"#{name}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)
            page.wait_for_function(f"document.getElementById('buffers').src !== {before!r}", timeout=30_000)
            # the generation controls are the rig's declared options, with their ranges and defaults
            assert page.get_attribute("#opt-steps", "max") == "1000" and page.input_value("#opt-refine") == "1"
            assert not page.is_checked("#opt-invert")
            page.fill("#opt-steps", "3")
            page.click("#generate")
            page.wait_for_function("document.getElementById('result').dataset.done === '1'", timeout=120_000)
            assert page.get_attribute("#result", "src").startswith("data:image/png")
            assert not page.is_hidden("#download-json")
            page.screenshot(path=str(shots / "photo-edit.png"), full_page=True)
            # a result the controls no longer match is marked stale, and unmarked when they match again
            assert page.is_hidden("#stale")
            page.check("#opt-invert")
            page.fill("#opt-steps", "4")
            page.wait_for_selector("#stale", state="visible", timeout=5_000)
            page.uncheck("#opt-invert")
            page.fill("#opt-steps", "3")
            page.wait_for_selector("#stale", state="hidden", timeout=5_000)
            page.eval_on_selector("#s-pitch", "el => { el.value = 10; el.dispatchEvent(new Event('input')); }")
            page.wait_for_selector("#stale", state="visible", timeout=5_000)
            page.screenshot(path=str(shots / "stale-result.png"), full_page=True)
            # a busy server is said in the page, and the preview is asked again
            count = int(page.get_attribute("#buffers", "data-count"))
            page.route("**/api/preview", lambda route: route.fulfill(status=503, content_type="application/json", body=(
                '{"error": "the server is busy (4 previews in progress); try again in a moment", "busy": true}')))
            page.eval_on_selector("#s-roll", "el => { el.value = 5; el.dispatchEvent(new Event('input')); }")
            page.wait_for_function("document.getElementById('error').textContent.includes('server is busy')", timeout=10_000)
            page.unroute("**/api/preview")
            page.wait_for_function(f"Number(document.getElementById('buffers').dataset.count) > {count}", timeout=30_000)
            assert page.text_content("#error") == ""
            bad = tmp_path / "broken.png"
            bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
            page.set_input_files("#photo", str(bad))
            page.wait_for_function("document.getElementById('error').textContent.includes('broken.png')", timeout=30_000)
            page.screenshot(path=str(shots / "bad-upload.png"), full_page=True)
            assert page.evaluate("fetch('/').then(r => r.status)") == 200  # still serving
        finally:
            browser.close()


@pytest.mark.parametrize("rig", ["diffusion", "stylerig"])
def test_ui_without_model_opens_the_rigs_shipped_model(rig, monkeypatch):
    """`facerig ui` with no --model serves the rig's default model from models/ (what README's demo uses)."""
    import facerig.edit.editor as editor_mod
    from facerig.cli import main
    from facerig.paths import DEFAULT_MODELS, shipped_model

    opened = []

    def stop_here(rig_name, model, *args, **kwargs):
        opened.append((rig_name, model))
        raise SystemExit(0)

    monkeypatch.setattr(editor_mod, "load_editor", stop_here)
    with pytest.raises(SystemExit):
        main(["ui", "--rig", rig])
    assert opened == [(rig, str(shipped_model(DEFAULT_MODELS[rig])))]
    assert Path(opened[0][1]).exists()
