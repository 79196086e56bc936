import json
from dataclasses import asdict, dataclass

import pytest
import torch
from torch import nn

from facerig.weights import PretrainedMixin, load_state_dict_checked, skip_init


@dataclass(frozen=True)
class _Config:
    width: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "_Config":
        return cls(**d)


class _Net(nn.Module, PretrainedMixin):
    config_class = _Config
    weights_format = "test-net"

    def __init__(self, config: _Config):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.width, 2)


def test_pretrained_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    net = _Net(_Config(width=3))
    folder = net.save_pretrained(tmp_path / "net")
    assert json.loads((folder / "config.json").read_text()) == {"_class_name": "_Net", "width": 3}
    loaded = _Net.from_pretrained(folder)
    assert loaded.config == net.config and not loaded.training
    assert torch.equal(loaded.linear.weight, net.linear.weight)
    (folder / "config.json").write_text(json.dumps({"_class_name": "Other", "width": 3}))
    with pytest.raises(ValueError, match="not a _Net config"):
        _Net.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"_class_name": "_Net", "depth": 3}))
    with pytest.raises(ValueError, match="bad model config"):
        _Net.from_pretrained(folder)


def test_skip_init_skips_and_restores_initialisers():
    init = nn.init.kaiming_uniform_
    with skip_init():
        assert nn.init.kaiming_uniform_ is not init
        nn.Linear(8, 8)
    assert nn.init.kaiming_uniform_ is init


def test_state_dict_mismatch_names_the_source():
    with pytest.raises(ValueError, match="w.safetensors: state dict does not fit.*1 missing"):
        load_state_dict_checked(nn.Linear(2, 2), {"weight": torch.zeros(2, 2)}, "w.safetensors")
