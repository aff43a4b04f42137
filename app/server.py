"""Build and serve the dashboard: ``create_app`` (a Dash app) and ``serve`` (blocking).

The app only reads run folders under RUNS_DIR: no torch import, no model in a callback.
Binding beyond loopback needs a token (requests without it get 401, see ``_auth``); without
a token only loopback Host names are answered (DNS rebinding, see ``_http``); every
response carries the security headers (``_http``); malformed callback requests get 400
(``_guard``). The token is never printed or logged: the access log redacts it.

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
import re
from pathlib import Path
from urllib.parse import unquote_plus

import dash
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from . import _guard
from ._auth import TokenMiddleware
from ._http import LOOPBACK_NAMES, HostCheck, SecurityHeaders, content_security_policy
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


def create_app(runs_dir: str | os.PathLike, *, token: str | None = None,
               allowed_hosts: tuple[str, ...] = ()) -> dash.Dash:
    """A Dash app over the runs in ``runs_dir``; with ``token``, every request must carry it.

    Without ``token`` only requests whose Host is a loopback name (``localhost``,
    ``127.0.0.1``, ``[::1]``) or one of ``allowed_hosts`` are answered (else 400).

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
    _guard.install(app)
    wsgi = app.server.wsgi_app
    if token:
        wsgi = TokenMiddleware(wsgi, token)
    else:
        wsgi = HostCheck(wsgi, LOOPBACK_NAMES + tuple(allowed_hosts))
    app.server.config["WORKBENCH_HOST_CHECK"] = wsgi if isinstance(wsgi, HostCheck) else None
    app.server.wsgi_app = SecurityHeaders(wsgi, lambda: content_security_policy(app.csp_hashes()))
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
    server = make_server(host, port, app.server, threaded=True, request_handler=_Handler)
    hosts = app.server.config["WORKBENCH_HOST_CHECK"]
    if hosts is not None:                      # the bound address, with the bound port only
        hosts.allow(host)
        hosts.port = server.server_port
    return server


def redact(target: str) -> str:
    """A request target (``/path?query``) with every ``token`` parameter's value replaced by
    ``***`` (also when the name is percent-encoded)."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    pairs = []
    for pair in query.split("&"):
        key, eq, _ = pair.partition("=")
        pairs.append(f"{key}=***" if eq and unquote_plus(key).strip().lower() == "token" else pair)
    return path + "?" + "&".join(pairs)


_TOKEN_TEXT = re.compile(r"(token=)[^&\s'\"]*", re.IGNORECASE)


class _Handler(WSGIRequestHandler):
    """werkzeug's request handler, with ``?token=`` values redacted from every log line (the
    access log, and errors such as "Bad request syntax (...)" that quote the request line)."""

    def log(self, type: str, message: str, *args) -> None:  # noqa: A002 - werkzeug's name
        try:
            text = message % args if args else message
        except (TypeError, ValueError):
            text = " ".join([message, *map(str, args)])
        super().log(type, "%s", _TOKEN_TEXT.sub(r"\1***", text))

    def log_request(self, code="-", size="-") -> None:
        words = self.requestline.split(" ")
        self.requestline = " ".join(redact(w) if i == 1 else w for i, w in enumerate(words))
        if hasattr(self, "path"):
            self.path = redact(self.path)
        super().log_request(code, size)


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
    url = f"http://{shown}:{server.server_port}/"
    hint = " (open it once with ?token=<your token>)" if token else ""
    print(f"workbench dashboard on {url}{hint} (runs in {Path(runs_dir).resolve()}); "
          "Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
