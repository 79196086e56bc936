"""The 3D face layer: parameters, morphable models (ICT-FaceKit default, FLAME bring-your-own)."""

from facerig.face3d.camera import ffhq_centre, project
from facerig.face3d.landmarks import contour_candidates, project_landmarks
from facerig.face3d.light import directional_light, dominant_direction, split_light
from facerig.face3d.model import FaceGeometry, MorphableModel
from facerig.face3d.params import FaceParams

MODELS = ("ict", "flame")


def load_model(name: str = "ict", path=None, **kwargs) -> MorphableModel:
    """A face model by backend name; ``path`` is its data (ICT folder or FLAME ``generic_model.pkl``)."""
    if name == "ict":
        from facerig.face3d.ict import load_ict

        return load_ict(path, **kwargs)
    if name == "flame":
        from facerig.face3d.flame import load_flame

        if path is None:
            raise ValueError("the FLAME model is bring-your-own: pass the path of your generic_model.pkl")
        return load_flame(path, **kwargs)
    raise ValueError(f"unknown face model {name!r}; choose one of {MODELS}")


__all__ = [
    "FaceGeometry", "FaceParams", "MODELS", "MorphableModel", "contour_candidates", "directional_light",
    "dominant_direction", "ffhq_centre", "load_model", "project", "project_landmarks", "split_light",
]
