"""Build and serve the dashboard: ``create_app`` (a Dash app) and ``serve`` (blocking).

The app only reads run folders under RUNS_DIR: no torch import, no model in a callback.
Binding beyond loopback needs a token (requests without it get 401, see ``_auth``).

Pages follow the Dash pages convention (``pages/<name>.py``: ``register_page``, ``layout``,
small callbacks) with one deliberate change: each page's ``register(app)`` calls
``dash.register_page`` and attaches the callbacks with ``app.callback`` instead of the
global ``dash.callback`` at import time. Dash moves global callbacks into the *first* app
that starts and clears the list, so a second app in the same process (tests, the load
benchmark) would silently have no callbacks, and ``register_page`` at import time makes a
page module unimportable before an app exists.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

import dash
from werkzeug.serving import BaseWSGIServer, make_server

from ._auth import TokenMiddleware
from .pages import PAGES
from .routes import register_routes
from .shell import INDEX, register_shell_callbacks, shell_layout
from .store import RunStore


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(runs_dir: str | os.PathLike, *, token: str | None = None) -> dash.Dash:
    """A Dash app over the runs in ``runs_dir``; with ``token``, every request must carry it.

    Raises:
        FileNotFoundError: ``runs_dir`` is not a folder.
    """
    store = RunStore(runs_dir)
    app = dash.Dash(__name__, use_pages=True, pages_folder="", title="workbench",
                    update_title=None, suppress_callback_exceptions=True, serve_locally=True)
    app.index_string = INDEX
    app.layout = shell_layout()
    app.server.config["WORKBENCH_STORE"] = store
    register_shell_callbacks(app)
    for page in PAGES:
        page.register(app)
    register_routes(app.server, store)
    if token:
        app.server.wsgi_app = TokenMiddleware(app.server.wsgi_app, token)
    return app


def check_bind(host: str, token: str | None) -> None:
    """Raise ValueError when ``host`` is not loopback and no token was given."""
    if not is_loopback(host) and not token:
        raise ValueError(f"--host {host} exposes the dashboard to other machines; it requires "
                         "--token TOKEN (requests without it get 401)")


def make_app_server(runs_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8050,
                    token: str | None = None) -> BaseWSGIServer:
    """A threaded werkzeug server for the app, bound but not yet serving (``port=0``: any)."""
    check_bind(host, token)
    app = create_app(runs_dir, token=token)
    return make_server(host, port, app.server, threaded=True)


def serve(runs_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8050,
          token: str | None = None, access_log: bool = False) -> None:
    """Serve the dashboard until interrupted (Ctrl-C). Blocks.

    Args:
        runs_dir: folder whose sub-folders are run folders.
        host: interface to bind; anything but loopback requires ``token``.
        port: TCP port (0 picks a free one).
        token: shared secret; when set, requests must carry it (else 401).
        access_log: log every request (werkzeug's access log) to stderr; off by default,
            errors are logged either way.

    Raises:
        ValueError: non-loopback ``host`` without ``token``.
        FileNotFoundError: ``runs_dir`` is not a folder.
        OSError: the port is in use.
    """
    server = make_app_server(Path(runs_dir), host, port, token)
    logging.getLogger("werkzeug").setLevel(logging.INFO if access_log else logging.WARNING)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/" + (f"?token={token}" if token else "")
    print(f"workbench dashboard on {url} (runs in {Path(runs_dir).resolve()}); Ctrl-C stops it",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
