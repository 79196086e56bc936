"""ICT-FaceKit backend (MIT licence), facerig's default face model.

The FaceXModel folder (``$FACERIG_ICT``, default ``<shared>/assets/ict-facekit``; or an imported
``.safetensors`` file) holds the neutral mesh
(complete OBJ: vertices, UVs, quads), 100 ``identityNNN.obj`` and 53 ARKit-named expression OBJs (vertex lines
only, same order). Modes are stored as deltas from the neutral mesh. Parsing ~150 OBJs takes tens of seconds,
so the first use imports them once into a safetensors cache keyed by the folder's file sizes and times.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from facerig.face3d.model import MorphableModel
from facerig.io import atomic_save_safetensors
from facerig.paths import cache_dir, ict_dir

# Vertex ranges [start, stop) from ICT-FaceKit's README, by geometry.
REGION_RANGES = {
    "face": (0, 9409),
    "head_neck": (9409, 11248),
    "mouth_socket": (11248, 13294),
    "eye_socket_left": (13294, 13678),
    "eye_socket_right": (13678, 14062),
    "gums_tongue": (14062, 17039),
    "teeth": (17039, 21451),
    "eyeball_left": (21451, 23021),
    "eyeball_right": (23021, 24591),
}
NARROW_FACE = (0, 6706)  # the README's "narrow face area": skin without ears/neck, for photometric fitting
DEFAULT_PARTS = ("face", "head_neck")
OPTIONAL_PARTS = {"eyes": ("eyeball_left", "eyeball_right"), "mouth": ("mouth_socket",), "teeth": ("gums_tongue", "teeth")}

# Multi-PIE 68 landmark vertex indices (0-based), from the README.
LANDMARKS_68_ICT = [
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443, 268, 493,
    1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140, 2075, 1147, 4269, 3360, 1507,
    1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695, 2081, 0, 4275, 6200, 6213,
    6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966,
]
# The same landmarks moved to the nearby vertex that best matches dlib's 68-point convention, chosen with
# ``facerig.capture.calibrate.calibrate_landmarks`` on 475 CelebA-wild fits (jaw contour landmarks 0-5 and
# 11-16 slide to the silhouette during fitting and are unchanged). On the FFHQ samples this lowers the
# fit's landmark NME from 0.052 to 0.049.
LANDMARKS_68 = [
    1225, 1888, 1052, 367, 1719, 1722, 242, 1447, 966, 3660, 2483, 3927, 3924, 2608, 3272, 4088, 3443, 268, 493,
    1914, 2044, 2007, 4207, 4240, 4114, 2734, 2509, 977, 4527, 4942, 4857, 68, 2075, 4558, 4269, 2309, 570, 1541,
    1536, 626, 1517, 1511, 2867, 3750, 3755, 3761, 3725, 3731, 5927, 5665, 2081, 5525, 4275, 6170, 2381, 6346,
    6480, 5518, 5976, 5841, 5703, 5709, 5533, 6214, 6208, 6456, 5517, 5952,
]
LANDMARK_SETS = {"calibrated": LANDMARKS_68, "ict": LANDMARKS_68_ICT}
# Extended jawlines (README): candidate contour vertices for landmarks 0-7 (right) and 9-16 (left); capture
# slides jaw landmarks along these to the silhouette when the head turns.
JAWLINE_RIGHT = [1280, 1278, 1275, 1272, 1248, 12, 820, 1834, 1902, 243, 844, 781, 1673, 2199, 801, 1447, 800]
JAWLINE_LEFT = [3041, 3661, 3042, 4390, 3880, 3022, 3085, 2484, 4102, 4036, 3061, 2253, 3466, 3490, 3493, 3496, 3498]

UNITS_TO_METRES = 0.01  # ICT-FaceKit meshes are in centimetres
CACHE_VERSION = 1


def _read_obj_vertices(path: Path) -> np.ndarray:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: ICT-FaceKit file missing") from None
    values = [line[2:] for line in text.splitlines() if line.startswith("v ")]
    verts = np.array(" ".join(values).split(), dtype=np.float64).reshape(-1, 3)
    return verts


def _read_neutral(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, UVs, and triangulated faces (vertex and UV indices) of the complete neutral OBJ."""
    verts, uvs, faces, uv_faces = [], [], [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            verts.append(line[2:])
        elif line.startswith("vt "):
            uvs.append(line[3:])
        elif line.startswith("f "):
            corners = [c.split("/") for c in line.split()[1:]]
            vi = [int(c[0]) - 1 for c in corners]
            ti = [int(c[1]) - 1 for c in corners]
            for k in range(1, len(vi) - 1):  # fan-triangulate quads (ICT is all quads and a few triangles)
                faces.append((vi[0], vi[k], vi[k + 1]))
                uv_faces.append((ti[0], ti[k], ti[k + 1]))
    v = np.array(" ".join(verts).split(), dtype=np.float64).reshape(-1, 3)
    t = np.array(" ".join(uvs).split(), dtype=np.float64).reshape(-1, 2)
    return v, t, np.array(faces, dtype=np.int64), np.array(uv_faces, dtype=np.int64)


def expression_names(folder: Path) -> list[str]:
    index = folder / "vertex_indices.json"
    try:
        return list(json.loads(index.read_text())["expressions"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{index}: ICT-FaceKit vertex_indices.json missing (is {folder} an ICT-FaceKit FaceXModel folder?)") from None


def _cache_key(folder: Path) -> str:
    h = hashlib.sha1(str(CACHE_VERSION).encode())
    for p in sorted(folder.glob("*.obj")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def import_ict(folder: Path) -> dict[str, torch.Tensor]:
    """Parse the FaceXModel OBJs into tensors (full mesh, file units)."""
    names = expression_names(folder)
    neutral, uvs, faces, uv_faces = _read_neutral(folder / "generic_neutral_mesh.obj")
    id_files = sorted(folder.glob("identity[0-9][0-9][0-9].obj"))
    if not id_files:
        raise FileNotFoundError(f"{folder}: no identityNNN.obj files")

    def delta(path: Path) -> np.ndarray:
        v = _read_obj_vertices(path)
        if v.shape != neutral.shape:
            raise ValueError(f"{path}: {v.shape[0]} vertices, the neutral mesh has {neutral.shape[0]}")
        return v - neutral

    from tqdm import tqdm

    files = id_files + [folder / f"{n}.obj" for n in names]
    deltas = [delta(p) for p in tqdm(files, desc="importing ICT-FaceKit", unit="obj", leave=False)]
    return {
        "neutral": torch.from_numpy(neutral),
        "shape_basis": torch.from_numpy(np.stack(deltas[: len(id_files)])),
        "expression_basis": torch.from_numpy(np.stack(deltas[len(id_files) :])),
        "faces": torch.from_numpy(faces),
        "uv_coords": torch.from_numpy(uvs),
        "uv_faces": torch.from_numpy(uv_faces),
    }


def load_ict_arrays(folder: str | Path | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The imported ICT-FaceKit tensors (float32, file units) and expression names.

    ``folder`` is the FaceXModel folder (imported once into the cache) or an imported ``.safetensors`` file
    itself, e.g. a cache file copied to a machine without the OBJs.
    """
    folder = Path(folder) if folder is not None else ict_dir()
    if folder.suffix == ".safetensors":
        if not folder.exists():
            raise FileNotFoundError(f"{folder}: no such imported ICT-FaceKit file")
        with safe_open(str(folder), framework="pt") as f:
            names = json.loads((f.metadata() or {}).get("expressions", "null") or "null")
        if names is None:
            raise ValueError(f"{folder}: not an imported ICT-FaceKit file (no expression names in its metadata)")
        return load_file(str(folder)), names
    if not (folder / "generic_neutral_mesh.obj").exists():
        raise FileNotFoundError(f"{folder}: no generic_neutral_mesh.obj; point FACERIG_ICT or FACERIG_SHARED at ICT-FaceKit")
    names = expression_names(folder)
    cache = cache_dir() / f"ict-{_cache_key(folder)}.safetensors"
    if cache.exists():
        return load_file(str(cache)), names
    arrays = import_ict(folder)
    arrays = {k: (v.float() if v.is_floating_point() else v) for k, v in arrays.items()}
    atomic_save_safetensors(arrays, cache, metadata={"source": str(folder), "expressions": json.dumps(names)})
    return arrays, names


def load_ict(folder: str | Path | None = None, parts: tuple[str, ...] = DEFAULT_PARTS, n_shape: int = 100,
             landmarks: str = "calibrated") -> MorphableModel:
    """ICT-FaceKit as a MorphableModel in metres.

    ``parts``: geometry names from ``REGION_RANGES`` or the groups "eyes", "mouth", "teeth"; the default is the
    face and head/neck, the skin surface DiffusionRig's buffers show. ``landmarks``: "calibrated" (dlib's
    convention, the default) or "ict" (the README's indices).
    """
    if landmarks not in LANDMARK_SETS:
        raise ValueError(f"unknown landmark set {landmarks!r}; choose from {sorted(LANDMARK_SETS)}")
    landmark_list = LANDMARK_SETS[landmarks]
    arrays, names = load_ict_arrays(folder)
    wanted: list[str] = []
    for p in parts:
        group = OPTIONAL_PARTS.get(p, (p,))
        for g in group:
            if g not in REGION_RANGES:
                raise ValueError(f"unknown ICT part {g!r}; known: {', '.join([*REGION_RANGES, *OPTIONAL_PARTS])}")
            wanted.append(g)
    n_all = arrays["neutral"].shape[0]
    keep = torch.zeros(n_all, dtype=torch.bool)
    for g in wanted:
        keep[slice(*REGION_RANGES[g])] = True
    index = torch.nonzero(keep).squeeze(1)
    remap = torch.full((n_all,), -1, dtype=torch.long)
    remap[index] = torch.arange(index.numel())
    faces_full = arrays["faces"]
    face_keep = keep[faces_full].all(1)
    faces = remap[faces_full[face_keep]]
    if not keep[landmark_list].all():
        raise ValueError("the face part must be included: the 68 landmarks lie on it")
    lmk = remap[torch.tensor(landmark_list)]
    regions = {g: remap[torch.arange(*REGION_RANGES[g])] for g in wanted}
    regions["narrow_face"] = remap[torch.arange(*NARROW_FACE)]
    regions["jawline_right"] = remap[torch.tensor(JAWLINE_RIGHT)]
    regions["jawline_left"] = remap[torch.tensor(JAWLINE_LEFT)]
    s = UNITS_TO_METRES
    if not 0 <= n_shape <= arrays["shape_basis"].shape[0]:
        raise ValueError(f"n_shape must be in [0, {arrays['shape_basis'].shape[0]}], got {n_shape}")
    return MorphableModel(
        template=arrays["neutral"][index] * s,
        shape_basis=arrays["shape_basis"][:n_shape, index] * s,
        expression_basis=arrays["expression_basis"][:, index] * s,
        faces=faces,
        landmark_vertices=lmk[:, None].repeat(1, 3),
        landmark_bary=torch.tensor([1.0, 0.0, 0.0]).repeat(68, 1),
        expression_names=names,
        regions=regions,
        uv_coords=arrays["uv_coords"],
        uv_faces=arrays["uv_faces"][face_keep],
        name="ict",
    )
