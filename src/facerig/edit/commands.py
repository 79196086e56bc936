"""``facerig edit``: relight, re-pose or change the expression of a portrait with a rig.

Everything the command is given is checked before the model is loaded or the photo captured; a bad value,
an unreadable photo or a photo without a face is one line naming it (exit code 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facerig.edit.editor import RIGS, RigOption, editor_class
from facerig.runtime import add_runtime_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "edit", help="relight, re-pose or change the expression of a portrait",
        description="Capture PHOTO, edit its 3D face parameters, re-render the buffers and generate the edited "
                    "photo. Writes OUT/NAME/{source,edited,sheet}.png (edited.png at the photo's scale; edited_rig.png: "
                    "the rig's own output) and edit.json (read by facerig eval).",
    )
    p.add_argument("photo", help="the portrait to edit")
    p.add_argument("--rig", choices=sorted(RIGS), default="diffusion", help="which rig generates the image")
    p.add_argument("--model", required=True, help="the rig's trained model: run folder, checkpoint or official .pt")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="sub-folder name (default: the photo's file stem)")
    p.add_argument("--album", help="a personal model's album dataset: its shared identity shape is used")
    add_spec_arguments(p)
    add_rig_options(p)
    p.add_argument("--paste-back", action="store_true",
                   help="also write pasted.png: the edit warped back into the original photo, at its size, through a "
                        "feathered head mask (face, scalp, hair and ears near them); the rest stays the photo's")
    p.add_argument("--rig-size", action="store_true",
                   help="write edited.png and source.png at the rig's own size (64 px for the shipped models) instead "
                        "of the photo's: by default they are the aligned crop at the photo's scale (256 to 1024 px), "
                        "the rig's change with the photo's detail carried to the edited face (docs/edit.md)")
    p.add_argument("--device", default="cpu")
    add_runtime_arguments(p)
    p.set_defaults(func=run)


def add_rig_options(p: argparse.ArgumentParser) -> None:
    """One flag per option any registered rig declares, its help naming each rig's meaning, default and
    range. Unset flags stay None, so a rig gets only what was given and refuses what it does not declare."""
    by_name: dict[str, list[tuple[str, RigOption]]] = {}
    for rig in RIGS:
        for option in editor_class(rig).contract.options:
            by_name.setdefault(option.name, []).append((rig, option))
    for name, declared in by_name.items():
        kinds = {o.type for _, o in declared}
        if len(kinds) > 1:
            raise TypeError(f"rigs declare --{name} with different types: {declared}")
        kind = kinds.pop()
        if len(declared) == len(RIGS) > 1:
            help_text = "; ".join(f"{rig}: {_describe(o)}" for rig, o in declared)
        else:
            help_text = "; ".join(_describe(o) for _, o in declared) + f"; {', '.join(r for r, _ in declared)} rig only"
        if kind is bool:
            p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(f"--{name}", type=kind, default=None, help=help_text)


def _describe(option: RigOption) -> str:
    if option.type is bool:
        return f"{option.help} (default {'on' if option.default else 'off'})"
    low, high = option.range
    return f"{option.help} (default {option.default:g}, {low:g} to {high:g})" if option.type is float else \
        f"{option.help} (default {option.default}, {low} to {high})"


def rig_options_from_args(args: argparse.Namespace, rig: str) -> dict:
    """The rig's options from the command line: the given ones checked, the others its defaults; a flag
    the rig does not declare is refused in one line."""
    names = {o.name for r in RIGS for o in editor_class(r).contract.options}
    return editor_class(rig).check_options(**{n: getattr(args, n) for n in names if getattr(args, n) is not None})


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """The options that make an ``EditSpec`` (``spec_from_args``), shared by every command that edits."""
    p.add_argument("--light-from", help="photo whose SH light to use")
    p.add_argument("--pose-from", help="photo whose head rotation to use")
    p.add_argument("--expression-from", help="photo whose expression (and jaw) to use")
    p.add_argument("--latent-from", help="photo whose global latent to use (appearance mixing)")
    p.add_argument("--light-dir", help="light direction x,y,z in camera space (x right, y up, z to the camera); "
                   "write --light-dir=-1,0.3,0.6 when it starts with a minus")
    p.add_argument("--light-intensity", type=float, help="distant-light intensity (ambient is kept)")
    p.add_argument("--yaw", type=float, help="head yaw in degrees (positive turns the nose to image right)")
    p.add_argument("--pitch", type=float, help="head pitch in degrees (positive tilts the nose down)")
    p.add_argument("--roll", type=float, help="head roll in degrees")
    p.add_argument("--expr", default="", help="expression weights, e.g. mouthSmile_L=0.8,jawOpen=0.3")


def spec_from_args(args: argparse.Namespace):
    from facerig.edit import EditSpec, parse_expression, parse_vector

    return EditSpec(
        light_from=args.light_from, pose_from=args.pose_from, expression_from=args.expression_from,
        latent_from=args.latent_from, light_dir=parse_vector(args.light_dir, "--light-dir"),
        light_intensity=args.light_intensity, yaw=args.yaw, pitch=args.pitch, roll=args.roll,
        expression=parse_expression(args.expr),
    ).validate()


def run(args: argparse.Namespace) -> int:
    from facerig.edit import prepare_targets, write_edit
    from facerig.edit.editor import load_editor
    from facerig.io import to_uint8_image, writable_folder

    spec = spec_from_args(args)
    options = rig_options_from_args(args, args.rig)
    if args.album and not editor_class(args.rig).contract.capabilities.albums:
        raise ValueError(f"the {args.rig} rig has no personal models: --album does not apply")
    for photo in [args.photo, *spec.target_photos().values()]:
        if not Path(photo).is_file():
            raise FileNotFoundError(f"{photo}: no such photo")
    folder = writable_folder(Path(args.out) / (args.name or Path(args.photo).stem))
    editor = load_editor(args.rig, args.model, args.device, args.album, args.precision)
    spec.validate(editor.face)  # expression names, now that the face model is loaded
    session = editor.prepare(args.photo)
    result = editor.edit(session, spec, prepare_targets(editor, spec), **options)
    full = None
    if not args.rig_size:
        from facerig.edit.photo_scale import at_photo_scale

        full = at_photo_scale(args.photo, session, result, editor.face)
    images = {"source": to_uint8_image(full.source), "edited": to_uint8_image(full.edited)} if full else None
    write_edit(folder, result, spec, editor.face, {"rig": args.rig, "model": args.model, **options}, images)
    if args.paste_back:
        from PIL import Image

        from facerig.edit.paste import head_mask, paste_into_file
        from facerig.edit.photo_scale import paste_full
        from facerig.edit.spec import CAPTURE_SIZE

        if full is not None:
            pasted = paste_full(full)
        else:
            mask = head_mask([result.source_buffers.mask, result.target_buffers.mask])
            pasted = paste_into_file(args.photo, result.edited, session.transform, CAPTURE_SIZE, mask, result.frame)
        Image.fromarray(pasted).save(folder / "pasted.png")
    print(f"facerig edit: wrote {folder / 'edited.png'} and {folder / 'sheet.png'}")
    return 0
