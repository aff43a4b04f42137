"""The patching engine: what is patched into what, split into work units, run, assembled.

Definitions (``shared/METHODS.md``, activation patching). Effect of head h on input i:

    c_i(h) = M(model on base_i with z_h := source_h,i) - M(model on base_i)

reported per input and averaged over inputs (the table's ``patch.effect``). Direction and
ablation fix base, source and the edits active in the base run:

=========  =========  ===================================  ================================
direction  ablation   base run                             z_h patched in
=========  =========  ===================================  ================================
noising    resample   clean input                          z_h of the corrupt run
noising    zero       clean input                          0
noising    mean       clean input                          mean of z_h over the reference
                                                           inputs (default: the clean ones),
                                                           every valid position
denoising  resample   corrupt input                        z_h of the clean run
denoising  zero/mean  clean input with every head of the   z_h of the clean run (restores
                      sweep ablated (zero/mean)            one head into the ablated model)
=========  =========  ===================================  ================================

Patching is per head over all positions, or per (head, query position) with
``per_position=True``. ``node`` chooses what is patched: ``z`` (the head's output, the
table above) or the head's query, key or value input (``q``, ``k``, ``v``; ``nodes.py``:
units, GQA); for q/k/v, "z_h" above reads "the node" (every row applies; zero / mean
denoising ablates the node of every unit of the sweep), and per position a k/v unit is
(KV head, *key* position). Methods: ``exact`` (fast path, ``fast.py``), ``naive`` (one forward
per head, ``naive.py``), ``atp`` and ``atp*`` (``atp.py``, approximations).
"""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch

from .._types import Head
from ..batch import Batch
from ..capture import Ablate, Z
from .atp import atp_effects
from .fast import UPDATES, fast_effects
from . import nodes
from .naive import naive_effects
from ._inputs import check_pair, hash_inputs, same_inputs
from .result import PatchResult
from .units import Unit, UnitStore, run_units

METHODS = ("exact", "naive", "atp", "atp*")
ABLATIONS = ("zero", "mean", "resample")
DIRECTIONS = ("noising", "denoising")
_ALIASES = {"atp-star": "atp*", "atpstar": "atp*", "fast": "exact", "atp-star-verified": "atp*-verified"}


