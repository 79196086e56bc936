"""``facerig ui`` as a hostile page or client would try it: a real ``facerig ui`` process on 127.0.0.1 with
the tiny shipped model, driven by raw HTTP requests (issue 27). Requests go to 127.0.0.1 only."""

import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
from helpers import shared_path
from PIL import Image

from facerig.edit import Session
from facerig.ui.guard import Guard, new_token
from facerig.ui.limits import Limits, SessionStore, check_declared_size
from facerig.ui.server import make_server

ROOT = Path(__file__).parents[1]
MODEL = ROOT / "models" / "diffusionrig-tiny-celeba64.safetensors"
RSS_GROWTH_LIMIT_MB = 150  # over the warmed-up server's resident memory, at the peak of the hostile batch


def png_declaring(width: int, height: int, rows: int | None = None) -> bytes:
    """A grayscale PNG whose header declares ``width x height``; its data holds ``rows`` zero rows (all of
    them by default: a valid image that compresses ~1000:1, the decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (width + 1)
    idat = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to declare ``width x height``."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def request(port, method, path, body=None, headers=None, host=None, timeout=120):
    """(status, JSON or bytes answer) of one request to 127.0.0.1:``port`` with the given Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not False:
            conn.putheader("Host", host or f"127.0.0.1:{port}")
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        res = conn.getresponse()
        data = res.read()
        try:
            return res.status, json.loads(data)
        except ValueError:
            return res.status, data
    finally:
        conn.close()


