import numpy as np
import pytest
import torch
from helpers import shared_path

from facerig.capture.detect import detect_faces
from facerig.capture.fit import FitConfig, fit
from facerig.capture.synthetic import errors, synthetic_faces
from facerig.face3d.ict import load_ict


@pytest.fixture(scope="module")
def ict():
    return load_ict(shared_path("assets", "ict-facekit"))


def test_synthetic_round_trip_recovers_pose_and_light(ict):
    """Rendered random faces (yaw within +-40 deg, random light and expression) fitted back from the pixels
    and noisy landmarks: the paper-level targets are median pose error <= 3 deg, light direction <= 15 deg."""
    images, landmarks, truth = synthetic_faces(ict, 12, 96, noise_px=1.0, seed=1)
    result = fit(images, landmarks, ict, FitConfig(image_size=96))
    err = errors(truth, result.params)
    assert max(err["median_yaw_err_deg"], err["median_pitch_err_deg"], err["median_roll_err_deg"]) <= 3.0, err
    assert err["median_light_dir_err_deg"] <= 15.0, err
    assert err["expression_rmse"] < err["expression_rmse_if_neutral"], err
    assert result.buffers.rendered.shape == (12, 3, 96, 96)


def test_fit_starting_far_off_converges(ict):
    """The camera initialisation and landmark stages bring a default face onto a turned head's landmarks."""
    images, landmarks, truth = synthetic_faces(ict, 2, 128, noise_px=0.0, seed=5)
    result = fit(images, landmarks, ict, FitConfig(image_size=128, photo_iters=0))
    assert result.landmark_error.max() < 1.5  # pixels at 128 px


def test_album_mode_shares_one_identity(ict):
    images, landmarks, _ = synthetic_faces(ict, 3, 64, noise_px=0.5, seed=2)
    result = fit(images, landmarks, ict, FitConfig(image_size=64, album=True, landmark_iters=40, photo_iters=5))
    shape = result.params.shape
    assert torch.equal(shape[0], shape[1]) and torch.equal(shape[0], shape[2])
    assert not torch.equal(result.params.rotation[0], result.params.rotation[1])
    assert result.landmark_error.shape == result.photometric_error.shape == (3,)


def test_fit_rejects_bad_input(ict):
    with pytest.raises(ValueError, match="square images"):
        fit(torch.zeros(1, 3, 64, 32), torch.zeros(1, 68, 2), ict)
    with pytest.raises(ValueError, match="landmarks"):
        fit(torch.zeros(1, 3, 64, 64), torch.zeros(1, 5, 2), ict)


def test_ffhq_landmark_error_close_to_the_detector(ict):
    """NME (by inter-ocular distance) of the fitted model's landmarks against FFHQ's ground truth stays
    within 0.01 of dlib's own detections (which it fits); benchmarks/capture_nme.py prints both."""
    folder = shared_path("data", "ffhq-samples")
    files = sorted(folder.glob("?????.png"))[:4]
    from PIL import Image

    images, lms, gts = [], [], []
    for f in files:
        im = np.asarray(Image.open(f).convert("RGB"))
        lms.append(detect_faces(im)[0].landmarks + 0.5)
        gts.append(np.load(f.with_name(f.stem + ".landmarks.npy")))
        images.append(torch.from_numpy(im.copy()).permute(2, 0, 1).float() / 255)
    result = fit(torch.stack(images), torch.from_numpy(np.stack(lms)).float(), ict, FitConfig(image_size=256, photo_iters=10))

    def nme(pred, gt):
        iod = np.linalg.norm(gt[36:42].mean(0) - gt[42:48].mean(0))
        return np.linalg.norm(pred - gt, axis=1).mean() / iod

    # ground truth uses dlib's integer pixel convention: shift back by half a pixel
    fit_nme = np.mean([nme(result.landmarks[i].numpy() - 0.5, gts[i]) for i in range(len(files))])
    dlib_nme = np.mean([nme(lms[i] - 0.5, gts[i]) for i in range(len(files))])
    assert fit_nme <= dlib_nme + 0.01, (fit_nme, dlib_nme)
    assert fit_nme < 0.06


def test_landmark_calibration_recovers_a_detector_convention(ict):
    """A 'detector' that marks landmark 30 on a neighbouring vertex: calibration finds that vertex."""
    from facerig.capture.calibrate import calibrate_landmarks
    from facerig.face3d.camera import project
    from facerig.face3d.model import random_params

    params = random_params(ict, 16, torch.Generator().manual_seed(3))
    tip = ict.landmark_vertices[30, 0]
    near = (ict.template - ict.template[tip]).norm(dim=-1)
    near[tip] = float("inf")
    shifted = int(near.argmin())
    marks = ict.landmark_vertices[:, 0].clone()
    marks[30] = shifted
    detected = project(ict.points(params, marks), params, "orthographic", 128)[..., :2]
    indices, before, after = calibrate_landmarks(ict, params, detected, 128)
    assert indices[30] == shifted and after[30] < 1e-3 < before[30]
    assert indices[36] == int(ict.landmark_vertices[36, 0])  # already right: unchanged


def test_fit_adam_is_torch_adam_step_for_step():
    from facerig.capture.fit import Adam

    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(5, 3, generator=g).requires_grad_(), torch.randn(7, generator=g).requires_grad_()]
    theirs = [t.detach().clone().requires_grad_() for t in ours]
    opts = Adam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01, foreach=False)
    for _ in range(25):
        for params, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            ((params[0] ** 3).sum() + params[1].sin().sum()).backward()
            opt.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
