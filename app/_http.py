"""HTTP hardening in front of the whole app: the Host check and the security headers.

``HostCheck`` is for a dashboard on loopback without a token: a web page elsewhere can make
the browser send requests to ``127.0.0.1`` under its own domain name (DNS rebinding), and
the only sign of it is the ``Host`` header. So only the bound address and the loopback names
(``localhost``, ``127.0.0.1``, ``[::1]``), with the server's port, are accepted; anything
else gets ``400``. With a token the check is not needed (the browser sends the token's
cookie only to the name that set it) and a reverse proxy may use any name.

``SecurityHeaders`` adds to every response (pages, callbacks, downloads, 401s):
``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy:
no-referrer``, ``Cross-Origin-Resource-Policy: same-origin`` and a Content-Security-Policy
that allows scripts only from the server itself plus the hashes of Dash's inline scripts
(``Dash.csp_hashes``); styles may be inline (Dash and plotly.js set element styles).
"""
from __future__ import annotations

from typing import Callable, Iterable

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def content_security_policy(script_hashes: Iterable[str]) -> str:
    """The CSP header value; ``script_hashes`` as ``'sha256-...'`` strings."""
    scripts = " ".join(["'self'", *script_hashes])
    return "; ".join([
        "default-src 'self'", f"script-src {scripts}", "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:", "media-src 'self' blob:", "font-src 'self' data:",
        "connect-src 'self'", "worker-src 'self' blob:", "object-src 'none'",
        "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"])


def _headers(csp: str) -> list[tuple[str, str]]:
    return [("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"), ("Cross-Origin-Resource-Policy", "same-origin"),
            ("Content-Security-Policy", csp)]


class SecurityHeaders:
    """WSGI middleware: every response gets the security headers (replacing any set below);
    ``csp()`` gives the Content-Security-Policy value."""

    def __init__(self, wsgi_app: Callable, csp: Callable[[], str]):
        self.wsgi_app = wsgi_app
        self.csp = csp          # called per response: Dash adds inline scripts at first request
        self._names = {k.lower() for k, _ in _headers("")}

    def __call__(self, environ: dict, start_response: Callable):
        def start(status, headers, exc_info=None):
            kept = [(k, v) for k, v in headers if k.lower() not in self._names]
            return start_response(status, kept + _headers(self.csp()), exc_info)
        return self.wsgi_app(environ, start)


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``"name:port"`` / ``"[v6]:port"`` -> (lower-case name, port or None); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[:end + 1], value[end + 1:]
    else:
        name, _, port = value.partition(":")
        rest = ":" + port if port else ""
    if not rest:
        return name, None
    if not rest.startswith(":") or not rest[1:].isascii() or not rest[1:].isdigit() \
            or len(rest) > 6:
        return None
    return name, int(rest[1:])


class HostCheck:
    """WSGI middleware: ``400`` unless the Host header names one of ``names`` and, once
    ``port`` is set (``make_app_server`` sets the bound port), that port."""

    def __init__(self, wsgi_app: Callable, names: Iterable[str] = LOOPBACK_NAMES,
                 port: int | None = None):
        self.wsgi_app = wsgi_app
        self.names = {n.lower() for n in names}
        self.port = port

    def allow(self, host: str) -> None:
        """Also accept ``host`` (the bound address; IPv6 in brackets or bare)."""
        self.names.add(f"[{host.lower()}]" if ":" in host and not host.startswith("[")
                       else host.lower())

    def ok(self, value: str | None) -> bool:
        parsed = _split_host(value or "")
        if parsed is None or parsed[0] not in self.names:
            return False
        port = parsed[1] if parsed[1] is not None else 80
        return self.port is None or port == self.port

    def __call__(self, environ: dict, start_response: Callable):
        if self.ok(environ.get("HTTP_HOST")):
            return self.wsgi_app(environ, start_response)
        body = (b"400 Bad Request: this dashboard answers only to its own address "
                b"(localhost, 127.0.0.1 or [::1] with its port); the Host header named "
                b"another (a DNS-rebinding page?). Start it with --token to serve other names.\n")
        start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8"),
                                           ("Content-Length", str(len(body)))])
        return [body]
