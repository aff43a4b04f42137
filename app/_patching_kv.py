"""Key/value-head rows of a ``workbench patch --node k|v`` run (``workbench.patching.nodes``).

Such a run patches one key/value head per row: the ``head`` column of ``heads.parquet`` holds a
KV head index (``< n_kv_heads``) and ``meta.json`` says so in ``analyses.patch.node`` (``k`` or
``v``; the rows' ``patch.node`` too). Under grouped-query attention (Ainslie et al. 2023, GQA)
KV head ``k`` of a site with ``n_heads`` query and ``n_kv_heads`` key/value heads (``meta.sites``)
is read by the query heads ``k*r .. k*r + r - 1``, ``r = n_heads / n_kv_heads``; without GQA
``r = 1``. Head detail shows query heads: a KV row opens the first query head of its group, and
the detail page of such a run names the group of the head shown (``group_note``).

Plain functions over ``meta`` (untrusted JSON: a missing or inconsistent site gives ``r = 1``).
"""
from __future__ import annotations

import re

import numpy as np
from dash import dcc, html

from .view import href

KV_NODES = ("k", "v")
_HEAD_NAME = re.compile(r"^(<b>)?(\S+) L(\d+) H(\d+)\b")     # "self L3 H1" opening a hover text


def node(meta: dict | None) -> str:
    """The patched node of a patch run: ``z`` (default, also for runs that predate nodes), ``q``, ``k``, ``v``."""
    patch = ((meta or {}).get("analyses") or {}).get("patch") or {}
    return str(patch.get("node") or "z") if isinstance(patch, dict) else "z"


def is_kv(meta: dict | None) -> bool:
    """Whether the run's head rows are key/value heads (a ``k`` or ``v`` patch run)."""
    return node(meta) in KV_NODES


def _counts(meta: dict | None, stream: str, layer: int) -> tuple[int, int] | None:
    """(n_heads, n_kv_heads) of the site from ``meta.sites``; None when absent or inconsistent."""
    for s in (meta or {}).get("sites") or []:
        if isinstance(s, dict) and s.get("stream") == stream and s.get("layer") == layer:
            n, kv = s.get("n_heads"), s.get("n_kv_heads", s.get("n_heads"))
            if isinstance(n, int) and isinstance(kv, int) and 0 < kv <= n and n % kv == 0:
                return n, kv
    return None


def group_size(meta: dict | None, stream: str, layer: int) -> int:
    """``r = n_heads / n_kv_heads``: query heads per KV head (1 without GQA or when unknown)."""
    c = _counts(meta, stream, layer)
    return c[0] // c[1] if c else 1


def n_query_heads(meta: dict | None, stream: str, layer: int) -> int | None:
    """The site's query heads per ``meta.sites``; None when unknown."""
    c = _counts(meta, stream, layer)
    return c[0] if c else None


def group(meta: dict | None, stream: str, layer: int, kv_head: int) -> list[int]:
    """The query heads that read KV head ``kv_head``: ``kv_head*r .. kv_head*r + r - 1``."""
    r = group_size(meta, stream, layer)
    return list(range(kv_head * r, (kv_head + 1) * r))


def heads_text(heads: list[int]) -> str:
    """``"H3"`` or ``"H3–H5"`` for a group of consecutive query heads."""
    return f"H{heads[0]}" if len(heads) == 1 else f"H{heads[0]}–H{heads[-1]}"


def kv_name(meta: dict | None, stream: str, layer: int, kv_head: int) -> str:
    """``"self L3 KV1 (H3–H5)"``: a KV head and the query heads it feeds."""
    return f"{stream} L{layer} KV{kv_head} ({heads_text(group(meta, stream, layer, kv_head))})"


def detail_href(run_name: str, meta: dict | None, stream: str, layer: int, kv_head: int) -> str:
    """Head detail of the first query head that reads KV head ``kv_head``."""
    return href("/detail", run=run_name, stream=stream, layer=layer, head=group(meta, stream, layer, kv_head)[0])


def unit_link(run_name: str, meta: dict | None, stream: str, layer: int, head: int) -> tuple[str, str]:
    """(name, Head detail href) of a head-table row: the head itself, or for a k/v run the KV head
    (``kv_name``) and its first query head (``detail_href``)."""
    if is_kv(meta):
        return kv_name(meta, stream, layer, head), detail_href(run_name, meta, stream, layer, head)
    return f"{stream} L{layer} H{head}", href("/detail", run=run_name, stream=stream, layer=layer, head=head)


def kv_heatmap(fig, run_name: str, meta: dict | None):
    """An effect heatmap of a k/v run (``fig_grid.head_grid_figure``) relabelled in place: the head
    axis reads "KV head", each cell's hover names its query heads, and each cell's customdata is the
    Head detail href its click opens (``detail_href``; a path, where head cells hold their stream). Returns
    ``fig``."""
    for trace in fig.data:
        stream = trace.name
        layers, kvs = list(trace.y), list(trace.x)
        cells = np.empty((len(layers), len(kvs)), dtype=object)
        for i, layer in enumerate(layers):
            for j, kv in enumerate(kvs):
                cells[i, j] = detail_href(run_name, meta, stream, int(layer), int(kv))
        trace.customdata = cells
        if trace.text is not None:
            trace.text = [[rename(meta, t) for t in row] for row in trace.text]
    fig.update_xaxes(title_text="KV head (a click opens its first query head)")
    return fig


def rename(meta: dict | None, text: str) -> str:
    """``text`` with the head name it opens with (``"self L3 H1"``, as the figures write it) read as a
    KV head: ``"self L3 KV1 (H3–H5)"``."""
    return _HEAD_NAME.sub(lambda m: (m[1] or "") + kv_name(meta, m[2], int(m[3]), int(m[4])), str(text), count=1)


def kv_scatter(fig, meta: dict | None):
    """The exact-vs-approximation scatter of a k/v run with its points named as KV heads (in place)."""
    for trace in fig.data:
        if trace.text is not None and trace.mode == "markers":
            trace.text = [rename(meta, t) for t in trace.text]
    return fig


def group_note(run_name: str, meta: dict | None, stream: str, layer: int, head: int) -> html.Div:
    """Head detail's note for query head ``head`` of a k/v run: the KV head it reads and links to
    every other query head of the group."""
    r = group_size(meta, stream, layer)
    kv = head // r
    heads = group(meta, stream, layer, kv)
    links = []
    for h in heads:
        links += [" ", html.B(f"H{h}") if h == head else
                  dcc.Link(f"H{h}", href=href("/detail", run=run_name, stream=stream, layer=layer, head=h),
                           id=f"detail-kv-head-{h}")]
    return html.Div([html.B(f"Patched per KV head (node {node(meta)}): "),
                     f"query head H{head} of {stream} L{layer} reads KV head {kv}. "
                     f"KV head {kv} is shared by the query heads", *links, "; the metrics below are KV head "
                     f"{kv}'s."], id="detail-kv-note", className="msg msg-info")
