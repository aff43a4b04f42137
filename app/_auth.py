"""Token check for a dashboard exposed beyond loopback (``--host 0.0.0.0 --token T``).

A WSGI middleware in front of the whole Flask/Dash app: every request (pages, Dash
callbacks, JS bundles, downloads, audio) must carry the token, as ``Authorization: Bearer
T``, an ``X-Workbench-Token`` header, the ``workbench_token`` cookie, or a ``?token=T`` query
parameter. The query form is for the first page load in a browser: the reply sets an
HttpOnly, SameSite=Strict cookie so the page's own requests are authorised, and the
parameter is removed from the request before the app sees it. Anything else
gets ``401``. Tokens are compared in constant time (``hmac.compare_digest`` on bytes).

Any token string works, whatever its characters: the cookie holds an HMAC of the token
(hex, so never needs quoting, and the token itself is not stored in the browser); a cookie
holding the token itself, percent-encoded, is accepted too, for scripts. Header values are
compared as the bytes sent (UTF-8 or Latin-1), the query parameter after percent-decoding
as UTF-8.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Callable, Iterable
from urllib.parse import unquote_to_bytes

from werkzeug.http import parse_cookie

COOKIE = "workbench_token"
_COOKIE_MSG = b"workbench dashboard cookie v1"


def cookie_value(token: str) -> str:
    """What the ``workbench_token`` cookie holds for ``token``: HMAC-SHA256 hex."""
    return hmac.new(token.encode(), _COOKIE_MSG, hashlib.sha256).hexdigest()


def _wire_bytes(value: str) -> list[bytes]:
    """A WSGI header string (Latin-1 decoded bytes) as the bytes the client may have meant."""
    out = [value.encode("utf-8", "surrogateescape")]
    try:
        out.append(value.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return out


def _query_values(query: str, key: bytes) -> tuple[list[bytes], str]:
    """(values of ``key`` in a WSGI query string, percent-decoded to the exact bytes sent;
    the query string without them)."""
    out, kept = [], []
    for part in query.split("&"):
        k, _, v = part.encode("latin-1", "replace").partition(b"=")
        if unquote_to_bytes(k.replace(b"+", b" ")).strip().lower() == key:
            out.append(unquote_to_bytes(v.replace(b"+", b" ")))
        else:
            kept.append(part)
    return out, "&".join(kept)


class TokenMiddleware:
    """Wrap ``wsgi_app`` so only requests presenting ``token`` reach it."""

    def __init__(self, wsgi_app: Callable, token: str):
        if not token:
            raise ValueError("TokenMiddleware needs a non-empty token")
        self.wsgi_app = wsgi_app
        self._token = token.encode()
        self._cookie = cookie_value(token).encode()

    def _ok(self, candidates: Iterable[bytes]) -> bool:
        ok = False
        for c in candidates:                       # no early exit: same work either way
            ok |= hmac.compare_digest(c, self._token)
        return ok

    def _cookie_ok(self, environ: dict) -> bool:
        raw = parse_cookie(environ.get("HTTP_COOKIE", "")).get(COOKIE)
        if raw is None:
            return False
        derived = hmac.compare_digest(raw.encode("utf-8", "surrogateescape"), self._cookie)
        return self._ok([unquote_to_bytes(raw)]) | derived

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        # the token parameter never reaches the app, so no page (Dash puts the request URL
        # in its meta tags), callback or log line can repeat it
        supplied, environ["QUERY_STRING"] = _query_values(environ.get("QUERY_STRING", ""), b"token")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        bearer = _wire_bytes(auth[7:].strip()) if auth[:7].lower() == "bearer " else []
        header = environ.get("HTTP_X_WORKBENCH_TOKEN")
        if self._ok(bearer) or (header is not None and self._ok(_wire_bytes(header))) \
                or self._cookie_ok(environ):
            return self.wsgi_app(environ, start_response)
        if supplied and self._ok(supplied[:1]):
            cookie = (f"{COOKIE}={self._cookie.decode()}; Path=/; HttpOnly; SameSite=Strict")

            def start_with_cookie(status, headers, exc_info=None):
                return start_response(status, list(headers) + [("Set-Cookie", cookie)], exc_info)
            return self.wsgi_app(environ, start_with_cookie)
        body = (b"401 Unauthorized: this dashboard was started with --token; open it with "
                b"?token=<token> or send 'Authorization: Bearer <token>'.\n")
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("Content-Length", str(len(body))),
                                            ("WWW-Authenticate", 'Bearer realm="workbench"')])
        return [body]
