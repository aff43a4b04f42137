"""No request ends in a 500: malformed callback requests get 400, unknown bundles 404.

Dash answers a callback request whose JSON does not match the callback (missing keys,
wrong number of inputs, a value of the wrong type) and a request for a JS bundle it does
not know (``/_dash-component-suites/..%2F...``) with an exception, i.e. ``500``. The
``before_request`` hook here checks each ``/_dash-update-component`` body against the
callback it names: the outputs, inputs and states must be the declared ones, and each
value must be of the kind its component property holds (``KINDS``; a run name is text, a
layer an integer, a view store an object, ...). Anything else gets ``400`` with one line
saying what is wrong. Callbacks then only see well-typed values and handle wrong *values*
(a run that does not exist, a head out of range) with a message in the page.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import flask
from dash._utils import split_callback_id
from dash.exceptions import DependencyException, InvalidResourceError

MAX_TEXT = 4096
MAX_INT = 2**31


def _text(v) -> bool:
    return v is None or (isinstance(v, str) and len(v) <= MAX_TEXT)


def _int(v) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < MAX_INT)


def _path(v) -> bool:
    return v is None or (_text(v) and v.startswith("/"))


def _object(v) -> bool:
    return v is None or isinstance(v, dict)


def _list_of(ok: Callable) -> Callable:
    return lambda v: v is None or (isinstance(v, list) and all(x is not None and ok(x) for x in v))


def _head(v) -> bool:
    return v is None or (isinstance(v, list) and len(v) == 3 and isinstance(v[0], str)
                         and _text(v[0]) and all(_int(x) and x is not None for x in v[1:]))


@dataclass(frozen=True)
class Kind:
    name: str
    ok: Callable[[object], bool]


TEXT = Kind("text or null", _text)
PATH = Kind("a path starting with / or null", _path)
INT = Kind("an integer below 2**31 or null", _int)
OBJECT = Kind("an object or null", _object)
HEAD = Kind("[stream, layer, head] or null", _head)
TEXTS = Kind("a list of texts or null", _list_of(_text))
INTS = Kind("a list of integers or null", _list_of(_int))
OBJECTS = Kind("a list of objects or null", _list_of(_object))
ANY = Kind("anything", lambda v: True)

KINDS: dict[tuple[str, str], Kind] = {
    ("_pages_location", "pathname"): PATH, ("_pages_location", "search"): TEXT,
    ("_pages_store", "data"): OBJECT,
    ("grid-metric", "value"): TEXT, ("grid-compare", "value"): TEXT,
    ("grid-head", "data"): HEAD, ("grid-heatmap", "clickData"): ANY,
    ("detail-stream", "value"): TEXT, ("detail-layer", "value"): INT,
    ("detail-head", "value"): INT, ("detail-input", "value"): INT,
    ("detail-scale", "value"): TEXT, ("detail-colour", "value"): TEXTS, ("detail-prompt", "value"): TEXT,
    ("detail-thumbs", "clickData"): ANY,
    ("flow-input", "value"): INT, ("flow-quantity", "value"): TEXT, ("flow-heads", "value"): TEXTS,
    ("patching-pos-input", "value"): INT, ("patching-x", "value"): TEXT,
    ("patching-y", "value"): TEXT,
    ("runs-table", "selected_rows"): INTS, ("runs-table", "data"): OBJECTS,
    ("circuits-kind", "value"): TEXT, ("circuits-qk-query", "value"): INT, ("circuits-qk-key", "value"): INT,
}


def kind_of(cid, prop) -> Kind | None:
    """The kind of value ``cid.prop`` holds; ``<page>-run.value`` is text, ``<page>-view.data``
    an object; None for a property no server callback reads."""
    if not isinstance(cid, str) or not isinstance(prop, str):
        return None
    if (cid, prop) in KINDS:
        return KINDS[(cid, prop)]
    if cid.endswith("-run") and prop == "value":
        return TEXT
    if cid.endswith("-view") and prop == "data":
        return OBJECT
    return None


def _pairs(items) -> list[tuple] | None:
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return None
    return [(i.get("id"), i.get("property")) for i in items]


def callback_problem(body, callback_map: dict) -> str | None:
    """What is wrong with a ``/_dash-update-component`` body, or None when it is well formed."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    output = body.get("output")
    cb = callback_map.get(output) if isinstance(output, str) else None
    if cb is None or "callback" not in cb:
        return f"no server callback has output {str(output)[:80]!r}"
    want = split_callback_id(output)
    if _pairs(body.get("outputs", want)) != _pairs(want):
        return "outputs do not match the callback's outputs"
    if not isinstance(body.get("changedPropIds", []), list) or \
            not all(isinstance(p, str) for p in body.get("changedPropIds", [])):
        return "changedPropIds must be a list of texts"
    for group, key in (("inputs", "inputs"), ("state", "state")):
        items = body.get(group, [])
        declared = [(d["id"], d["property"]) for d in cb[key]]
        if not isinstance(items, list) or _pairs(items) != declared:
            return f"{group} do not match the callback's {group}: expected {declared}"
        for item in items:
            kind = kind_of(item["id"], item["property"])
            if kind is None:
                return f"{item['id']}.{item['property']} is not read by any server callback"
            if not kind.ok(item.get("value")):
                return (f"{item['id']}.{item['property']} must be {kind.name}, got "
                        f"{str(item.get('value'))[:60]!r}")
    return None


def _text_reply(message: str, status: int) -> flask.Response:
    return flask.Response(message + "\n", status=status, mimetype="text/plain")


def install(app) -> None:
    """Add the callback-body check and the unknown-bundle handler to Dash ``app``."""
    server = app.server
    endpoint = app.config.requests_pathname_prefix + "_dash-update-component"

    @server.before_request
    def _check_callback():
        if flask.request.method != "POST" or flask.request.path != endpoint:
            return None
        problem = callback_problem(flask.request.get_json(silent=True), app.callback_map)
        return _text_reply(f"400 Bad Request: {problem}", 400) if problem else None

    @server.errorhandler(DependencyException)
    @server.errorhandler(InvalidResourceError)
    def _unknown_bundle(_exc):
        return _text_reply("404 Not Found: no such script bundle", 404)
