import pickle
import struct
import sys
import types

import numpy as np
import pytest
import torch
from helpers import assert_close, require, shared_path

from facerig.face3d import FaceParams, load_model
from facerig.face3d.flame import load_flame, safe_load_pickle
from facerig.face3d.ict import LANDMARKS_68, LANDMARKS_68_ICT, _read_obj_vertices, load_ict
from facerig.face3d.model import random_params
from facerig.face3d.rotation import axis_angle_to_euler, axis_angle_to_matrix, euler_to_axis_angle, matrix_to_axis_angle


@pytest.fixture(scope="module")
def ict():
    return load_ict(shared_path("assets", "ict-facekit"))


def test_rotation_round_trips():
    euler = torch.tensor([[30.0, -10.0, 5.0], [-40.0, 20.0, -15.0], [0.0, 0.0, 0.0], [89.0, 1.0, -2.0]])
    aa = euler_to_axis_angle(euler[:, 0], euler[:, 1], euler[:, 2])
    assert_close(axis_angle_to_euler(aa), euler, atol=1e-3)
    R = axis_angle_to_matrix(aa)
    assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand(4, 3, 3), atol=1e-6)
    assert_close(matrix_to_axis_angle(R), aa, atol=1e-5)
    # positive yaw turns the nose (+z) to image right (+x)
    nose = axis_angle_to_matrix(euler_to_axis_angle(30.0, 0.0, 0.0)) @ torch.tensor([0.0, 0.0, 1.0])
    assert nose[0] > 0.49


def test_ict_reproduces_obj_files(ict):
    folder = shared_path("assets", "ict-facekit")
    p = ict.default_params(1)
    n = ict.n_vertices
    to_cm = lambda v: v[0] / 0.01  # noqa: E731  the model is in metres, the OBJs in centimetres
    assert_close(to_cm(ict(p).vertices), torch.from_numpy(_read_obj_vertices(folder / "generic_neutral_mesh.obj")[:n]).float(), atol=1e-5, rtol=0)
    shape = torch.zeros(1, ict.n_shape)
    shape[0, 0] = 1.0
    assert_close(to_cm(ict(p.replace(shape=shape)).vertices), torch.from_numpy(_read_obj_vertices(folder / "identity000.obj")[:n]).float(), atol=1e-5, rtol=0)
    expr = torch.zeros(1, ict.n_expression)
    expr[0, ict.expression_index("jawOpen")] = 1.0
    assert_close(to_cm(ict(p.replace(expression=expr)).vertices), torch.from_numpy(_read_obj_vertices(folder / "jawOpen.obj")[:n]).float(), atol=1e-5, rtol=0)


def test_ict_structure(ict):
    assert (ict.n_shape, ict.n_expression) == (100, 53)
    assert ict.faces.max() < ict.n_vertices and ict.faces.min() >= 0
    assert ict.landmark_vertices[:, 0].tolist() == LANDMARKS_68  # face part comes first, indices unchanged
    readme = load_ict(shared_path("assets", "ict-facekit"), landmarks="ict")
    assert readme.landmark_vertices[:, 0].tolist() == LANDMARKS_68_ICT
    assert "mouthSmile_L" in ict.expression_names
    full = load_ict(shared_path("assets", "ict-facekit"), parts=("face", "head_neck", "eyes", "mouth", "teeth"))
    assert full.n_vertices > ict.n_vertices and full.faces.shape[0] > ict.faces.shape[0]
    with pytest.raises(ValueError, match="unknown ICT part"):
        load_ict(shared_path("assets", "ict-facekit"), parts=("face", "hair"))


def test_ict_loads_from_its_cache(ict, monkeypatch):
    """A second load reads the cache, not the OBJs (benchmarks/load.py times it)."""
    import facerig.face3d.ict as ict_module

    monkeypatch.setattr(ict_module, "import_ict", lambda folder: pytest.fail("re-imported the OBJs"))
    again = load_ict(shared_path("assets", "ict-facekit"))
    assert torch.equal(again.template, ict.template)


def test_params_json_round_trip(tmp_path, ict):
    p = random_params(ict, 3, torch.Generator().manual_seed(0))
    p.to_json(tmp_path / "p.json")
    q = FaceParams.from_json(tmp_path / "p.json")
    for k, v in p.to_dict().items():
        assert_close(getattr(q, k), v, atol=1e-6)
    (tmp_path / "bad.json").write_text('{"shape": [[0]]}')
    with pytest.raises(ValueError, match="bad.json: missing"):
        FaceParams.from_json(tmp_path / "bad.json")


def test_expression_names_are_addressable(ict):
    with pytest.raises(ValueError, match="unknown expression 'smile'"):
        ict.expression_index("smile")


# ---- FLAME: a generic_model.pkl generated on the real FLAME topology --------------------------------------