@dataclass(frozen=True)
class PatchConfig:
    """What a sweep computes. Raises ValueError for unknown values.

    Attributes:
        method: ``exact`` | ``naive`` | ``atp`` | ``atp*`` (alias ``atp-star``).
        ablation: ``zero`` | ``mean`` | ``resample``.
        direction: ``noising`` | ``denoising``.
        per_position: patch each (head, query position) separately (node k / v: key position).
        shard_size: inputs per work unit (None: all inputs in one shard).
        max_rows: patched variants per batch in the fast path (default: from ``max_tokens``).
        update: how the fast path applies a patch, ``z`` or ``rank`` (see ``fast``).
        sites_per_unit: sites per work unit of the exact method (default 1; None: every site
            of a stack of layers in one unit, so their variants share pipelined batches, which
            pays where large batches are efficient; on 2 CPU cores ~1000-token batches are
            fastest).
        max_tokens: patched variants x replayed positions per batch in the fast path.
        node: ``z`` | ``q`` | ``k`` | ``v`` (``nodes``): what is patched; k/v units are KV heads.
    """

    method: str = "exact"
    ablation: str = "resample"
    direction: str = "noising"
    per_position: bool = False
    shard_size: int | None = None
    max_rows: int | None = None
    update: str = "z"
    sites_per_unit: int | None = 1
    max_tokens: int = 1024
    node: str = "z"

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", _ALIASES.get(self.method, self.method))
        for name, val, allowed in (("method", self.method, METHODS), ("ablation", self.ablation, ABLATIONS),
                                   ("direction", self.direction, DIRECTIONS)):
            if val not in allowed:
                raise ValueError(f"unknown {name} {val!r}; use one of {', '.join(allowed)}")
        if self.shard_size is not None and self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.update not in UPDATES:
            raise ValueError(f"unknown update {self.update!r}; use one of {', '.join(UPDATES)}")
        for name in ("max_rows", "sites_per_unit", "max_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        nodes.check_node(self.node)


def by_site(heads) -> dict:
    """{site key: [head (or unit) index, ...]} of ``heads``, site keys sorted."""
    return {k: [h.head for h in heads if h.site_key == k] for k in sorted({h.site_key for h in heads})}


class Sweep:
    """A patching sweep over heads; see the module docstring for what is computed.

    Args:
        model: the wrapped ``Model``.
        clean: clean inputs (``Batch``); corrupt: the paired corrupt inputs (same shapes),
            needed for ``resample``.
        metric: a ``metrics.Metric`` over the inputs (index i = input i).
        heads: heads to patch (default: every head of every site).
        config: ``PatchConfig``.
        reference: inputs whose mean z defines ``mean`` ablation (default: ``clean``).
        prior: an earlier sweep of the same model over the same ``clean`` / ``corrupt`` /
            ``metric`` / ``reference`` objects, ablation, direction, node and shards, over a
            superset of these heads (verified AtP*: the AtP* sweep before its exact one): its
            clean and corrupt metrics, means and resample sources are reused instead of
            recomputed (one to three forwards fewer).
    """

    def __init__(self, model, clean: Batch, metric, *, corrupt: Batch | None = None, heads=None,
                 config: PatchConfig = PatchConfig(), reference: Batch | None = None, prior: "Sweep | None" = None):
        self.model, self.clean, self.corrupt, self.metric, self.cfg = model, clean, corrupt, metric, config
        self.reference = reference
        if config.ablation == "resample" and corrupt is None:
            raise ValueError("resample ablation patches in activations of a corrupt input: give corrupt inputs "
                             "(a task with pairs) or use --ablation zero|mean")
        if corrupt is not None:
            check_pair(clean, corrupt)
        if len(metric.positions()) != len(clean):
            raise ValueError(f"the metric covers {len(metric.positions())} inputs but there are {len(clean)}")
        node = config.node
        heads = nodes.units(model, node) if heads is None else sorted(set(heads))
        for h in heads:
            site = model.site(h.stream, h.layer)
            if not 0 <= h.head < nodes.n_units(site, node):
                what = "key/value heads" if node in ("k", "v") else "heads"
                raise ValueError(f"{h.name}: site {site.name} has {what} 0..{nodes.n_units(site, node) - 1} "
                                 f"(node {node!r})")
        if not heads:
            raise ValueError("no heads to patch")
        self.heads: list[Head] = heads
        self.by_key = by_site(heads)
        self.keys = list(self.by_key)
        n = len(clean)
        step = config.shard_size or n
        self.shards = [list(range(i, min(i + step, n))) for i in range(0, n, step)]
        shared = prior is not None and prior.model is model and prior.clean is clean and prior.corrupt is corrupt \
            and prior.metric is metric and prior.reference is reference and prior.shards == self.shards \
            and (prior.cfg.ablation, prior.cfg.direction, prior.cfg.node) == (config.ablation, config.direction, node) \
            and set(heads) <= set(prior.heads)
        self._sources: dict = prior._sources if shared else {}      # shard -> resample source (one shard only)
        if shared:                                                  # metric already bound to this clean run
            self.clean_metric, self.corrupt_metric = prior.clean_metric, prior.corrupt_metric
        else:
            with torch.no_grad():
                out = model.run(clean).output
                from .metrics import gather_positions, output_tensor

                metric.bind(gather_positions(output_tensor(out, metric.output), metric.positions()))
                self.clean_metric = metric.evaluate(out).float().cpu()
                self.corrupt_metric = None if corrupt is None else \
                    metric.evaluate(model.run(corrupt).output).float().cpu()
        self.means = None
        if shared and prior.means is not None:
            self.means = prior.means
        elif config.ablation == "mean" and node != "z":
            self.means = nodes.means(model, reference if reference is not None else clean, self.keys, node)
        elif config.ablation == "mean":
            self.means = model.mean_z(reference if reference is not None else clean, heads)
        # zero / mean denoising ablates every head of the sweep in the base run; after a ``prior``
        # sweep (verified AtP*), every head of that one, so effects equal the full sweep's
        self.ablated = list(prior.heads) if shared else heads
        self.edits, self.node_edits = [], None           # the base run's edits: z (Ablate) or q/k/v ablated
        if config.direction == "denoising" and config.ablation != "resample":
            if node == "z":
                self.edits = [Ablate(tuple(self.ablated), config.ablation, self.means)]
            else:
                self.node_edits = nodes.ablated(by_site(self.ablated), node, config.ablation, self.means)
        self._setup_cache: tuple[int, dict] | None = None

    # -- units -------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        if self.cfg.method in ("atp", "atp*"):
            return [Unit(s) for s in range(len(self.shards))]
        groups: list[list] = []
        if self.cfg.method == "exact":
            from ._resume import _stacks

            where = _stacks(self.model)[1]
            by_stack: dict = {}
            for k in self.keys:
                by_stack.setdefault(where[k][0], []).append(k)
            step = self.cfg.sites_per_unit
            for ks in by_stack.values():
                ks = sorted(ks, key=lambda k: (where[k][1], k))
                groups += [ks[i:i + (step or len(ks))] for i in range(0, len(ks), step or len(ks))]
        else:
            groups = [[k] for k in self.keys]
        return [Unit(s, tuple((k[0], k[1], tuple(self.by_key[k])) for k in g))
                for s in range(len(self.shards)) for g in groups]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        skip = ("max_rows", "update", "max_tokens") + (("node",) if self.cfg.node == "z" else ())
        h.update(json.dumps({"model": self.model.name, "weights": self.model.meta.get("weights_sha256"),
                             "config": {k: v for k, v in asdict(self.cfg).items() if k not in skip},
                             "metric": self.metric.describe(), "heads": [x.name for x in self.heads],
                             **({"ablated": [x.name for x in self.ablated]} if self.ablated != self.heads else {})},
                            sort_keys=True, default=str).encode())
        for b in (self.clean, self.corrupt):
            hash_inputs(h, b)
        for k, v in sorted(vars(self.metric).items()):
            if torch.is_tensor(v) and k != "ref":
                h.update(k.encode())
                h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:24]

    def store_key(self) -> str:
        """What ``UnitStore`` keys finished units by: the fingerprint, and for mean ablation over
        other ``reference`` inputs than ``clean`` a digest of those inputs (a Ray worker checks
        the means themselves, ``executors.identity``)."""
        ref = self.reference if self.cfg.ablation == "mean" else None
        if ref is None or same_inputs(ref, self.clean):
            return self.fingerprint()
        h = hashlib.sha256(self.fingerprint().encode())
        hash_inputs(h, ref)
        return f"{self.fingerprint()}-{h.hexdigest()[:12]}"

    # -- per shard ---------------------------------------------------------------------
    def _base_batch(self) -> Batch:
        if self.cfg.direction == "denoising" and self.cfg.ablation == "resample":
            return self.corrupt
        return self.clean

    def _src_batch(self) -> Batch:
        cfg = self.cfg
        return self.corrupt if (cfg.ablation == "resample" and cfg.direction == "noising") else self.clean

    def _node_source(self, idx: list[int]):
        """q/k/v patched in, as a function (site key, base node [n, U, T, d]) -> same shape
        (denoising: the clean run's node, also for zero / mean)."""
        ablation = "resample" if self.cfg.direction == "denoising" else self.cfg.ablation
        return nodes.source_fn(self.model, ablation, self.cfg.node, self.keys,
                               self._src_batch().select(idx), self.means)

    def _source(self, idx: list[int]):
        """z patched in, as a function (site key, base z) -> [n, pos, head, d_head]."""
        cfg = self.cfg
        if cfg.ablation == "resample" or cfg.direction == "denoising":
            src_batch = self._src_batch()
            with torch.no_grad():
                z = self.model.run(src_batch.select(idx), capture=[Z(self.keys)]).z
            return lambda key, zb: z[key]
        if cfg.ablation == "zero":
            return lambda key, zb: torch.zeros_like(zb)
        means = self.means

        def mean_src(key, zb):
            out = zb.clone()
            for h in self.by_key[key]:
                out[:, :, h] = means[Head(key[0], key[1], h)].to(zb.device, zb.dtype)
            return out
        return mean_src

    def setup(self, shard: int) -> dict:
        if self._setup_cache is not None and self._setup_cache[0] == shard:
            return self._setup_cache[1]
        idx = self.shards[shard]
        base = self._base_batch().select(idx)
        node = self.cfg.node
        st = {"idx": torch.tensor(idx), "base": base}
        if shard in self._sources:
            st["source"] = self._sources[shard]
        else:
            st["source"] = self._source(idx) if node == "z" else self._node_source(idx)
            if self.cfg.ablation == "resample" and len(self.shards) == 1:   # kept for a later sweep (``prior``)
                self._sources[shard] = st["source"]
        method = self.cfg.method
        if method == "exact":
            from ._resume import Resumable

            with nodes.hooked(self.model, sorted(set(self.keys) | set(self.node_edits or {})), capture=True,
                              replace=self.node_edits) if node != "z" \
                    else nullcontext() as hook:
                res = Resumable(self.model, base, self.edits, self.metric.positions()[st["idx"]], self.metric.output,
                                node_edits=self.node_edits)
            st.update(res=res, z_base=res.z, base_metric=self.metric.evaluate(res.output, st["idx"]).cpu())
            if node != "z":                 # z of every head with its unit's node patched
                st["source"] = nodes.z_source(self.model, node, hook.calls, st["source"], self.keys, self._per_key())
        elif method == "naive" and node != "z":
            with torch.no_grad():
                tr, calls = nodes.capture(self.model, base, self.keys, self.edits, replace=self.node_edits)
            base_node = {k: calls[k].node(node).detach() for k in self.keys}
            st.update(base_node=base_node, node_src={k: st["source"](k, b) for k, b in base_node.items()},
                      base_metric=self.metric.evaluate(tr.output, st["idx"]).cpu())
        elif method == "naive":
            with torch.no_grad():
                tr = self.model.run(base, capture=[Z(self.keys)], edits=self.edits)
            st.update(z_base=tr.z, base_metric=self.metric.evaluate(tr.output, st["idx"]).cpu())
        self._setup_cache = (shard, st)
        return st

    def run_unit(self, unit: Unit) -> dict:
        st = self.setup(unit.shard)
        cfg = self.cfg
        if cfg.method in ("atp", "atp*"):
            src = st["source"]
            res = atp_effects(self.model, st["base"], self.edits, src, self.metric, st["idx"], self.keys,
                              per_position=cfg.per_position, graddrop=cfg.method == "atp*", node=cfg.node,
                              node_edits=self.node_edits)
            out = {"base_metric": res["base_metric"].float().cpu()}
            for name in ("atp", "atp*", "atp_qk"):
                for key, v in res.get(name, {}).items():
                    sel = v[:, self.by_key[key]]                           # [n, heads(, pos)]
                    out[f"{name}:{key[0]}/{key[1]}"] = sel.transpose(0, 1).float().cpu().contiguous()
            return out
        out = {"base_metric": st["base_metric"].float()}
        if cfg.method == "exact":
            sites = [((s, l), list(h)) for s, l, h in unit.sites]
            src = {k: st["source"](k, st["z_base"][k]) for k, _ in sites}
            grp = {k: nodes.groups(self.model.site(*k), cfg.node, h) for k, h in sites} if cfg.node != "z" else None
            kpos = {k: self._valid(st["base"], k, src[k].shape[0]) for k, _ in sites} if self._per_key() else None
            eff = fast_effects(st["res"], sites, src, self.metric, st["idx"], st["base_metric"],
                               per_position=cfg.per_position, query_mask=st["base"].query_mask,
                               max_tokens=cfg.max_tokens, max_rows=cfg.max_rows, update=cfg.update, groups=grp,
                               key_positions=kpos)
            out.update({f"exact:{k[0]}/{k[1]}": v for k, v in eff.items()})
            return out
        for s, l, heads in unit.sites:
            key = (s, l)
            if cfg.node != "z":
                bn = st["base_node"][key]
                out[f"naive:{s}/{l}"] = nodes.naive_effects(
                    self.model, st["base"], self.edits, key, list(heads), cfg.node, st["node_src"][key],
                    bn, self.metric, st["idx"], st["base_metric"], per_position=cfg.per_position,
                    query_mask=self._valid(st["base"], key, bn.shape[2]), replace=self.node_edits)
                continue
            zb = st["z_base"][key]
            out[f"naive:{s}/{l}"] = naive_effects(
                self.model, st["base"], self.edits, key, list(heads), st["source"](key, zb), zb, self.metric,
                st["idx"], st["base_metric"], per_position=cfg.per_position, query_mask=st["base"].query_mask.get(s))
        return out

    def _per_key(self) -> bool:
        return self.cfg.per_position and self.cfg.node in ("k", "v")

    def _valid(self, batch: Batch, key, t: int) -> torch.Tensor:
        """bool [n, t]: real positions of the node's position axis at site ``key`` (``nodes.valid_positions``)."""
        m = nodes.valid_positions(batch, self.model.site(*key), self.cfg.node, t)
        return torch.ones(len(batch), t, dtype=torch.bool) if m is None else m

    # -- assemble ----------------------------------------------------------------------
    def assemble(self, results: dict, seconds: float = 0.0) -> PatchResult:
        method = self.cfg.method
        n = len(self.clean)
        names = [method] + (["atp"] if method == "atp*" else []) + \
            (["atp_qk"] if method == "atp*" and self.cfg.node != "z" else [])
        per: dict[str, torch.Tensor] = {nm: torch.full((len(self.heads), n), float("nan")) for nm in names}
        pos: dict = {}
        base_metric = torch.full((n,), float("nan"))
        row = {h: i for i, h in enumerate(self.heads)}
        for unit, res in results.items():
            idx = torch.tensor(self.shards[unit.shard])
            base_metric[idx] = res["base_metric"].float()
            for k, v in res.items():
                if k == "base_metric":
                    continue
                nm, site = k.split(":")
                stream, layer = site.split("/")
                key = (stream, int(layer))
                rows = torch.tensor([row[Head(stream, int(layer), h)] for h in self.by_key[key]])
                if v.dim() == 3:                                             # per position
                    full = pos.setdefault((nm, key), torch.zeros(len(rows), n, v.shape[2]))
                    full[:, idx] = v
                    v = v.sum(2)
                per[nm][rows[:, None], idx[None, :]] = v.float()
        return PatchResult(
            heads=self.heads, per_input=per[method], method=method, ablation=self.cfg.ablation,
            direction=self.cfg.direction, metric=self.metric.describe(), clean_metric=self.clean_metric,
            base_metric=base_metric, corrupt_metric=self.corrupt_metric,
            per_position={k: v for (nm, k), v in pos.items() if nm == method} if self.cfg.per_position else None,
            extra={nm: per[nm] for nm in names[1:]}, seconds=seconds, node=self.cfg.node)


