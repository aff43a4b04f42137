"""``workbench serve``: the Dash dashboard over a folder of run folders."""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("serve", help="browse run folders in a Dash dashboard")
    p.add_argument("runs_dir", type=Path, help="folder holding run folders (from workbench run/patch/prune)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8050, help="TCP port, 1-65535 (0: any free port; default 8050)")
    p.add_argument("--token", default=os.environ.get("WORKBENCH_TOKEN"),
                   help="access token required on every request (default $WORKBENCH_TOKEN)")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr (default: errors only)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UserError

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be a TCP port in 1-65535 (or 0 for any free port), got {args.port}")
    if not args.runs_dir.is_dir():
        raise UserError(f"{args.runs_dir} is not a folder; give the folder that holds your run folders")
    if args.token is not None and not args.token.strip():
        raise UserError("--token is empty; give a non-empty access token or leave it out")
    try:
        from ..app import serve
        from ..app.server import check_bind
    except ModuleNotFoundError as exc:
        raise UserError(f"the dashboard needs the 'app' extra ({exc.name} is missing): "
                        "pip install 'workbench[app]'") from None
    try:
        check_bind(args.host, args.token)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        serve(args.runs_dir, host=args.host, port=args.port, token=args.token, access_log=args.access_log)
    except OSError as exc:
        if isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise UserError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}; "
                            "choose another --port or --host") from None
        raise
    except KeyboardInterrupt as exc:
        exc.workbench_note = "server stopped"
        raise
    return 0
