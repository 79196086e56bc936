"""What one request and all of ``facerig ui``'s sessions together may hold in memory.

Measured before these bounds (a 0.51 GB server): one 12000 x 12000 grayscale PNG of 140 kB, under PIL's
own decompression-bomb limit, took the server to 1.44 GB, and the memory stayed there. So a photo's
declared size is checked from its header before anything decodes it, request bodies are refused from their
Content-Length before they are read, concurrent work is counted (past the count a request is answered 503
"busy" at once instead of queueing) and sessions are evicted oldest first past a count and a byte total.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import warnings
from collections import OrderedDict

import torch
from PIL import Image, UnidentifiedImageError


@dataclasses.dataclass(frozen=True)
class Limits:
    upload_bytes: int = 25 << 20  # one photo upload's body
    json_bytes: int = 1 << 20  # one JSON request's body
    decoded_bytes: int = 160 << 20  # what decoding one photo may allocate, estimated from its header
    captures: int = 2  # uploads and face draws in flight (bodies held, captures queued or running)
    previews: int = 4  # previews in flight
    edits: int = 2  # generations queued or running
    finished_jobs: int = 16  # finished generations kept for the page to collect, oldest dropped first
    sessions: int = 32
    session_bytes: int = 256 << 20  # all sessions' tensors together


class Busy(RuntimeError):
    """Too much work in flight: answered 503 at once, and the page says the server is busy."""


class Slots:
    """At most ``n`` holders at a time; ``take`` refuses (``Busy``) rather than waits."""

    def __init__(self, n: int, what: str):
        self._sem, self.n, self.what = threading.BoundedSemaphore(n), n, what

    def __enter__(self) -> "Slots":
        if not self._sem.acquire(blocking=False):
            raise Busy(f"the server is busy ({self.n} {self.what} in progress); try again in a moment")
        return self

    def __exit__(self, *exc) -> None:
        self._sem.release()


# Bytes per pixel that loading allocates at its peak (capture.load.to_rgb8): 16-bit and float images are
# converted through float64 with temporaries, 8-bit ones end as RGB next to their decoded copy.
_WIDE_MODES = ("I", "F")


def decoded_bytes(width: int, height: int, mode: str, image_format: str | None) -> int:
    """Estimated peak bytes of decoding a ``width x height`` photo of PIL ``mode`` and ``image_format``.

    JPEGs wider than 4096 px decode at a reduced DCT scale (``capture.load.load_photo`` asks PIL's
    ``draft`` for 2048 px): the scale is the largest of 1/2, 1/4, 1/8 keeping both sides >= 2048."""
    if image_format == "JPEG" and max(width, height) > 4096:
        scale = max([s for s in (1, 2, 4, 8) if s <= min(width // 2048, height // 2048)] or [1])
        width, height = width // scale, height // scale
    per_pixel = 24 if mode.startswith(_WIDE_MODES) else 8
    return width * height * per_pixel


def check_declared_size(data: bytes, name: str, limit: int) -> None:
    """Raise ``ValueError`` naming ``name`` when the photo's header declares more than ``limit`` bytes of
    decoding (nothing is decoded here: PIL reads the header only). Unreadable data passes, for capture to
    name the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                (w, h), mode, fmt = img.size, img.mode, img.format
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{name}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return
    need = decoded_bytes(w, h, mode, fmt)
    if need > limit:
        raise ValueError(f"{name}: a {w}x{h} px {fmt or 'image'} would take {need / 2**20:.0f} MB to decode, over "
                         f"the {limit >> 20} MB limit; send a JPEG or a smaller image")


def tensor_bytes(obj, _seen: set | None = None) -> int:
    """Bytes of the tensors reachable from ``obj`` through dataclass fields, dicts, lists and tuples."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


class SessionStore:
    """Sessions by id, the least recently used evicted first past ``max_count`` sessions or ``max_bytes`` of
    tensors (the one just added or used always stays). Sizes are measured when a session is added and
    again when it is used, since rigs cache encodings and inversions in it."""

    def __init__(self, max_count: int, max_bytes: int):
        self.max_count, self.max_bytes = max_count, max_bytes
        self._items: OrderedDict[str, object] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, sid: str, session) -> None:
        with self._lock:
            self._items[sid] = session
            self._sizes[sid] = tensor_bytes(session)
            self._evict()

    def get(self, sid: str | None):
        """The session, or None when unknown or evicted; re-measures it (its caches may have grown)."""
        with self._lock:
            if sid not in self._items:
                return None
            self._items.move_to_end(sid)
            self._sizes[sid] = tensor_bytes(self._items[sid])
            self._evict()
            return self._items[sid]

    def _evict(self) -> None:
        while len(self._items) > 1 and (len(self._items) > self.max_count or self.total_bytes() > self.max_bytes):
            sid, _ = self._items.popitem(last=False)
            del self._sizes[sid]

    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def __contains__(self, sid) -> bool:
        return sid in self._items

    def __getitem__(self, sid: str):
        return self._items[sid]

    def __len__(self) -> int:
        return len(self._items)
