"""``facerig gan`` (train / export a StyleGAN2) and ``facerig stylerig`` (train / sample / mix / evaluate)."""

from __future__ import annotations

import argparse
import dataclasses

from facerig.runtime import add_runtime_arguments


def _seeds(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise argparse.ArgumentTypeError(f"seeds must look like 0-3,7, not {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be non-negative integers, not {text!r}")
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    from facerig.edit.commands import add_spec_arguments
    from facerig.stylerig.gan_train import GanTrainConfig
    from facerig.stylerig.model import MIX_LAYERS
    from facerig.stylerig.rig_train import RigTrainConfig
    from facerig.training import add_dataclass_arguments

    gan = subparsers.add_parser("gan", help="train a StyleGAN2 generator on aligned faces",
                                description="Train our own StyleGAN2 (facerig.stylerig.gan_train) and export it.")
    sub = gan.add_subparsers(dest="gan_command", required=True)
    p = sub.add_parser("train", help="train (or --resume) a StyleGAN2 run",
                       description="Train a StyleGAN2 on a capture dataset folder or a folder of face images.")
    add_dataclass_arguments(p, GanTrainConfig)
    p.set_defaults(func=_gan_train)
    e = sub.add_parser("export", help="write a run's G_ema as a rosinality .pt (rosinality.load_rosinality)")
    e.add_argument("weights", help="run folder (latest checkpoint), checkpoint folder or generator .safetensors")
    e.add_argument("out", help="the .pt file to write")
    e.set_defaults(func=_gan_export)
    v = sub.add_parser("evaluate", help="face rate and Frechet distance of dlib embeddings against real photos",
                       description="Sample N faces; report how often dlib finds a face and the Frechet distance of "
                                   "dlib embeddings to N real photos, next to real-vs-real (not FID).")
    v.add_argument("weights", help="run folder, checkpoint folder or generator .safetensors")
    v.add_argument("--real", required=True, help="folder of real face photos (2N are drawn)")
    v.add_argument("--n", type=int, default=200)
    v.add_argument("--truncation", type=float, default=1.0)
    v.add_argument("--out", help="also write the figures to this JSON file")
    v.set_defaults(func=_gan_evaluate)

    rig = subparsers.add_parser("stylerig", help="rig a StyleGAN with the 3D face model",
                                description="StyleRig (facerig.stylerig): DFR and RigNet over a frozen generator.")
    sub = rig.add_subparsers(dest="stylerig_command", required=True)
    t = sub.add_parser("train", help="capture generated faces, train the DFR and the RigNets (resumable)",
                       description="Build a StyleRig over a trained generator by a recipe (a TOML file: "
                                   "configs/stylerig/, docs/stylerig.md); OUT/model is the rig.")
    add_dataclass_arguments(t, RigTrainConfig)
    t.set_defaults(func=_rig_train)

    s = sub.add_parser("sample", help="conditional generation: faces from seeds with the edit's parameters",
                       description="Draw a face per seed, rig it with the given pose / expression / light, and write "
                                   "OUT/seed_N/{source,edited,sheet}.png + edit.json (read by facerig eval).")
    s.add_argument("--model", required=True, help="StyleRig model folder (RUN/model of facerig stylerig train)")
    s.add_argument("--seeds", type=_seeds, default=[0], help="e.g. 0-7,12 (default 0)")
    s.add_argument("--truncation", type=float, help="psi (default: the model's)")
    add_spec_arguments(s)
    s.add_argument("--out", required=True, help="output folder")
    add_runtime_arguments(s, precision=False)
    s.set_defaults(func=_sample)

    m = sub.add_parser("mix", help="a style-mixing grid: row faces with column faces' coarse/middle/fine layers")
    m.add_argument("--model", required=True)
    m.add_argument("--rows", type=_seeds, default=_seeds("0-3"))
    m.add_argument("--cols", type=_seeds, default=_seeds("10-13"))
    m.add_argument("--layers", choices=sorted(MIX_LAYERS), default="coarse")
    m.add_argument("--out", required=True, help="the PNG to write")
    add_runtime_arguments(m, precision=False)
    m.set_defaults(func=_mix)

    v = sub.add_parser("evaluate", help="edit accuracy, drift and identity on random generated faces",
                       description="The StyleRig protocol: N seeds, yaw +-30, light left/right, smile, jaw open and "
                                   "a do-nothing edit, source and edit re-captured by facerig's capture.")
    v.add_argument("--model", required=True)
    v.add_argument("--n", type=int, default=200, help="faces (seeds 100000 on, unseen in training)")
    v.add_argument("--out", required=True, help="folder for summary.json and sheet.png")
    add_runtime_arguments(v, precision=False)
    v.set_defaults(func=_evaluate)


def _gan_train(args: argparse.Namespace) -> int:
    from facerig.stylerig.gan_train import GanTrainConfig, train

    cfg = GanTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GanTrainConfig)})
    print(f"facerig gan train: checkpoint {train(cfg)}")
    return 0


