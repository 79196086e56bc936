"""``facerig render``: buffers as PNGs for parameters from JSON or random ones, plus a contact sheet."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from facerig.face3d import MODELS, FaceParams, load_model
from facerig.face3d.camera import PROJECTIONS
from facerig.face3d.model import random_params
from facerig.io import contact_sheet, to_uint8_image, writable_folder
from facerig.render.renderer import Buffers, Renderer, RenderConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render physical buffers (normal, albedo, shading, rendered, mask, depth) as PNGs")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--params", type=Path, help="FaceParams JSON (as written by capture or FaceParams.to_json)")
    src.add_argument("--random", type=int, metavar="N", help="render N random faces")
    p.add_argument("--seed", type=int, default=0, help="seed for --random")
    p.add_argument("--model", choices=MODELS, default="ict")
    p.add_argument("--model-path", type=Path, help="ICT-FaceKit folder or FLAME generic_model.pkl")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--projection", choices=PROJECTIONS, default="orthographic")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run)


def buffer_images(buffers: Buffers, i: int) -> dict[str, np.ndarray]:
    """uint8 previews of item i: normals mapped from [-1,1], depth normalised over the face, landmarks drawn."""
    imgs = {
        "normal": to_uint8_image(buffers.normal[i], (-1, 1)),
        "albedo": to_uint8_image(buffers.albedo[i]),
        "shading": to_uint8_image(buffers.shading[i] / buffers.shading[i].max().clamp_min(1e-6)),
        "rendered": to_uint8_image(buffers.rendered[i]),
        "mask": to_uint8_image(buffers.mask[i]),
    }
    m = buffers.mask[i, 0] > 0
    d = buffers.depth[i, 0]
    if m.any():
        lo, hi = d[m].min(), d[m].max()
        d = torch.where(m, 1 - (d - lo) / (hi - lo).clamp_min(1e-9) * 0.8, torch.zeros_like(d))  # near = bright
    imgs["depth"] = to_uint8_image(d)
    canvas = Image.fromarray(imgs["rendered"].copy())
    draw = ImageDraw.Draw(canvas)
    for x, y in buffers.landmarks[i].tolist():
        draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(0, 255, 0))
    imgs["landmarks"] = np.asarray(canvas)
    return imgs


def run(args: argparse.Namespace) -> int:
    writable_folder(args.out)
    model = load_model(args.model, args.model_path)
    if args.params is not None:
        params = FaceParams.from_json(args.params)
        if params.shape.shape[1] != model.n_shape or params.expression.shape[1] != model.n_expression:
            raise ValueError(f"{args.params}: {params.shape.shape[1]} shape / {params.expression.shape[1]} expression "
                             f"coefficients, the {model.name} model has {model.n_shape} / {model.n_expression}")
    else:
        params = random_params(model, args.random, torch.Generator().manual_seed(args.seed))
    renderer = Renderer(model, RenderConfig(args.size, args.projection))
    with torch.no_grad():
        buffers = renderer(params)
    rows = []
    for i in range(params.batch_size):
        imgs = buffer_images(buffers, i)
        for name, img in imgs.items():
            Image.fromarray(img).save(args.out / f"{i:03d}_{name}.png")
        params[i].to_json(args.out / f"{i:03d}_params.json")
        rows.append(list(imgs.values()))
    Image.fromarray(contact_sheet(rows)).save(args.out / "sheet.png")
    print(f"wrote {params.batch_size} buffer sets and {args.out / 'sheet.png'} "
          f"(columns: {', '.join(imgs)})")
    return 0