def _read_ply(path):
    data = path.read_bytes()
    header, body = data.split(b"end_header\n", 1)
    lines = header.decode().splitlines()
    nv = int(next(l for l in lines if l.startswith("element vertex")).split()[-1])
    nf = int(next(l for l in lines if l.startswith("element face")).split()[-1])
    verts = np.frombuffer(body[: nv * 12], dtype="<f4").reshape(nv, 3).astype(np.float64)
    faces, off = [], nv * 12
    for _ in range(nf):
        (k,) = struct.unpack_from("<B", body, off)
        faces.append(struct.unpack_from(f"<{k}i", body, off + 1))
        off += 1 + 4 * k
    return verts, np.array(faces, dtype=np.int64)


@pytest.fixture()
def fake_chumpy(monkeypatch):
    """A module named chumpy.ch whose Ch pickles like chumpy's (state dict with 'x')."""
    mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", mod)
    return Ch


def _write_flame_pickle(path, Ch, rng):
    scipy_sparse = require("scipy.sparse")

    verts, faces = _read_ply(shared_path("assets", "flame-topology", "template.ply"))
    nv = verts.shape[0]
    joints_rows = np.zeros((5, nv))
    jaw_region = verts[:, 1] < np.percentile(verts[:, 1], 30)
    for j in range(5):
        idx = rng.choice(nv, 20, replace=False)
        joints_rows[j, idx] = 1 / 20
    weights = np.zeros((nv, 5))
    weights[:, 1] = 1.0
    weights[jaw_region, 1], weights[jaw_region, 2] = 0.0, 1.0
    model = {
        "v_template": verts,
        "f": faces.astype(np.uint32),
        "shapedirs": Ch(rng.normal(0, 1e-3, (nv, 3, 400))),
        "posedirs": rng.normal(0, 1e-4, (nv, 3, 36)),
        "J_regressor": scipy_sparse.csc_matrix(joints_rows),
        "weights": Ch(weights),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    with open(path, "wb") as f:
        pickle.dump(model, f, protocol=2)
    return model, jaw_region


def test_flame_loads_generated_pickle(tmp_path, fake_chumpy):
    rng = np.random.default_rng(0)
    raw, jaw_region = _write_flame_pickle(tmp_path / "generic_model.pkl", fake_chumpy, rng)
    flame = load_model("flame", tmp_path / "generic_model.pkl", n_shape=10, n_expression=5)
    assert flame.n_vertices == 5023 and flame.faces.shape == (9976, 3)
    p = flame.default_params(2)
    p.shape[1, 3] = 2.0
    geom = flame(p)
    assert_close(geom.vertices[0], torch.from_numpy(raw["v_template"]).float(), atol=1e-6)
    expected = raw["v_template"] + 2.0 * raw["shapedirs"].x[..., 3]
    assert_close(geom.vertices[1], torch.from_numpy(expected).float(), atol=1e-5)
    # Opening the jaw moves only the jaw-skinned vertices.
    p.jaw[:, 0] = 0.3
    moved = (flame(p).vertices[0] - geom.vertices[0]).norm(dim=-1)
    assert moved[torch.from_numpy(jaw_region)].min() > 0 and moved[torch.from_numpy(~jaw_region)].max() < 1e-2
    assert moved[torch.from_numpy(jaw_region)].mean() > 10 * moved[torch.from_numpy(~jaw_region)].mean()
    assert geom.landmarks.shape == (2, 68, 3)


class _Exploit:
    """Unpickling runs ``touch marker``: the marker appearing means the pickle ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch '{self.marker}'",))


def test_flame_refuses_code_execution(tmp_path):
    bad, marker = tmp_path / "generic_model.pkl", tmp_path / "pwned"
    bad.write_bytes(pickle.dumps({"v_template": _Exploit(marker)}, protocol=2))
    # a ValueError naming the file: the CLI prints it as one line with exit code 2
    with pytest.raises(ValueError, match=r"generic_model.pkl: refusing to load (posix|os)\.system"):
        load_flame(bad)
    assert not marker.exists()


def test_flame_landmark_embedding_is_readable():
    emb = safe_load_pickle(shared_path("assets", "flame-topology", "flame_static_embedding_68.pkl"))
    assert emb["lmk_face_idx"].shape == (68,) and emb["lmk_b_coords"].shape == (68, 3)


def test_flame_is_bring_your_own():
    with pytest.raises(ValueError, match="bring-your-own"):
        load_model("flame")


def test_ict_loads_from_an_imported_file(ict, tmp_path, monkeypatch):
    """The imported cache file alone is enough (machines without the OBJs)."""
    from facerig.paths import cache_dir

    cache = next(cache_dir().glob("ict-*.safetensors"))
    monkeypatch.setenv("FACERIG_ICT", str(cache))
    alone = load_ict()
    assert torch.equal(alone.template, ict.template) and alone.expression_names == ict.expression_names
    with pytest.raises(FileNotFoundError, match="no such imported"):
        load_ict(tmp_path / "missing.safetensors")