def _gan_export(args: argparse.Namespace) -> int:
    from facerig.stylerig.gan_train import export_rosinality

    print(f"facerig gan export: wrote {export_rosinality(args.weights, args.out)}")
    return 0


def _gan_evaluate(args: argparse.Namespace) -> int:
    import json

    from facerig.io import atomic_write_json
    from facerig.stylerig.gan_eval import evaluate_generator

    result = evaluate_generator(args.weights, args.real, args.n, args.truncation)
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


def _rig_train(args: argparse.Namespace) -> int:
    from facerig.stylerig.rig_train import RigTrainConfig, train
    from facerig.training import config_from_args

    print(f"facerig stylerig train: wrote {train(config_from_args(RigTrainConfig, args))}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from PIL import Image

    from facerig.edit import write_edit
    from facerig.edit.commands import spec_from_args
    from facerig.io import contact_sheet, to_uint8_image, writable_folder
    from facerig.stylerig.editor import StyleRigEditor

    spec = spec_from_args(args)
    if spec.target_photos():
        raise ValueError("facerig stylerig sample takes explicit values; use facerig edit --rig stylerig for photos")
    out = writable_folder(args.out)
    editor = StyleRigEditor(args.model)
    spec.validate(editor.face)
    rows = []
    for seed in args.seeds:
        result = editor.edit(editor.prepare_seed(seed, args.truncation), spec)
        write_edit(Path(out) / f"seed_{seed}", result, spec, editor.face, {"rig": "stylerig", "model": args.model, "seed": seed})
        rows.append([to_uint8_image(result.source, (-1, 1)), to_uint8_image(result.edited, (-1, 1))])
    Image.fromarray(contact_sheet(rows)).save(Path(out) / "grid.png")
    print(f"facerig stylerig sample: wrote {len(rows)} edits and {Path(out) / 'grid.png'}")
    return 0


def _mix(args: argparse.Namespace) -> int:
    import io

    import torch
    from PIL import Image

    from facerig.io import atomic_write_bytes, contact_sheet, to_uint8_image
    from facerig.stylerig.model import StyleRigModel, style_mix

    model = StyleRigModel.from_pretrained(args.model)
    with torch.no_grad():
        image = lambda w: to_uint8_image(model.generate(w)[0], (-1, 1))  # noqa: E731
        rows_w = {s: model.latent(s) for s in args.rows}
        cols_w = {s: model.latent(s) for s in args.cols}
        blank = image(model.latent_avg[None, None].repeat(1, model.generator.n_latent, 1)) * 0 + 255
        grid = [[blank, *(image(w) for w in cols_w.values())]]
        for w_row in rows_w.values():
            grid.append([image(w_row), *(image(style_mix(w_row, w_col, args.layers)) for w_col in cols_w.values())])
    buf = io.BytesIO()
    Image.fromarray(contact_sheet(grid)).save(buf, format="PNG")
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"facerig stylerig mix: wrote {args.out} (rows take the columns' {args.layers} layers)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from facerig.stylerig.evaluate import evaluate

    summary = evaluate(args.model, args.n, args.out)
    print(f"facerig stylerig evaluate: {summary['gates']}")
    return 0
