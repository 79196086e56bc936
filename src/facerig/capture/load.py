"""Photo loading that survives what people actually feed a capture job.

Every photo comes back as 8-bit RGB in the orientation a viewer shows it (EXIF applied), at most
``max_side`` pixels on its longer side, with the scale back to the full-size photo. "Original pixels"
everywhere in capture means pixels of the EXIF-transposed, full-size photo.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 64
# PIL's default decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS); enforced here too in case another
# library has switched PIL's guard off
MAX_PIXELS = 178_956_970


class CaptureError(ValueError):
    """A photo capture cannot use; ``reason`` goes into the manifest, the message also names the file."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class UnreadableImage(CaptureError):
    """Missing, not an image, corrupt or truncated."""


class ImageTooSmall(CaptureError):
    pass


class ImageTooLarge(CaptureError):
    pass


class NoFaceFound(CaptureError):
    pass


@dataclass
class Photo:
    path: str
    image: np.ndarray  # (H,W,3) uint8 RGB, possibly downscaled from the original
    original_size: tuple[int, int]  # (width, height) of the EXIF-transposed original

    @property
    def scale(self) -> np.ndarray:
        """(sx, sy): working pixels per original pixel (1 unless the photo was downscaled on load)."""
        h, w = self.image.shape[:2]
        return np.array([w / self.original_size[0], h / self.original_size[1]])

    def to_original(self) -> np.ndarray:
        """3x3 matrix taking working-image pixel coordinates to original-photo pixel coordinates."""
        sx, sy = self.scale
        return np.diag([1.0 / sx, 1.0 / sy, 1.0])


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16/32-bit integer scaled (not clipped), alpha composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        # PIL opens 16-bit grayscale PNG/TIFF as I;16 (or I in some versions); 65535 is white either way.
        peak = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        peak = 1.0 if a.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK (PIL undoes Adobe's inverted CMYK JPEGs), YCbCr, LAB, HSV
    return img.convert("RGB")


def load_photo(path: str | Path, max_side: int = 4096, min_side: int = MIN_SIDE) -> Photo:
    """Read ``path`` as 8-bit RGB, EXIF orientation applied, longer side at most ``max_side``.

    Large JPEGs are decoded at a reduced DCT scale (``draft``) rather than at full size, so their longer
    side ends up between ``max_side / 2`` and ``max_side``. Raises a ``CaptureError`` subclass naming the
    file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(path, "file not found" if not path.exists() else "not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large is fine up to MAX_PIXELS
            img = Image.open(path)
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(path, f"image has more than {MAX_PIXELS} pixels") from None
    except OSError as exc:
        raise UnreadableImage(path, f"cannot open image ({exc})") from None
    with img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except (OSError, SyntaxError, ValueError, struct.error):
            orientation = 1  # unreadable EXIF: show the pixels as stored, as viewers do
        if orientation in (5, 6, 7, 8):  # a quarter turn swaps width and height
            w, h = h, w
        if min(w, h) < min_side:
            raise ImageTooSmall(path, f"image {w}x{h} px is smaller than the {min_side} px minimum")
        if w * h > MAX_PIXELS:
            raise ImageTooLarge(path, f"image {w}x{h} px has more than {MAX_PIXELS} pixels")
        try:
            if img.format == "JPEG" and max(w, h) > max_side:
                # draft decodes at the coarsest DCT scale (1/2, 1/4, 1/8) still covering the requested size;
                # asking for half of max_side lets an 8000 px JPEG decode straight to 4000 px
                img.draft(img.mode, (max_side // 2, max_side // 2))
            img.load()
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
            img = to_rgb8(img)
        except (OSError, SyntaxError, ValueError) as exc:
            raise UnreadableImage(path, f"corrupt or truncated image ({exc})") from None
        if max(img.size) > max_side:
            f = max_side / max(img.size)
            img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.LANCZOS)
        return Photo(str(path), np.asarray(img, dtype=np.uint8).copy(), (w, h))


def upsample_small(image: np.ndarray, min_side: int) -> np.ndarray:
    """An (H,W,3) uint8 image upsampled (bicubic) so its longer side is at least ``min_side``: dlib's detector
    misses faces in small images such as 64 px model outputs."""
    if max(image.shape[:2]) >= min_side:
        return image
    scale = min_side / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
