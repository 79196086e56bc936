"""``facerig ui``'s web server: the standard library's threading HTTP server, one page, a JSON API.

No web framework: the app is one page and five JSON endpoints, the standard library serves them with
nothing to install, starts instantly and binds to localhost only by default. Every handler turns a
``UserError`` into a 400 with its message and anything else into a 500 with a one-line reason: a bad
upload or a failing edit is shown in the page and the server keeps serving.

    GET  /                      the page
    POST /api/photo?name=F      body: image bytes -> {session, overlay, controls}
    POST /api/preview           {session, controls, targets} -> {buffers}
    GET  /api/info              -> the rig's contract: {rig, options, capabilities, stages}
    POST /api/edit              {session, controls, targets, options: {name: value}} -> {job}
    GET  /api/job/ID            -> {progress, preview, result, error, done}
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlparse

from facerig.ui.app import MAX_UPLOAD_BYTES, RigApp, UserError

MAX_JSON_BYTES = 1 << 20


def make_server(app: RigApp, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    page = resources.files("facerig.ui").joinpath("page.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the terminal for the URL and errors
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: dict) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _answer(self, fn, *args) -> None:
            try:
                self._json(200, fn(*args))
            except UserError as exc:
                self._json(400, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - one failing request must not take the server down
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

        def _body(self, limit: int) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > limit:
                raise UserError(f"request of {length / 2**20:.1f} MB is over the {limit / 2**20:.0f} MB limit")
            return self.rfile.read(length)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            elif url.path == "/api/info":
                self._json(200, app.info())
            elif url.path.startswith("/api/job/"):
                self._answer(app.job, url.path.rsplit("/", 1)[-1])
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            try:
                if url.path == "/api/photo":
                    name = parse_qs(url.query).get("name", ["upload"])[0]
                    data = self._body(MAX_UPLOAD_BYTES)
                    return self._answer(app.upload, data, name)
                body = json.loads(self._body(MAX_JSON_BYTES) or b"{}")
            except UserError as exc:
                return self._json(413, {"error": str(exc)})
            except (ValueError, json.JSONDecodeError):
                return self._json(400, {"error": "the request body is not JSON"})
            routes = {"/api/preview": app.preview, "/api/edit": app.start_edit, "/api/face": app.face}
            if url.path not in routes:
                return self._json(404, {"error": "not found"})
            if not isinstance(body, dict):
                return self._json(400, {"error": "the request body must be a JSON object"})
            self._answer(routes[url.path], body)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
