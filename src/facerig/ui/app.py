"""The interactive rig behind ``facerig ui``: photo sessions, live buffer previews and edit jobs, as JSON.

Kept apart from HTTP (``server.py``) so it can be driven and tested directly. Images travel as PNG data
URLs. All torch work (captures, previews, edits) runs in order on one thread, the ``TorchWorker``'s, which
``facerig ui`` makes the main thread: OpenMP keeps a thread team per calling thread, and once a process
holds more OpenMP threads than cores, libgomp stops spin-waiting, which doubles the time of the many small
ops of a batch-1 edit (20 steps: 0.6 s on the main thread's team, 1.3-1.4 s on a second thread's). Previews
render the edited face model at ``preview_size`` with no network, so sliders get an answer in a few tens of
milliseconds.
"""

from __future__ import annotations

import base64
import io
import math
import tempfile
import threading
import uuid
from collections import OrderedDict
import queue
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facerig.edit import EditProgress, EditResult, EditSpec, Editor, Session, apply_edit, edit_record
from facerig.edit.photo_scale import at_photo_scale, photo_crop
from facerig.edit.spec import ROLES
from facerig.face3d.light import split_light
from facerig.face3d.rotation import axis_angle_to_euler
from facerig.io import contact_sheet, to_uint8_image
from facerig.render import Renderer, RenderConfig
from facerig.ui.limits import Busy, Limits, SessionStore, check_declared_size

# The ARKit expressions the page offers as sliders (ICT-FaceKit names).
EXPRESSION_SLIDERS = ("mouthSmile_L", "mouthSmile_R", "jawOpen", "browInnerUp", "browDown_L", "browDown_R",
                      "eyeBlink_L", "eyeBlink_R", "mouthPucker", "mouthFunnel", "cheekPuff", "noseSneer_L")


def png_data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def light_direction(azimuth: float, elevation: float) -> tuple[float, float, float]:
    """Camera-space unit direction towards the light from two angles in degrees: azimuth 0 = from the camera,
    +90 = from image right; elevation +90 = from above."""
    az, el = math.radians(azimuth), math.radians(elevation)
    return math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)


def light_angles(direction: torch.Tensor) -> tuple[float, float]:
    x, y, z = (float(v) for v in direction)
    return math.degrees(math.atan2(x, z)), math.degrees(math.asin(max(-1.0, min(1.0, y))))


