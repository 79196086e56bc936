"""Photo loading: every awkward input either loads as proper 8-bit RGB or fails with a clear reason.

The bad-input generators here are shared with test_capture_pipeline.py.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerig.capture.load import ImageTooLarge, ImageTooSmall, UnreadableImage, load_photo
from helpers import shared_path


def ffhq_sample(i: int = 0) -> Image.Image:
    return Image.open(shared_path("data", "ffhq-samples", f"{i:05d}.png")).convert("RGB")


def _png(width: int, height: int, bit_depth: int, raw: bytes) -> bytes:
    """A colour-type-2 (RGB) PNG file, encoded by hand."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write_png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write these)."""
    h, w, _ = rgb16.shape
    path.write_bytes(_png(w, h, 16, b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)))


def write_exif_rotated(path: Path, display: Image.Image) -> None:
    """A JPEG stored a quarter turn off, with EXIF orientation 6 ("rotate 90 CW to display") to undo it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    display.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)


def write_huge(path: Path, sample: Image.Image, side: int = 8000) -> None:
    sample.resize((side, side), Image.Resampling.BILINEAR).save(path, quality=90)


def write_bad_inputs(folder: Path) -> dict[str, Path]:
    """One file per awkward case, from FFHQ samples; returns {case: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    face, face2 = ffhq_sample(0), ffhq_sample(1)
    paths = {name: folder / name for name in ("good.png", "gray.jpg", "cmyk.jpg", "gray16.png", "rgb16.png", "rgba.png",
                                               "rotated.jpg", "tiny.png", "corrupt.jpg", "truncated.jpg", "noface.png")}
    face.save(paths["good.png"])
    face.convert("L").save(paths["gray.jpg"], quality=95)
    face.convert("CMYK").save(paths["cmyk.jpg"], quality=95)
    Image.fromarray((np.asarray(face.convert("L")).astype(np.uint16) * 257)).save(paths["gray16.png"])
    write_png16_rgb(paths["rgb16.png"], np.asarray(face).astype(np.uint16) * 257)
    rgba = face.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(256)[None, :] < 16, 0, 255).astype(np.uint8).repeat(256, 0)))
    rgba.save(paths["rgba.png"])
    write_exif_rotated(paths["rotated.jpg"], face2)
    face.resize((20, 20)).save(paths["tiny.png"])
    paths["corrupt.jpg"].write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good_jpeg = folder / "_full.jpg"
    face.save(good_jpeg, quality=95)
    data = good_jpeg.read_bytes()
    good_jpeg.unlink()
    paths["truncated.jpg"].write_bytes(data[: len(data) // 2])
    # a smooth colour ramp: nothing face-like for the detector
    ramp = np.linspace(0, 255, 256)
    Image.fromarray(np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128 + 0 * ramp[None, :]), -1).astype(np.uint8)).save(paths["noface.png"])
    return paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return write_bad_inputs(tmp_path_factory.mktemp("inputs"))


def test_rgb_png_loads_unchanged(inputs):
    photo = load_photo(inputs["good.png"])
    assert photo.image.dtype == np.uint8 and photo.image.shape == (256, 256, 3)
    assert np.array_equal(photo.image, np.asarray(ffhq_sample(0)))
    assert photo.original_size == (256, 256) and np.allclose(photo.scale, 1.0)


def test_grayscale_becomes_rgb(inputs):
    img = load_photo(inputs["gray.jpg"]).image
    assert img.shape == (256, 256, 3)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    assert np.abs(img[..., 0].astype(int) - np.asarray(ffhq_sample(0).convert("L"))).mean() < 2.0


def test_cmyk_jpeg_becomes_rgb(inputs):
    img = load_photo(inputs["cmyk.jpg"]).image
    assert img.shape == (256, 256, 3)
    assert np.abs(img.astype(int) - np.asarray(ffhq_sample(0))).mean() < 4.0


def test_16bit_png_is_scaled_not_clipped(inputs):
    gray = load_photo(inputs["gray16.png"]).image
    expected = np.asarray(ffhq_sample(0).convert("L")).astype(int)
    assert np.abs(gray[..., 0].astype(int) - expected).max() <= 1
    rgb = load_photo(inputs["rgb16.png"]).image
    assert np.abs(rgb.astype(int) - np.asarray(ffhq_sample(0))).max() <= 1


def test_alpha_is_composited_on_white(inputs):
    img = load_photo(inputs["rgba.png"]).image
    assert img.shape == (256, 256, 3)
    assert (img[:, :16] == 255).all()
    assert np.array_equal(img[:, 16:], np.asarray(ffhq_sample(0))[:, 16:])


def test_exif_orientation_is_applied(inputs):
    photo = load_photo(inputs["rotated.jpg"])
    assert photo.original_size == (256, 256)
    assert np.abs(photo.image.astype(int) - np.asarray(ffhq_sample(1))).mean() < 3.0


def test_exif_orientation_swaps_size_of_non_square(tmp_path):
    path = tmp_path / "wide.jpg"
    write_exif_rotated(path, ffhq_sample(0).crop((0, 0, 256, 128)))  # displayed 256 wide, 128 tall
    photo = load_photo(path)
    assert photo.original_size == (256, 128) and photo.image.shape == (128, 256, 3)


def test_huge_photo_is_downscaled_with_its_scale(tmp_path):
    path = tmp_path / "huge.jpg"
    write_huge(path, ffhq_sample(2))
    photo = load_photo(path, max_side=3000)  # benchmarks/load.py times this
    assert photo.original_size == (8000, 8000)
    assert max(photo.image.shape[:2]) == 2000, "decoded at 1/4 scale, the coarsest covering max_side / 2"
    assert np.allclose(photo.scale, 0.25) and np.allclose(photo.to_original(), np.diag([4.0, 4.0, 1.0]))
    small = np.asarray(ffhq_sample(2).resize((2000, 2000), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(photo.image.astype(int) - small).mean() < 6.0


def test_tiny_photo_is_rejected(inputs):
    with pytest.raises(ImageTooSmall) as err:
        load_photo(inputs["tiny.png"])
    assert err.value.reason == "image 20x20 px is smaller than the 64 px minimum"
    assert str(inputs["tiny.png"]) in str(err.value)


@pytest.mark.parametrize("name, words", [("corrupt.jpg", "not a readable image"), ("truncated.jpg", "truncated")])
def test_corrupt_files_are_rejected(inputs, name, words):
    with pytest.raises(UnreadableImage) as err:
        load_photo(inputs[name])
    assert words in err.value.reason and str(inputs[name]) in str(err.value)


def test_decompression_bomb_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(20000, 10000, 8, b""))  # a header claiming 200 M pixels, no pixel data
    with pytest.raises(ImageTooLarge, match="bomb.png: image has more than 178956970 pixels"):
        load_photo(path)


def test_missing_and_empty_files_are_rejected(tmp_path):
    with pytest.raises(UnreadableImage, match="file not found"):
        load_photo(tmp_path / "nope.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UnreadableImage, match="empty.png: not a readable image"):
        load_photo(tmp_path / "empty.png")
