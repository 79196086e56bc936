import torch
from helpers import assert_close

from facerig.face3d.light import directional_light, split_light
from facerig.render import sh_shading


def test_directional_light_approximates_lambert():
    light = directional_light(torch.tensor([[0.0, 0.0, 1.0]]), 1.0, 0.25)
    n = torch.nn.functional.normalize(torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.6, 0.8], [1.0, 0.0, 0.0]]]), dim=-1)
    lambert = 0.25 + torch.tensor([1.0, 0.8, 0.0])
    # A 9-coefficient SH light is the band-limited clamped cosine: within ~0.1 of max(0, n.l).
    assert ((sh_shading(n, light)[0, :, 0] - lambert).abs() < 0.1).all()


def test_split_light_inverts_directional_light():
    d = torch.nn.functional.normalize(torch.tensor([[0.3, -0.2, 0.9], [-0.7, 0.1, 0.5]]), dim=-1)
    ambient = torch.tensor([[0.3, 0.25, 0.2], [0.5, 0.5, 0.5]])
    light = directional_light(d, torch.tensor([0.8, 0.4]), ambient)
    direction, intensity, amb = split_light(light)
    assert_close(direction, d, atol=1e-5)
    assert_close(intensity, torch.tensor([0.8, 0.4]), atol=1e-5)
    assert_close(amb, ambient, atol=1e-5)
