"""Rig-agnostic editing: what to change (``EditSpec``), how it changes FaceParams (``apply_edit``), and the
editor protocol (``prepare`` a photo once, ``edit`` it many times) that DiffusionRig and StyleRig implement."""

from facerig.edit.editor import (
    EditProgress, EditResult, Editor, Session, SessionCapture, StepCallback, prepare_targets, write_edit,
)
from facerig.edit.spec import EditSpec, apply_edit, crop_centre, parse_expression, parse_vector

__all__ = ["EditProgress", "EditResult", "EditSpec", "Editor", "Session", "SessionCapture", "StepCallback", "apply_edit", "crop_centre",
           "parse_expression", "parse_vector", "prepare_targets", "write_edit"]
