import numpy as np
import pytest
import torch
from helpers import shared_path

from facerig.capture.load import load_photo
from facerig.edit.paste import feathered_square, frame_transform, head_mask, paste_back, paste_into_file
from facerig.edit.spec import CAPTURE_SIZE
from facerig.face3d.ict import load_ict


def test_feathered_square():
    w = feathered_square(20, 0.1)[0, 0]
    assert w.shape == (20, 20) and w[10, 10] == 1 and w[0, 10] == 0.25 and w[0, 0] == 0.0625
    assert torch.equal(w, w.T) and torch.equal(w, w.flip(0))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A photo with the face small in it, its path and its capture session."""
    from PIL import Image

    from facerig.edit import SessionCapture

    face = np.asarray(Image.open(shared_path("data", "ffhq-samples", "00003.png")).convert("RGB"))
    canvas = np.full((3 * face.shape[0], 3 * face.shape[1], 3), 60, np.uint8)
    canvas[face.shape[0]:2 * face.shape[0], face.shape[1]:2 * face.shape[1]] = face
    path = tmp_path_factory.mktemp("paste") / "wide.png"
    Image.fromarray(canvas).save(path)
    return path, SessionCapture(load_ict(shared_path("assets", "ict-facekit")))(path)


def test_head_mask_covers_both_renders_grown_and_feathered():
    a, b = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    a[..., 20:30, 10:20] = 1
    b[..., 20:30, 40:50] = 1
    m = head_mask([a, b])[0, 0]
    assert m.shape == (64, 64) and m.min() >= 0 and m.max() <= 1
    assert m[25, 15] == 1 and m[25, 45] == 1  # inside either render
    assert m[25, 9] == 1 and m[19, 15] == 1  # grown past the render (by 5 px, 8 % of the side)
    assert 0 < m[25, 6] < 1 and m[25, 5] < m[25, 6] < m[25, 7]  # the feathered rim, a ramp
    assert m[25, 0] == 0 and m[25, 30] == 0 and m[60, 30] == 0  # off the grown renders: nothing


def test_frame_transform_places_the_crop_in_the_output():
    t = frame_transform((0.5, 0.55, 0.8), 256)
    centre = t @ torch.tensor([128.0, 128.0, 1.0])
    assert torch.allclose(centre[:2], torch.tensor([128.0, 0.55 * 256]))
    assert torch.allclose(t @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.1 * 256, 0.15 * 256, 1.0]))
    assert torch.equal(frame_transform((0.5, 0.5, 1.0), 256), torch.eye(3))


def test_paste_back_puts_the_crop_where_it_came_from(wide):
    path, session = wide
    photo = load_photo(path).image
    # Pasting the aligned crop itself back changes the photo only by resampling.
    same = paste_into_file(path, session.aligned * 2 - 1, session.transform, CAPTURE_SIZE)
    assert same.shape == photo.shape
    assert np.abs(same.astype(float) - photo.astype(float)).mean() < 2  # two resamplings: align, then back
    # A red crop lands on the face (the crop centre) and leaves the photo's corners alone.
    red = torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 64, 64)
    out = paste_back(photo, red, session.transform, CAPTURE_SIZE)
    centre = torch.linalg.solve(session.transform.double(), torch.tensor([128.0, 128.0, 1.0], dtype=torch.float64))
    x, y = int(centre[0]), int(centre[1])
    assert out[y, x, 0] > 240 and out[y, x, 1] < 15
    assert np.array_equal(out[:20, :20], photo[:20, :20]) and np.array_equal(out[-20:, -20:], photo[-20:, -20:])
    # Through a head mask, only the head region takes the edit: a crop corner off the face keeps the photo.
    mask = head_mask([torch.zeros(1, 1, 64, 64).index_fill_(2, torch.arange(24, 40), 1).index_fill_(3, torch.arange(0, 64), 1)
                      * torch.zeros(1, 1, 64, 64).index_fill_(3, torch.arange(24, 40), 1)])
    masked = paste_back(photo, red, session.transform, CAPTURE_SIZE, mask=mask)
    assert masked[y, x, 0] > 240
    corner = torch.linalg.solve(session.transform.double(), torch.tensor([40.0, 40.0, 1.0], dtype=torch.float64))
    cx, cy = int(corner[0]), int(corner[1])
    assert out[cy, cx, 0] > 240 and np.array_equal(masked[cy, cx], photo[cy, cx])


def test_paste_back_through_a_generator_framing(wide):
    """StyleRig's output frames the aligned crop differently (EditResult.frame): pasting the framed image
    with its frame lands it where the unframed crop lands."""
    from facerig.stylerig.model import frame_crop

    path, session = wide
    photo = load_photo(path).image
    frame = (0.52, 0.56, 0.8)
    framed = frame_crop(session.aligned, list(frame), 80)  # the crop at 64 px inside it, as `plain`
    plain = torch.nn.functional.interpolate(session.aligned[None], size=(64, 64), mode="area")[0] * 2 - 1
    ref = paste_back(photo, plain, session.transform, CAPTURE_SIZE).astype(float)
    got = paste_back(photo, framed, session.transform, CAPTURE_SIZE, frame=frame).astype(float)
    wrong = paste_back(photo, framed, session.transform, CAPTURE_SIZE).astype(float)
    # Compare where both blends are whole: photo pixels that land in the crop's central half.
    ys, xs = np.mgrid[:photo.shape[0], :photo.shape[1]]
    pts = np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs, dtype=float)], -1) @ session.transform.double().numpy().T
    inner = ((pts[..., :2] > CAPTURE_SIZE / 4) & (pts[..., :2] < CAPTURE_SIZE * 3 / 4)).all(-1)
    assert np.abs(got - ref)[inner].mean() < 3 and np.abs(wrong - ref)[inner].mean() > 30
