"""FLAME backend (bring your own ``generic_model.pkl``; FLAME's licence forbids redistribution).

FLAME pickles hold numpy arrays, chumpy ``Ch`` arrays and a scipy sparse joint regressor. They are read with
a restricted unpickler that knows only those few classes (chumpy and scipy need not be installed) and refuses
every other global, so a tampered pickle cannot run code. The 68 landmarks use FLAME's static embedding
(triangle + barycentric coordinates) as in DECA, from ``<shared>/assets/flame-topology`` by default.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from facerig.face3d.model import MorphableModel
from facerig.face3d.params import FaceParams
from facerig.face3d.rotation import axis_angle_to_matrix
from facerig.paths import shared_dir

N_SHAPE_MAX = 300  # FLAME's shapedirs: 300 identity then 100 expression components
JAW_JOINT = 2  # FLAME joints: global, neck, jaw, left eye, right eye


class _ChumpyArray:
    """Stand-in for ``chumpy.ch.Ch``: keeps the pickled state, whose ``x`` is the array."""

    def __setstate__(self, state):
        self.state = state

    def array(self) -> np.ndarray:
        if "x" not in self.state:
            raise pickle.UnpicklingError("chumpy object without a stored array ('x'); only terminal Ch arrays are supported")
        return np.asarray(self.state["x"])


class _SparseMatrix:
    """Stand-in for scipy's CSC/CSR matrix: rebuilt densely from its pickled arrays."""

    def __setstate__(self, state):
        self.state = state

    def array(self) -> np.ndarray:
        s = self.state
        shape = tuple(s.get("_shape", s.get("shape")))
        data, indices, indptr = np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"])
        dense = np.zeros(shape, dtype=np.float64)
        major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        if s.get("format", "csc") == "csr":
            dense[major, indices] = data
        else:
            dense[indices, major] = data
        return dense


def _allowed() -> dict[tuple[str, str], object]:
    import codecs
    import copyreg

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray

    sparse_csr = type("_SparseCsr", (_SparseMatrix,), {"__setstate__": lambda self, st: _SparseMatrix.__setstate__(self, {**st, "format": "csr"})})
    table = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("builtins", "object"): object,
        ("chumpy.ch", "Ch"): _ChumpyArray,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = multiarray._reconstruct
        table[(mod, "scalar")] = multiarray.scalar
    for mod in ("scipy.sparse.csc", "scipy.sparse._csc"):
        table[(mod, "csc_matrix")] = _SparseMatrix
    for mod in ("scipy.sparse.csr", "scipy.sparse._csr"):
        table[(mod, "csr_matrix")] = sparse_csr
    # Python 3 protocol-2 pickles store bytes as _codecs.encode(text, "latin1"): pure data.
    table[("_codecs", "encode")] = codecs.encode
    # Python 2 pickles (FLAME's own) name the same things differently.
    table[("copy_reg", "_reconstructor")] = copyreg._reconstructor
    table[("__builtin__", "object")] = object
    return table


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only arrays (numpy, chumpy, scipy sparse); any other global raises UnpicklingError."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self.source = source
        self.allowed = _allowed()

    def find_class(self, module, name):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise pickle.UnpicklingError(
            f"{self.source}: refusing to load {module}.{name}; FLAME files may contain only numpy arrays, "
            "chumpy arrays and scipy sparse matrices"
        )


