"""``facerig ui``'s web server: the standard library's threading HTTP server, one page, a JSON API.

No web framework: the app is one page and a few JSON endpoints, the standard library serves them with
nothing to install, starts instantly and binds to localhost only by default. Every handler turns a
``UserError`` into a 400 with its message, ``Busy`` into a 503 and anything else into a 500 with a
one-line reason: a bad upload or a failing edit is shown in the page and the server keeps serving.
Requests from other sites are refused (``facerig.ui.guard``); what a request may hold is bounded
(``facerig.ui.limits``); a client that goes away mid-answer is no error.

    GET  /                      the page
    GET  /api/info              -> the rig's contract: {rig, options, capabilities, stages}
    POST /api/photo?name=F      body: image bytes -> {session, overlay, controls}
    POST /api/face              {seed} -> as /api/photo (rigs that draw faces from seeds)
    POST /api/preview           {session, controls, targets} -> {buffers}
    POST /api/edit              {session, controls, targets, options: {name: value}} -> {job}
    GET  /api/job/ID            -> {progress, preview, result, error, done}
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlparse

from facerig.ui.app import RigApp, UserError
from facerig.ui.guard import Guard
from facerig.ui.limits import Busy, Limits, Slots

# After refusing a body unread (too large, or the server busy), how long to discard what the client still
# sends, at most, so that it reads the answer instead of a connection reset: nothing of it is kept.
DISCARD_SECONDS, DISCARD_BYTES = 2.0, 64 << 20


class TooLarge(Exception):
    """A body over its limit, refused from its Content-Length: 413."""


class RigServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # a burst of connections waits to be accepted (and maybe told "busy"), not reset

    def handle_error(self, request, client_address) -> None:
        """A client that disconnected or stalled: nothing to report; anything else: the usual traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def make_server(app: RigApp, host: str = "127.0.0.1", port: int = 7860, token: str | None = None,
                limits: Limits | None = None) -> RigServer:
    """The server bound to ``host``:``port`` (0: any free port); with ``token``, every request must carry it
    (see ``facerig.ui.guard``); ``server.url`` is the address to open."""
    page = resources.files("facerig.ui").joinpath("page.html").read_bytes()
    limits = limits or getattr(app, "limits", None) or Limits()
    slots = {"/api/photo": Slots(limits.captures, "uploads"), "/api/face": Slots(limits.captures, "uploads"),
             "/api/preview": Slots(limits.previews, "previews")}

    class Handler(BaseHTTPRequestHandler):
        timeout = 60  # a stalled client gives its thread, and what it holds, back

        def log_message(self, *args) -> None:  # keep the terminal for the URL and errors
            pass

        def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: dict) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _answer(self, fn, *args) -> None:
            try:
                self._json(200, fn(*args))
            except UserError as exc:
                self._json(400, {"error": str(exc)})
            except Busy as exc:
                self._json(503, {"error": str(exc), "busy": True})
            except Exception as exc:  # noqa: BLE001 - one failing request must not take the server down
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

        def _length(self, limit: int) -> int:
            raw = self.headers.get("Content-Length") or "0"
            if not raw.isdigit():  # also refuses a negative length, which rfile.read would take as "all"
                raise UserError(f"bad Content-Length {raw[:20]!r}")
            length = int(raw)
            if length > limit:
                raise TooLarge(f"a request of {length / 2**20:.1f} MB is over the {limit / 2**20:.0f} MB limit")
            return length

        def _refuse_unread(self, status: int, answer: dict) -> None:
            """Answer without reading the body, then discard (never keep) what the client is still sending."""
            self.close_connection = True
            self._send(status, json.dumps(answer).encode(), "application/json", {"Connection": "close"})
            self.wfile.flush()
            end, left = time.monotonic() + DISCARD_SECONDS, DISCARD_BYTES
            try:
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(0.2)
                while left > 0 and time.monotonic() < end:
                    chunk = self.rfile.read1(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            except OSError:
                pass

        def _admitted(self, url) -> bool:
            reason = guard.refusal(self.headers, url.query)
            if reason:
                self.close_connection = True
                self._json(403, {"error": reason})
            return reason is None

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if not self._admitted(url):
                return
            if url.path in ("/", "/index.html"):
                cookie = guard.set_cookie(url.query)
                self._send(200, page, "text/html; charset=utf-8", {"Set-Cookie": cookie} if cookie else None)
            elif url.path == "/api/info":
                self._json(200, app.info())
            elif url.path.startswith("/api/job/"):
                self._answer(app.job, url.path.rsplit("/", 1)[-1])
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            if not self._admitted(url):
                return
            routes = {"/api/photo": None, "/api/preview": app.preview, "/api/edit": app.start_edit,
                      "/api/face": app.face}
            if url.path not in routes:
                self.close_connection = True
                return self._json(404, {"error": "not found"})
            try:  # the length first: refusing a body too large holds no slot
                length = self._length(limits.upload_bytes if routes[url.path] is None else limits.json_bytes)
            except TooLarge as exc:
                return self._refuse_unread(413, {"error": str(exc)})
            except UserError as exc:
                self.close_connection = True
                return self._json(400, {"error": str(exc)})
            try:
                with slots.get(url.path) or contextlib.nullcontext():
                    self._post(url, routes[url.path], length)
            except Busy as exc:
                self._refuse_unread(503, {"error": str(exc), "busy": True})

        def _post(self, url, route, length: int) -> None:
            data = self.rfile.read(length)
            if len(data) < length:
                self.close_connection = True
                return self._json(400, {"error": "the request body ended early"})
            if route is None:
                return self._answer(app.upload, data, parse_qs(url.query).get("name", ["upload"])[0])
            try:
                body = json.loads(data or b"{}")
            except ValueError:
                return self._json(400, {"error": "the request body is not JSON"})
            if not isinstance(body, dict):
                return self._json(400, {"error": "the request body must be a JSON object"})
            self._answer(route, body)

    server = RigServer((host, port), Handler)
    guard = Guard(host, server.server_port, token)
    server.url = guard.url(host)
    return server

