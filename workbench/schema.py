"""The run-folder schema, in one torch-free place: what every writer (``workbench run``,
``patch``, ``prune``, ``circuit``), the dashboard (``workbench.app``), ``open_run`` and
``workbench report`` agree on. It imports neither torch nor transformers.

Layout of a run folder (``schema_version`` 1)::

    meta.json            json object; JSON Schema: ``workbench/meta.schema.json`` (``meta_json_schema()``)
    heads.parquet        one row per head, keys HEAD_KEYS = stream, layer, head
    <table>.parquet      extra tables (e.g. ``prune_curve``, ``flow``, ``dla_components``)
    <stem>.safetensors   tensors; keys are "/"-joined, e.g. ``pattern/<stream>/<layer>/<input>``

Column conventions of ``heads.parquet``:

- ``stream`` (str, one of STREAMS or a family-specific name), ``layer`` (int, 0-based within the
  stream), ``head`` (int, 0-based query head); no two rows share all three.
- Every other column is ``"<analysis>.<metric>"`` (``entropy.mean_nats``, ``patch.effect``,
  ``taxonomy.class``): the text before the first dot names the analysis whose parameters are
  ``meta.json["analyses"][<analysis>]``. Floats are float64 with NaN where a metric does not
  apply; flags are bool; classes are str. Units are in the metric name (``_nats``, ``_s``).

Tensor keys: ``pattern/<stream>/<layer>/<input>`` is ``[head, query, key]`` float16 of input
``<input>`` (``meta["inputs"]["items"][i]["index"]``) cropped to its real tokens / audio frames;
``mel/<input>`` ``[mel bin, mel frame]`` at MEL_FRAMES_PER_SECOND; ``audio/<input>``
``[sample]`` at SAMPLE_RATE.

Versions: ``schema_version`` is an integer (or a ``"major.minor"`` string); readers read every
major version from MIN_SCHEMA_VERSION to SCHEMA_VERSION and refuse a newer one with one line.
"""
from __future__ import annotations

import json
import platform
import re
import subprocess
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError

SCHEMA_VERSION = 1            # major version written by this workbench
MIN_SCHEMA_VERSION = 1        # oldest major version the readers still read
HEAD_KEYS = ["stream", "layer", "head"]   # a list: pandas treats a tuple as one column label
STREAMS = ("self", "encoder", "decoder", "cross")   # display order; self = decoder-only / encoder-only
META_FILE, HEADS_FILE = "meta.json", "heads.parquet"

SAMPLE_RATE = 16_000                  # Hz, every audio input (Whisper's feature extractor)
WHISPER_FRAMES_PER_SECOND = 50        # encoder frames per second of audio (after the conv stem; 20 ms)
WHISPER_SAMPLES_PER_FRAME = SAMPLE_RATE // WHISPER_FRAMES_PER_SECOND   # 320
MEL_FRAMES_PER_SECOND = 100           # log-mel frames per second (10 ms hop)

PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "pyarrow", "gguf")


def pattern_key(stream: str, layer: int, index: int) -> str:
    """Key of one saved pattern ``[head, query, key]``: ``pattern/<stream>/<layer>/<index>``."""
    return f"pattern/{stream}/{int(layer)}/{int(index)}"


def analysis_of(column: str) -> str:
    """``"entropy.mean_nats"`` -> ``"entropy"`` (the analysis that wrote a metric column)."""
    return column.split(".", 1)[0]


def metric_columns(columns) -> list[str]:
    """The columns of a head table that are not HEAD_KEYS, in order."""
    return [c for c in columns if c not in HEAD_KEYS]


def schema_major(version: Any) -> int:
    """The major number of a ``schema_version`` (``1``, ``"1"``, ``"1.2"`` -> 1).

    Raises:
        UserError: not a non-negative integer or ``"major.minor"`` string."""
    if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
        return version
    if isinstance(version, str) and re.fullmatch(r"\d+(\.\d+)?", version):
        return int(version.split(".")[0])
    raise UserError(f"schema_version {version!r} is not a version number; the run folder is damaged")


def check_schema_version(meta: Mapping[str, Any], where: str = "this run") -> int:
    """The major schema version of ``meta`` when this workbench can read it.

    Raises:
        UserError (one line): missing, malformed, older than MIN_SCHEMA_VERSION or newer than
        SCHEMA_VERSION (then: upgrade workbench)."""
    if "schema_version" not in meta:
        raise UserError(f"{where}: meta.json has no schema_version; it was not written by workbench")
    major = schema_major(meta["schema_version"])
    if major > SCHEMA_VERSION:
        raise UserError(f"{where} has schema_version {meta['schema_version']}, newer than the {SCHEMA_VERSION} "
                        f"this workbench reads; upgrade workbench to read it")
    if major < MIN_SCHEMA_VERSION:
        raise UserError(f"{where} has schema_version {meta['schema_version']}, older than the oldest this "
                        f"workbench reads ({MIN_SCHEMA_VERSION}); re-create the run")
    return major


def meta_json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of ``meta.json``, shipped as ``workbench/meta.schema.json``."""
    return json.loads(resources.files(__package__).joinpath("meta.schema.json").read_text())


def model_block(model) -> dict:
    """``meta["model"]`` of a loaded ``workbench.Model`` (name, source, family, kind, device,
    dtype, device map, weights hash and format)."""
    return {"name": model.name, "source": model.source, "family": model.family.name, "kind": model.kind,
            **model.placement,
            "weights_sha256": model.meta.get("weights_sha256"), "format": model.meta.get("format")}


def base_meta(model, inputs: Mapping[str, Any], *, command: str, seed: int) -> dict:
    """The provenance every run folder's ``meta.json`` starts with: model, sites, inputs (with
    ``kind`` text/audio first), package versions, git commit, command, seed, creation time (UTC).
    Writers add ``analyses`` (``{analysis: parameters}``) and their own keys; ``save_run`` adds
    ``schema_version``."""
    return {
        "model": model_block(model),
        "sites": [vars(s) for s in model.sites],
        "inputs": {"kind": "audio" if model.is_audio else "text", **inputs},
        "packages": environment(), "git_commit": git_commit(), "command": command, "seed": seed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def environment() -> dict:
    """Versions of the packages a run depends on (None when not installed) and of Python."""
    versions = {}
    for p in (*PACKAGES, "workbench"):
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    versions["python"] = platform.python_version()
    return versions


def git_commit() -> str | None:
    """The workbench checkout's commit, or None outside a git checkout."""
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


__all__ = ["HEAD_KEYS", "HEADS_FILE", "META_FILE", "MEL_FRAMES_PER_SECOND", "MIN_SCHEMA_VERSION", "PACKAGES",
           "SAMPLE_RATE", "SCHEMA_VERSION", "STREAMS", "WHISPER_FRAMES_PER_SECOND", "WHISPER_SAMPLES_PER_FRAME",
           "analysis_of", "base_meta", "check_schema_version", "environment", "git_commit", "meta_json_schema",
           "metric_columns", "model_block", "pattern_key", "schema_major"]