def safe_load_pickle(path: str | Path) -> dict:
    """A FLAME-style pickle as a dict of plain numpy arrays (chumpy and sparse objects densified)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = SafeUnpickler(f, str(path)).load()
        if not isinstance(data, dict):
            raise ValueError(f"expected a dict of arrays, got {type(data).__name__}")
        return {k: (v.array() if isinstance(v, (_ChumpyArray, _SparseMatrix)) else v) for k, v in data.items()}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except pickle.UnpicklingError as exc:  # a refused global: ValueError, which the CLI reports in one line
        raise ValueError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable FLAME pickle ({exc})") from None


def lbs_jaw(vertices: torch.Tensor, jaw: torch.Tensor, joint_regressor: torch.Tensor, parents: list[int],
            weights: torch.Tensor, posedirs: torch.Tensor) -> torch.Tensor:
    """FLAME linear blend skinning with every joint at rest except the jaw (global pose is applied later).

    vertices (B,V,3) shaped + expressed; joint_regressor (J,V); weights (V,J); posedirs (9*(J-1), V*3).
    """
    bsz, n_joints = vertices.shape[0], joint_regressor.shape[0]
    joints = torch.einsum("jv,bvc->bjc", joint_regressor, vertices)
    aa = torch.zeros(bsz, n_joints, 3, dtype=vertices.dtype, device=vertices.device)
    aa[:, JAW_JOINT] = jaw
    rot = axis_angle_to_matrix(aa)  # (B,J,3,3)
    eye = torch.eye(3, dtype=vertices.dtype, device=vertices.device)
    pose_feature = (rot[:, 1:] - eye).reshape(bsz, -1)
    v = vertices + (pose_feature @ posedirs).reshape(bsz, -1, 3)
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    chain = [torch.cat([torch.cat([rot[:, 0], rel[:, 0, :, None]], 2), _homogeneous_row(vertices)], 1)]
    for j in range(1, n_joints):
        local = torch.cat([torch.cat([rot[:, j], rel[:, j, :, None]], 2), _homogeneous_row(vertices)], 1)
        chain.append(chain[parents[j]] @ local)
    world = torch.stack(chain, 1)  # (B,J,4,4)
    # Remove the rest-pose joint location so transforms act on rest-pose vertices.
    offset = world[..., :3, :3] @ joints[..., None]
    world = torch.cat([world[..., :3, :3], world[..., :3, 3:] - offset], -1)  # (B,J,3,4)
    blended = torch.einsum("vj,bjrc->bvrc", weights, world)
    return (blended[..., :3] @ v[..., None]).squeeze(-1) + blended[..., 3]


def _homogeneous_row(like: torch.Tensor) -> torch.Tensor:
    row = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=like.dtype, device=like.device)
    return row.expand(like.shape[0], 1, 4)


class FlameModel(MorphableModel):
    """FLAME: linear shape/expression bases plus a skinned jaw (with pose correctives)."""

    def __init__(self, joint_regressor: torch.Tensor, parents: list[int], weights: torch.Tensor, posedirs: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("joint_regressor", joint_regressor.float())
        self.register_buffer("skin_weights", weights.float())
        self.register_buffer("posedirs", posedirs.float())
        self.parents = parents

    def articulate(self, vertices: torch.Tensor, params: FaceParams) -> torch.Tensor:
        return lbs_jaw(vertices, params.jaw, self.joint_regressor, self.parents, self.skin_weights, self.posedirs)


def load_flame(path: str | Path, n_shape: int = 100, n_expression: int = 50, landmark_embedding: str | Path | None = None) -> FlameModel:
    """A FLAME ``generic_model.pkl`` as a MorphableModel (metres, like FLAME itself)."""
    path = Path(path)
    d = safe_load_pickle(path)
    need = ["v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table"]
    missing = [k for k in need if k not in d]
    if missing:
        raise ValueError(f"{path}: not a FLAME model, missing {missing}")
    v_template = torch.as_tensor(np.asarray(d["v_template"], dtype=np.float64))
    shapedirs = torch.as_tensor(np.asarray(d["shapedirs"], dtype=np.float64))  # (V,3,K)
    n_total = shapedirs.shape[-1]
    n_expr_avail = max(0, n_total - N_SHAPE_MAX)
    if n_shape > min(N_SHAPE_MAX, n_total) or n_expression > n_expr_avail:
        raise ValueError(f"{path}: has {min(N_SHAPE_MAX, n_total)} shape and {n_expr_avail} expression components; asked for {n_shape}/{n_expression}")
    posedirs = torch.as_tensor(np.asarray(d["posedirs"], dtype=np.float64))  # (V,3,P)
    n_vertices = v_template.shape[0]
    embedding_path = Path(landmark_embedding) if landmark_embedding else shared_dir() / "assets" / "flame-topology" / "flame_static_embedding_68.pkl"
    emb = safe_load_pickle(embedding_path)
    faces = torch.as_tensor(np.asarray(d["f"], dtype=np.int64))
    lmk_faces = torch.as_tensor(np.asarray(emb["lmk_face_idx"], dtype=np.int64))
    parents = [int(p) for p in np.asarray(d["kintree_table"])[0]]
    parents[0] = -1
    return FlameModel(
        joint_regressor=torch.as_tensor(np.asarray(d["J_regressor"], dtype=np.float64)),
        parents=parents,
        weights=torch.as_tensor(np.asarray(d["weights"], dtype=np.float64)),
        posedirs=posedirs.reshape(n_vertices * 3, -1).t().contiguous(),
        template=v_template,
        shape_basis=shapedirs[..., :n_shape].permute(2, 0, 1),
        expression_basis=shapedirs[..., N_SHAPE_MAX : N_SHAPE_MAX + n_expression].permute(2, 0, 1),
        faces=faces,
        landmark_vertices=faces[lmk_faces],
        landmark_bary=torch.as_tensor(np.asarray(emb["lmk_b_coords"], dtype=np.float64)),
        name="flame",
    )
