"""``facerig ui``: the interactive rig in the browser (see ``facerig.ui.server``)."""

from __future__ import annotations

import argparse

from facerig.runtime import add_runtime_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ui", help="the interactive rig in a local web page",
                              description="Serve the interactive rig on http://HOST:PORT (localhost by default).")
    p.add_argument("--model", help="the rig's trained model (run folder, checkpoint or .pt; default: the rig's "
                                    "shipped model in models/)")
    p.add_argument("--rig", default="diffusion", help="which rig generates the image (default diffusion)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only); any other needs the token printed "
                        "at start")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--album", help="a personal model's album dataset: its shared identity shape is used")
    p.add_argument("--device", default="cpu")
    add_runtime_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import threading

    from facerig.edit.editor import load_editor
    from facerig.ui.app import RigApp, TorchWorker
    from facerig.ui.guard import new_token
    from facerig.ui.server import make_server

    from facerig.paths import DEFAULT_MODELS, shipped_model

    if args.model is None:
        if args.rig not in DEFAULT_MODELS:
            raise ValueError(f"--rig {args.rig}: no shipped model; give --model")
        args.model = str(shipped_model(DEFAULT_MODELS[args.rig]))
    editor = load_editor(args.rig, args.model, args.device, args.album, args.precision)
    worker = TorchWorker()
    app = RigApp(editor, args.rig, worker, model=args.model)
    server = make_server(app, args.host, args.port, token=new_token(args.host))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"facerig ui: serving the {args.rig} rig on {server.url} (Ctrl-C stops)", flush=True)
    try:
        worker.run_forever()  # torch work stays on the main thread (see facerig.ui.app)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0
