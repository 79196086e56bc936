import numpy as np
import torch
from helpers import shared_path

from facerig.capture.load import load_photo
from facerig.edit.paste import feathered_square, paste_back, paste_into_file
from facerig.edit.spec import CAPTURE_SIZE
from facerig.face3d.ict import load_ict


def test_feathered_square():
    w = feathered_square(20, 0.1)[0, 0]
    assert w.shape == (20, 20) and w[10, 10] == 1 and w[0, 10] == 0.25 and w[0, 0] == 0.0625
    assert torch.equal(w, w.T) and torch.equal(w, w.flip(0))


def test_paste_back_puts_the_crop_where_it_came_from(tmp_path):
    from PIL import Image

    from facerig.edit import SessionCapture

    face = np.asarray(Image.open(shared_path("data", "ffhq-samples", "00003.png")).convert("RGB"))
    canvas = np.full((3 * face.shape[0], 3 * face.shape[1], 3), 60, np.uint8)  # the face small in a wide photo
    canvas[face.shape[0]:2 * face.shape[0], face.shape[1]:2 * face.shape[1]] = face
    path = tmp_path / "wide.png"
    Image.fromarray(canvas).save(path)
    session = SessionCapture(load_ict(shared_path("assets", "ict-facekit")))(path)
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
