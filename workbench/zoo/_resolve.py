"""Check a model name before loading it: built-in installed, local folder complete, hub id reachable.

``check_source`` runs in a fraction of a second and raises ``UserError`` (one line) for
what ``load`` would otherwise fail on slowly or with a traceback: an unknown name, a
built-in whose weights package is missing, a local folder that is not a HF model (it says
what is missing: config.json, weights, tokenizer), an architecture without an adapter, a
hub id that is neither in the local hub cache nor reachable (offline: ``HF_HUB_OFFLINE``
set, or no connection within a few seconds), instead of transformers' 30 s of retries.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import UserError
from .builtin import BUILTINS, installed, require

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
_PROBE_S = 3.0


def check_source(name: str, *, need_tokenizer: bool = False) -> str:
    """``"builtin"``, ``"folder"`` or ``"hub"`` if ``name`` can be loaded, else UserError.

    Args:
        name: a built-in name, a local HF folder or a hub id ``owner/name``.
        need_tokenizer: a local folder of a text model must hold a tokenizer.

    Raises:
        UserError: see the module docstring.
    """
    if name in BUILTINS:
        if not installed(name):
            try:
                require(name)
            except ModuleNotFoundError as exc:
                raise UserError(str(exc)) from None
        return "builtin"
    p = Path(name).expanduser()
    if p.exists():
        check_folder(p, need_tokenizer=need_tokenizer)
        return "folder"
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise UserError(f"unknown model {name!r}: not a built-in ({', '.join(BUILTINS)}), not an existing folder "
                        "and not a hub id (owner/name); see `workbench models`")
    check_hub(name)
    return "hub"


def check_folder(p: Path, *, need_tokenizer: bool = False) -> None:
    """UserError unless ``p`` is a HF model folder with a supported architecture."""
    from ..adapters import UnsupportedModelError, family_for

    if not p.is_dir():
        raise UserError(f"model {p} is a file, not a HF model folder (config.json and weights); give its folder")
    cfg_path = p / "config.json"
    has_weights = any(next(p.glob(g), None) is not None for g in _WEIGHTS)
    has_tok = any((p / f).is_file() for f in _TOKENIZER)
    missing = [what for what, ok in (("config.json", cfg_path.is_file()), ("weights (*.safetensors or *.bin)", has_weights),
                                     ("tokenizer (tokenizer.json, vocab.txt ...)", has_tok)) if not ok]
    if not cfg_path.is_file() or not has_weights:
        raise UserError(f"{p} is not a HF model folder: no {', no '.join(missing)}")
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{cfg_path} is not a readable json config") from None
    if not model_type:
        raise UserError(f"{cfg_path} has no model_type; it does not look like a HF config")
    try:
        fam = family_for(model_type)
    except UnsupportedModelError as exc:
        raise UserError(str(exc)) from None
    if need_tokenizer and not has_tok and not fam.kind.startswith("speech"):
        raise UserError(f"{p} has no tokenizer (tokenizer.json, vocab.txt ...); text prompts need one")


def _hub_cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = _PROBE_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds."""
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def check_hub(repo: str) -> None:
    """UserError if hub id ``repo`` is not cached and cannot be downloaded now."""
    if _hub_cached(repo):
        return
    if _offline():
        raise UserError(f"model {repo!r} is not in the local hub cache and HF_HUB_OFFLINE is set; download it "
                        "where there is network, or give a local folder or a built-in name (`workbench models`)")
    if not _hub_reachable():
        raise UserError(f"model {repo!r} is not in the local hub cache and the hub cannot be reached "
                        "(no network?); give a local folder or a built-in name (`workbench models`)")


def load_checked(name: str, *, quiet: bool = True, need_tokenizer: bool = False, device=None, dtype=None):
    """``check_source`` then ``zoo.load`` (on ``device`` in ``dtype``); a model that does not
    load for a reason the user can act on (unsupported architecture, unknown name) is a UserError."""
    from ..adapters import UnsupportedModelError
    from . import load

    check_source(name, need_tokenizer=need_tokenizer)
    try:
        return load(name, quiet=quiet, device=device, dtype=dtype)
    except UnsupportedModelError as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:
        if str(exc).startswith(("unknown model", "cannot load model")):
            raise UserError(str(exc)) from None
        raise


__all__ = ["check_folder", "check_hub", "check_source", "load_checked"]