def patch(model, clean: Batch, metric, *, corrupt: Batch | None = None, heads=None, method: str = "exact",
          ablation: str = "resample", direction: str = "noising", per_position: bool = False,
          reference: Batch | None = None, shard_size: int | None = None, max_rows: int | None = None,
          update: str = "z", sites_per_unit: int | None = 1, max_tokens: int = 1024, executor=None,
          store: str | None = None, node: str = "z") -> PatchResult:
    """Patch every head (or ``heads``) and return per-head effects; see the module docstring.

    Args:
        model: a wrapped ``Model``; clean / corrupt: paired ``Batch``es of equal shapes.
        metric: a ``metrics.Metric`` (e.g. ``LogitDiff``), one scalar per input.
        method: ``exact`` (fast path) | ``naive`` (one forward per head) | ``atp`` | ``atp*``.
        ablation: ``resample`` (needs ``corrupt``) | ``zero`` | ``mean``.
        direction: ``noising`` (patch into the clean run) | ``denoising``.
        per_position: effects per (head, query position) as well (node k / v: per (KV head,
            key position); ``PatchResult.per_position`` [unit, input, key pos]).
        shard_size: inputs per work unit; sites_per_unit: sites per unit (exact method);
        max_rows / max_tokens: variants (variants x positions) per batch in the fast path;
        update: ``z`` | ``rank``, how the fast path applies a patch (see ``fast``);
        executor: runs the units (default in-process);
        store: folder recording finished units, so a rerun skips them.
        node: ``z`` (head output) | ``q`` | ``k`` | ``v`` (the head's query / key / value input,
            post-rotary; k and v per KV head: ``nodes``); ``heads`` then lists units of that node.

    Returns:
        ``PatchResult`` (``.table()`` per-unit DataFrame, ``.tensor()`` [stream, layer, head or
        kv_head]).

    Raises:
        ValueError: unknown method/ablation/direction, resample without corrupt inputs,
            clean/corrupt pairs of different lengths, unknown heads; UserError: an unknown node
            (``nodes.check_node``).
    """
    cfg = PatchConfig(method, ablation, direction, per_position, shard_size, max_rows, update, sites_per_unit,
                      max_tokens, node)
    return run_sweep(model, clean, metric, cfg, corrupt=corrupt, heads=heads, reference=reference,
                     executor=executor, store=store)[0]


def run_sweep(model, clean: Batch, metric, cfg: PatchConfig, *, corrupt=None, heads=None, reference=None,
              executor=None, store: str | None = None, prior: Sweep | None = None) -> tuple[PatchResult, Sweep]:
    """``patch`` with a ``PatchConfig``; also returns the ``Sweep`` (a later sweep's ``prior``)."""
    t0 = time.perf_counter()
    sweep = Sweep(model, clean, metric, corrupt=corrupt, heads=heads, config=cfg, reference=reference, prior=prior)
    unit_store = UnitStore(store, sweep.store_key()) if store is not None else None
    results = run_units(sweep.run_unit, sweep.units(), executor, unit_store)
    return sweep.assemble(results, time.perf_counter() - t0), sweep
