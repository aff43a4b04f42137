"""``workbench serve``: the Dash dashboard over a folder of run folders."""
from __future__ import annotations

import os
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("serve", help="browse run folders in a Dash dashboard")
    p.add_argument("runs_dir", type=Path, help="folder holding run folders (from workbench run/patch/prune)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--token", default=os.environ.get("WORKBENCH_TOKEN"),
                   help="access token required on every request (default $WORKBENCH_TOKEN)")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr (default: errors only)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from ..app import serve
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"the dashboard needs the 'app' extra ({exc.name} is missing): "
                                  "pip install 'workbench[app]'") from None
    serve(args.runs_dir, host=args.host, port=args.port, token=args.token, access_log=args.access_log)
    return 0