def memory_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A ``facerig ui`` process (one thread) on a free port; yields (port, pid, stderr file)."""
    shared_path("assets")
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc to read the server's memory")
    err = tmp_path_factory.mktemp("ui") / "stderr.txt"
    env = dict(os.environ, OMP_NUM_THREADS="1", FACERIG_SHARED=str(shared_path()))
    with open(err, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "facerig.cli", "ui", "--model", str(MODEL), "--port", "0",
                                 "--threads", "1", "--precision", "fp32"], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=err_file)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, f"{line!r} {err.read_text()[-2000:]}"
        yield int(line.split("http://127.0.0.1:")[1].split("/")[0]), proc.pid, err
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def session(ui):
    port = ui[0]
    photo = shared_path("data", "ffhq-samples", "00003.png").read_bytes()
    status, up = request(port, "POST", "/api/photo?name=00003.png", photo)
    assert status == 200, up
    return up


def test_requests_from_other_sites_are_refused(ui):
    port = ui[0]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert request(port, "GET", "/", host=host)[0] == 200
    for host in (f"evil.example:{port}", f"127.0.0.1:{port + 1}", "evil.example", False):  # False: no Host
        status, answer = request(port, "GET", "/api/info", host=host)
        assert status == 403 and "Host" in answer["error"], (host, answer)
    body = json.dumps({"session": "nope"}).encode()
    status, answer = request(port, "POST", "/api/preview", body, host=f"evil.example:{port}")
    assert status == 403
    for origin in ("http://evil.example", "null", f"http://localhost:{port}", f"https://127.0.0.1:{port}"):
        status, answer = request(port, "POST", "/api/preview", body, {"Origin": origin})
        assert status == 403 and "Origin" in answer["error"], (origin, answer)
    # the page's own origin is served (the session is unknown: a 400 from the app, past the guard)
    status, answer = request(port, "POST", "/api/preview", body, {"Origin": f"http://127.0.0.1:{port}"})
    assert status == 400 and "no longer loaded" in answer["error"]


class _InfoOnly:
    def info(self):
        return {"rig": "none", "live": False}


def test_off_loopback_every_request_needs_the_printed_token():
    assert new_token("127.0.0.1") is None and new_token("localhost") is None
    token = new_token("0.0.0.0")
    assert token and len(token) >= 20 and token != new_token("0.0.0.0")
    wildcard = Guard("0.0.0.0", 7860, token)
    assert wildcard.url("0.0.0.0").endswith(f":7860/?token={token}")
    assert "token" in wildcard.refusal({"Host": "box.lan:7860"}, "")
    assert wildcard.refusal({"Host": "box.lan:7860", "X-Facerig-Token": token}, "") is None
    assert "Host" in Guard("192.168.1.5", 7860, token).refusal({"Host": "evil.example:7860"}, f"token={token}")
    # the same rule served for real (on 127.0.0.1: tests reach no other address)
    srv = make_server(_InfoOnly(), "127.0.0.1", 0, token=token)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_port
    try:
        assert srv.url == f"http://127.0.0.1:{port}/?token={token}"
        for path, headers in (("/api/info", {}), ("/api/info?token=wrong", {}), ("/", {"Cookie": "facerig_token_1=x"})):
            status, answer = request(port, "GET", path, headers=headers)
            assert status == 403 and "token" in answer["error"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/?token={token}")
        res = conn.getresponse()
        assert res.status == 200 and b"<html" in res.read()
        cookie = res.getheader("Set-Cookie").split(";")[0]
        conn.close()
        assert "SameSite=Strict" in res.getheader("Set-Cookie") and token in cookie
        assert request(port, "GET", "/api/info", headers={"Cookie": cookie}) == (200, {"rig": "none", "live": False})
        assert request(port, "GET", "/api/info", headers={"X-Facerig-Token": token})[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_declared_size_is_checked_before_decoding():
    limit = Limits().decoded_bytes
    for data in (png_declaring(30000, 30000, rows=1), png_declaring(12000, 12000, rows=1)):
        with pytest.raises(ValueError, match="bomb.png: .*(decode|pixels)"):
            check_declared_size(data, "bomb.png", limit)
    check_declared_size(png_declaring(3000, 2000, rows=1), "ok.png", limit)
    check_declared_size(jpeg_declaring(12000, 9000), "big.jpg", limit)  # JPEGs decode at 1/4 scale
    check_declared_size(b"not an image", "x.png", limit)  # left to capture, which names the reason


def _session(nbytes: int) -> Session:
    return Session("s", torch.zeros(nbytes // 4), params=None)  # only the tensors' bytes matter here


def test_sessions_are_evicted_least_recently_used_first_past_count_and_bytes():
    store = SessionStore(max_count=3, max_bytes=10 << 20)
    for sid in "abc":
        store.add(sid, _session(1 << 20))
    assert store.get("a") is not None  # a is now the most recently used
    store.add("d", _session(1 << 20))
    assert [s in store for s in "abcd"] == [True, False, True, True]
    store.add("e", _session(19 << 19))  # 9.5 MB, over the 10 MB total beside any other: they all go
    assert len(store) == 1 and "e" in store and store.total_bytes() == 19 << 19
    store.add("f", _session(12 << 20))  # alone over the total: the newest still stays
    assert list(s in store for s in "ef") == [False, True]
    grown = store.get("f")
    grown.cache.inversions[(20,)] = torch.zeros(1 << 18)  # caches count when the session is next used
    store.get("f")
    assert store.total_bytes() >= (12 << 20) + (1 << 20)


def test_memory_stays_bounded_under_hostile_requests(ui, session):
    port, pid, _ = ui
    body = json.dumps({"session": session["session"], "controls": session["controls"]}).encode()
    assert request(port, "POST", "/api/preview", body)[0] == 200
    base = memory_mb(pid)
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.01):
            peak[0] = max(peak[0], memory_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM: the kernel's own peak from here
    except OSError:
        pass
    t0 = time.time()
    try:
        for name, data in (("huge.png", png_declaring(30000, 30000, rows=1)), ("bomb.png", png_declaring(12000, 12000))):
            status, answer = request(port, "POST", f"/api/photo?name={name}", data)
            assert status == 400 and name in answer["error"], answer
        # 30 MB declared: answered 413 after 1 MB, without the rest being sent
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/api/photo?name=big.jpg")
        conn.putheader("Content-Length", str(30 << 20))
        conn.endheaders(b"0" * (1 << 20))
        res = conn.getresponse()
        assert res.status == 413 and "over the 25 MB limit" in json.loads(res.read())["error"]
        conn.close()
        assert request(port, "POST", "/api/preview", None, {"Content-Length": "-1"})[0] == 400
        # 3 generations at once: one runs, one queues, the third is told the server is busy
        edit = json.dumps({"session": session["session"], "controls": {**session["controls"], "yaw": 20.0},
                           "options": {"steps": 20, "invert": False}}).encode()
        edits = []
        threads = [threading.Thread(target=lambda: edits.append(request(port, "POST", "/api/edit", edit)))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(s for s, _ in edits) == [200, 200, 503], edits
        assert "busy" in next(a for s, a in edits if s == 503)["error"]
        # 20 previews at once while the generations hold the worker: at most 4 wait, the rest are busy
        previews = []

        def preview():
            try:
                previews.append(request(port, "POST", "/api/preview", body)[0])
            except OSError as exc:  # a reset or refused connection instead of an answer
                previews.append(type(exc).__name__)

        threads = [threading.Thread(target=preview) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 1 <= previews.count(200) <= 4 and previews.count(503) == 20 - previews.count(200), previews
        for _, answer in edits:
            while "job" in answer and not request(port, "GET", f"/api/job/{answer['job']}")[1]["done"]:
                time.sleep(0.1)
        assert request(port, "POST", "/api/preview", body)[0] == 200  # still serving
    finally:
        stop.set()
        sampler.join()
    hwm = memory_mb(pid, "VmHWM")
    print(f"server RSS: {base:.0f} MB warmed up, peak {max(peak[0], hwm):.0f} MB (sampled {peak[0]:.0f}, VmHWM "
          f"{hwm:.0f}), {memory_mb(pid):.0f} MB after; batch {time.time() - t0:.1f} s")
    assert max(peak[0], hwm) - base < RSS_GROWTH_LIMIT_MB


def _reset_close(sock: socket.socket) -> None:
    """Close with a TCP reset, as a killed browser tab's connection ends."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_client_that_disconnects_mid_answer_prints_no_traceback(ui, session):
    port, _, err = ui
    photo = shared_path("data", "ffhq-samples", "00001.png").read_bytes()
    upload = (f"POST /api/photo?name=a.png HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(photo)}\r\n"
              "\r\n").encode() + photo
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(upload)
    time.sleep(0.5)  # the server has read the request and is capturing the face
    _reset_close(sock)
    preview = json.dumps({"session": session["session"], "controls": session["controls"]}).encode()
    for raw in (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
                f"POST /api/preview HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(preview)}\r\n\r\n".encode()
                + preview, f"POST /api/photo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 5000\r\n\r\nab".encode()):
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(raw)
            _reset_close(sock)
    # this preview queues behind the aborted capture on the worker: once answered, that answer was written
    assert request(port, "POST", "/api/preview", preview)[0] == 200
    time.sleep(0.5)
    log = err.read_text()
    assert "Traceback" not in log and "BrokenPipe" not in log and "ConnectionReset" not in log, log[-3000:]
