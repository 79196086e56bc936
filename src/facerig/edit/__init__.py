"""Rig-agnostic editing: what to change (``EditSpec``), how it changes FaceParams (``apply_edit``), and the
rig contract (``Editor``: ``prepare`` a photo once, ``edit`` it many times, with the options, capabilities
and progress stages it declares) that DiffusionRig and StyleRig implement."""

from facerig.edit.editor import (
    Capabilities, EditProgress, EditResult, Editor, RigContract, RigOption, Session, SessionCache, SessionCapture,
    Stage, StepCallback, edit_record, prepare_targets, write_edit,
)
from facerig.edit.spec import EditSpec, apply_edit, crop_centre, parse_expression, parse_vector

__all__ = ["Capabilities", "EditProgress", "EditResult", "EditSpec", "Editor", "RigContract", "RigOption", "Session",
           "SessionCache", "SessionCapture", "Stage", "StepCallback", "apply_edit", "crop_centre", "edit_record",
           "parse_expression", "parse_vector", "prepare_targets", "write_edit"]
