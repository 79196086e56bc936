import pytest
import torch
from helpers import shared_path

from facerig.face3d.ict import load_ict
from facerig.face3d.landmarks import project_landmarks


@pytest.fixture(scope="module")
def ict():
    return load_ict(shared_path("assets", "ict-facekit"))


def test_dynamic_contour_follows_the_silhouette(ict):
    """Jaw landmarks of a turned head move outwards to the outline, as a 2D detector marks them."""
    p = ict.default_params(1)
    from facerig.face3d.rotation import euler_to_axis_angle

    p.rotation = euler_to_axis_angle(torch.tensor([35.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    fixed, _ = project_landmarks(ict, p, 256, dynamic_contour=False)
    moving, _ = project_landmarks(ict, p, 256)
    # turned to image right: the right-hand outline (landmarks 11-16) lies further right than the mesh points
    assert (moving[0, 11:16, 0] >= fixed[0, 11:16, 0] - 1e-4).all()
    assert (moving[0, 11:16, 0] - fixed[0, 11:16, 0]).max() > 2.0
