"""Circuits between heads (issue 13): how heads talk to each other and why a head attends
where it does. Each analysis is a pure function over a model and a batch (or, for
composition, the weights alone) returning a result with a tidy table.

Why a package beside ``patching`` and not files in ``analyses/``: the ``analyses`` are
reductions of a trace (patterns, statistics) to per-head tables; circuit analyses need the
model's internals during a forward (every layer's residual, the norms' inputs, queries and
keys) and its weights, as the patching engine does. They use ``Model``'s public accessors
(stacks, out_proj, W_Q..W_O, final norm, unembedding, the norm in front of each attention,
post-norms) and the family record (rotary); ``_parts.py`` reads them and refuses what the
decompositions do not cover. No family name appears in this package.

    dla.dla(model, batch, metric)            direct logit attribution per component and per key position
    direct_patch.dla_patch(...)              ``workbench patch --method dla``: direct-path effect of a patch
    path_patching.path_patching(...)         sender -> receiver effects through q, k or v (Wang et al. 2022)
    qk_attribution.qk_attribution(...)       a head's scores as [query component, key component] contributions
    composition.composition(model)           Q/K/V composition scores of every head pair, weights only
    decompose.components(clean, site, pos)   the residual stream as a sum of upstream components

Shared machinery: ``_capture.record`` (one recorded forward: residuals, z, q/k/v, norm
inputs) and ``_capture.NormLin`` (a norm linearised at the clean run).
"""
from .composition import composition
from .decompose import Component, components
from .direct_patch import dla_patch
from .dla import DLAResult, Readout, dla, readout
from .path_patching import PathResult, path_patching, top_receivers
from .qk_attribution import QKResult, qk_attribution

__all__ = ["Component", "DLAResult", "Readout", "components", "composition", "dla", "dla_patch", "path_patching",
           "PathResult", "QKResult", "qk_attribution", "readout", "top_receivers"]