class TorchWorker:
    """Runs submitted calls one at a time on a single thread: ``run_forever()`` in the thread that should
    do the work (the main thread, in ``facerig ui``), or ``start()`` for a background thread (tests)."""

    def __init__(self):
        self._tasks: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._tasks.put((future, fn, args))
        return future

    def call(self, fn, *args):
        """``fn(*args)`` on the worker thread (directly when already on it), waiting for its result."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        return self.submit(fn, *args).result()

    def run_forever(self) -> None:
        self._thread = threading.current_thread()
        while True:
            future, fn, args = self._tasks.get()
            if fn is None:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)

    def start(self) -> "TorchWorker":
        threading.Thread(target=self.run_forever, daemon=True, name="facerig-torch").start()
        return self

    def stop(self) -> None:
        self._tasks.put((None, None, None))


class UserError(ValueError):
    """A request the page can fix (bad upload, bad value): shown there, never a server failure."""


@dataclass
class Job:
    progress: dict = field(default_factory=lambda: {"stage": "queued", "index": 0, "total": 0})
    preview: str | None = None
    result: dict | None = None
    error: str | None = None
    done: bool = False


class RigApp:
    def __init__(self, editor: Editor, rig: str, worker: TorchWorker, preview_size: int = 128,
                 limits: Limits | None = None, model: str | None = None):
        self.editor, self.rig, self.worker, self.model = editor, rig, worker, model
        self.limits = limits or Limits()
        # What the page offers comes from the rig's contract: a live rig (one cheap pass per edit) returns
        # its result with every preview instead of through a job.
        self.capabilities = editor.contract.capabilities
        self.live = self.capabilities.live
        self.renderer = Renderer(editor.face, RenderConfig(preview_size))
        self.sessions = SessionStore(self.limits.sessions, self.limits.session_bytes)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._jobs_lock = threading.Lock()

    def info(self) -> dict:
        """The rig's contract: its generation options (type, default, range, help), capabilities and stages."""
        return self.editor.contract.describe()

    # -- photos --

    def upload(self, data: bytes, filename: str = "upload") -> dict:
        """An uploaded photo -> a session id, the fitted face drawn over the photo, and slider values."""
        return self.worker.call(self._upload, data, filename)

    def _upload(self, data: bytes, filename: str) -> dict:
        if not data:
            raise UserError("the upload is empty")
        if len(data) > self.limits.upload_bytes:
            raise UserError(f"{filename}: {len(data) / 2**20:.0f} MB is over the "
                            f"{self.limits.upload_bytes >> 20} MB limit")
        try:
            check_declared_size(data, filename, self.limits.decoded_bytes)  # before anything decodes it
        except ValueError as exc:
            raise UserError(str(exc)) from None
        suffix = Path(filename).suffix.lower() if Path(filename).suffix else ".img"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"photo{suffix}"
            path.write_bytes(data)
            try:
                session = self.editor.prepare(path, name=Path(filename).stem or "upload")
            except ValueError as exc:  # unreadable, too small or large, no face: the capture's own reason
                raise UserError(str(exc).replace(str(path), filename)) from None
            # results come back at the photo's own scale: its face is cut at that scale once, now
            session.photo_crop = photo_crop(path, session, keep_pixels=False)
        if self.capabilities.projection:
            self.editor.project(session)  # once, now: every live preview edits its latent
        return self._add(session)

    def face(self, body: dict) -> dict:
        """A face drawn from ``body["seed"]`` by a live rig, as a session like an upload's."""
        if not self.capabilities.seeds:
            raise UserError(f"the {self.rig} rig draws no faces from seeds; upload a photo")
        try:
            seed = int(body.get("seed", 0))
        except (TypeError, ValueError):
            raise UserError("seed must be a whole number") from None
        if not 0 <= seed < 2**31:
            raise UserError("seed must be in [0, 2^31)")

        def draw() -> dict:
            try:
                return self._add(self.editor.prepare_seed(seed))
            except ValueError as exc:  # e.g. capture finds no face in this sample
                raise UserError(f"seed {seed}: {exc}") from None

        return self.worker.call(draw)

    def _add(self, session: Session) -> dict:
        sid = uuid.uuid4().hex[:12]
        self.sessions.add(sid, session)
        return {"session": sid, "name": session.name, "overlay": png_data_url(self._overlay(session)),
                "controls": self._controls(session)}

    def _session(self, sid: str | None) -> Session:
        session = self.sessions.get(sid)
        if session is None:
            raise UserError("that photo is no longer loaded; upload it again")
        return session

    def _overlay(self, session: Session) -> np.ndarray:
        """The aligned photo with the fitted face's shading blended over its mask."""
        with torch.no_grad():
            buf = Renderer(self.editor.face, RenderConfig(session.aligned.shape[-1]))(session.params)
        photo = session.aligned.to(buf.rendered)
        shaded = buf.rendered[0].clamp(0, 1)
        mask = buf.mask[0] * 0.6
        return to_uint8_image(photo * (1 - mask) + shaded * mask)

    def _controls(self, session: Session) -> dict:
        """Slider values of the photo's fitted parameters (a few small ops: not worth caching)."""
        p = session.params
        yaw, pitch, roll = (float(v) for v in axis_angle_to_euler(p.rotation)[0])
        direction, intensity, _ = split_light(p.light)
        az, el = light_angles(direction[0])
        names = self.editor.face.expression_names
        expression = {n: float(p.expression[0, names.index(n)]) for n in EXPRESSION_SLIDERS if n in names}
        return {"yaw": yaw, "pitch": pitch, "roll": roll, "light_azimuth": az, "light_elevation": el,
                "light_intensity": float(intensity[0].mean()), "expression": expression}

    # -- edits --

    def spec(self, body: dict, session: Session) -> tuple[EditSpec, dict[str, Session]]:
        """The EditSpec and target sessions of a request body (slider values, target session ids).

        Only the sliders moved away from the photo's fitted values become explicit values, so a slider left
        alone does not override a transfer from a target photo."""
        fitted = self._controls(session)
        moved = lambda v, f: v is not None and not abs(float(v) - f) <= 1e-3  # noqa: E731 - NaN counts as moved
        try:
            given = body.get("controls") or {}
            c = {k: v for k, v in given.items() if k in fitted and k != "expression" and moved(v, fitted[k])}
            c["expression"] = {k: v for k, v in (given.get("expression") or {}).items()
                               if moved(v, fitted["expression"].get(k, 0.0))}
            if "light_azimuth" in c or "light_elevation" in c:  # the direction is one setting
                c.setdefault("light_azimuth", fitted["light_azimuth"])
                c.setdefault("light_elevation", fitted["light_elevation"])
            light_dir = None
            if c.get("light_azimuth") is not None:
                light_dir = light_direction(float(c["light_azimuth"]), float(c.get("light_elevation", 0.0)))
            num = lambda k: None if c.get(k) is None else float(c[k])  # noqa: E731
            spec = EditSpec(light_dir=light_dir, light_intensity=num("light_intensity"), yaw=num("yaw"),
                            pitch=num("pitch"), roll=num("roll"),
                            expression={k: float(v) for k, v in (c.get("expression") or {}).items()})
        except (TypeError, ValueError) as exc:
            raise UserError(f"bad control value ({exc})") from None
        targets = {}
        for role, sid in (body.get("targets") or {}).items():
            if role not in ROLES:
                raise UserError(f"unknown target role {role!r}")
            if sid:
                targets[role] = self._session(sid)
                setattr(spec, f"{role}_from", targets[role].name)
        try:
            spec.validate(self.editor.face)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return spec, targets

    def preview(self, body: dict) -> dict:
        """Rendered and normal buffers of the edited face model."""
        return self.worker.call(self._preview, body)

    def _preview(self, body: dict) -> dict:
        """Buffers of the edited face model; for a live rig also the edited image and its edit.json."""
        session = self._session(body.get("session"))
        spec, targets = self.spec(body, session)
        with torch.no_grad():
            edited = apply_edit(self.editor.face, session.params, spec, {r: t.params for r, t in targets.items()})
            buf = self.renderer(edited)
        row = [to_uint8_image(buf.rendered[0].clamp(0, 1)), to_uint8_image(buf.normal[0], (-1, 1))]
        out = {"buffers": png_data_url(contact_sheet([row]))}
        if self.live:
            options = self.editor.check_options()
            out.update(self._result(self.editor.edit(session, spec, targets, **options), spec, options, session))
        return out

    def _result(self, result: EditResult, spec: EditSpec, options: dict, session: Session) -> dict:
        """The edited and source images (at the photo's own scale for an uploaded photo; a face drawn from a
        seed has only the rig's), and the edit.json ``facerig edit`` would write for this edit."""
        rig = {"source": to_uint8_image(result.source, (-1, 1)), "edited": to_uint8_image(result.edited, (-1, 1))}
        images = dict(rig)
        if session.photo_crop is not None:
            full = at_photo_scale(session.photo_crop, session, result, self.editor.face)
            images = {"source": to_uint8_image(full.source), "edited": to_uint8_image(full.edited)}
        sizes = {**{k: [v.shape[1], v.shape[0]] for k, v in images.items()}, "edited_rig": list(rig["edited"].shape[1::-1])}
        record = edit_record(result, spec, self.editor.face, {"rig": self.rig, "model": self.model, **options}, sizes)
        return {"edited": png_data_url(images["edited"]), "source": png_data_url(images["source"]), "edit_json": record}

    def start_edit(self, body: dict) -> dict:
        session = self._session(body.get("session"))
        spec, targets = self.spec(body, session)
        unknown = sorted(set(body) - {"session", "controls", "targets", "options"})
        if unknown:
            raise UserError(f"unknown request field {unknown[0]!r} (the rig's options go in \"options\")")
        given = body.get("options") or {}
        if not isinstance(given, dict):
            raise UserError("options must be an object of option name -> value")
        try:
            options = self.editor.check_options(**given)  # the rig's declared options, defaults filled in
        except ValueError as exc:
            raise UserError(str(exc)) from None
        job_id = uuid.uuid4().hex[:12]
        with self._jobs_lock:  # bounded: generations in flight, and finished ones kept for the page
            if sum(not j.done for j in self.jobs.values()) >= self.limits.edits:
                raise Busy(f"the server is busy ({self.limits.edits} generations queued or running); "
                           "try again when one is done")
            finished = [k for k, j in self.jobs.items() if j.done]
            for k in finished[:max(0, len(finished) - self.limits.finished_jobs + 1)]:
                del self.jobs[k]
            job = self.jobs[job_id] = Job()
        self.worker.submit(self._run, job, session, spec, targets, options)
        return {"job": job_id}

    def _run(self, job: Job, session: Session, spec: EditSpec, targets: dict, options: dict) -> None:
        def on_step(p: EditProgress) -> None:
            job.progress = {"stage": p.stage.value, "index": p.index + 1, "total": p.total}
            if p.stage.shows_result:
                job.preview = png_data_url(to_uint8_image(p.preview, (-1, 1)))

        try:
            job.progress = {"stage": "starting", "index": 0, "total": 0}
            result = self.editor.edit(session, spec, targets, on_step=on_step, **options)
            job.result = self._result(result, spec, options, session)
        except ValueError as exc:
            job.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported in the page; the server keeps serving
            job.error = f"edit failed: {type(exc).__name__}: {exc}"
        finally:
            job.done = True

    def job(self, job_id: str) -> dict:
        job = self.jobs.get(job_id)
        if job is None:
            raise UserError("unknown job")
        return {"progress": job.progress, "preview": job.preview, "result": job.result, "error": job.error,
                "done": job.done}
