"""``facerig ui``: the interactive rig in the browser (see ``facerig.ui.server``)."""

from __future__ import annotations

import argparse
import importlib

from facerig.runtime import add_runtime_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ui", help="the interactive rig in a local web page",
                              description="Serve the interactive rig on http://HOST:PORT (localhost by default).")
    p.add_argument("--model", required=True, help="the rig's trained model (run folder, checkpoint or .pt)")
    p.add_argument("--rig", default="diffusion", help="which rig generates the image (default diffusion)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--album", help="a personal model's album dataset: its shared identity shape is used")
    p.add_argument("--device", default="cpu")
    add_runtime_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facerig.dataset import album_shape
    from facerig.edit.commands import RIGS
    import threading

    from facerig.ui.app import RigApp, TorchWorker
    from facerig.ui.server import make_server

    if args.rig not in RIGS:
        raise ValueError(f"unknown rig {args.rig!r}; choose from {sorted(RIGS)}")
    module, cls = RIGS[args.rig]
    editor = getattr(importlib.import_module(module), cls)(
        args.model, args.device, shape=album_shape(args.album) if args.album else None, precision=args.precision)
    worker = TorchWorker()
    server = make_server(RigApp(editor, args.rig, worker), args.host, args.port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"facerig ui: serving the {args.rig} rig on http://{args.host}:{server.server_port} (Ctrl-C stops)",
          flush=True)
    try:
        worker.run_forever()  # torch work stays on the main thread (see facerig.ui.app)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0
