"""Attribution patching (AtP) and AtP*: all heads from one forward and one backward.

AtP (Nanda 2023): the effect of replacing z_h by z'_h is linearised at the base run,

    c_hat(h) = sum_pos (z'_h - z_h) . dM/dz_h            (per input, then averaged)

where M is the metric and dM/dz_h is the gradient with respect to z as the output
projection reads it (a ``Z(grad=True)`` capture).

AtP* (Kramár et al. 2024, "AtP*: An efficient and scalable method for localizing LLM
behaviour to components") fixes two failure modes of AtP:

- QK fix (attention saturation). AtP linearises the attention softmax when the patched
  node feeds a query or a key; AtP* recomputes the softmax exactly for the patched
  query/key logits and linearises only from the attention probabilities on. Here the
  node is the head's output z_h = A(q', k') v', and the patched value z'_h is taken from
  the source run, i.e. the head's softmax is evaluated exactly for its patched queries and
  keys (all of them at once, with the value change and the query/key interaction kept);
  nothing upstream of z_h is linearised. So for head-output nodes the QK fix holds by
  construction and is shared by ``atp`` and ``atp*``; what AtP* adds is:
- GradDrop (cancellation between paths). For each layer l of the model (a whole
  transformer block; Whisper: every encoder and decoder block), the gradient is recomputed
  with the backward pass through layer l's contribution to the residual stream dropped
  (the gradient reaches the layer's input only through the skip connection), and

    c_hat*(h) = E_inputs[ 1/(L-1) * sum_l |c_hat_l(h)| ]      (their eq. 11)

  a magnitude (no sign), as in the paper. One forward and L backward passes.

q, k, v nodes (``nodes.py``; a KV head's k or v for k/v). ``atp`` is the plain linear
estimate in the node, c_hat(u) = sum_pos (x'_u - x_u) . dM/dx_u with x the node as the
attention function receives it (post-rotary q, k). ``atp*`` applies the QK fix: the head's
attention is recomputed exactly with the patched node (the model's attention function on
q', k, v or q, k', v, every unit at once, ``nodes.patched_z``) and only the step from z on is
linearised, c_hat_QK(u) = sum_{h reads u} sum_pos (z'_h - z_h) . dM/dz_h; since z = A V is
linear in the pattern A this is Kramar et al.'s sum_{q,k} (A' - A) dM/dA. GradDrop is then
applied to it as for z (the absolute value of each unit's sum over its heads). For v the
QK fix changes nothing (z is linear in v: c_hat_QK = c_hat up to round-off). ``atp*`` also
returns ``atp_qk`` (QK fix without GradDrop, signed) for q/k/v nodes. Per position, ``atp``
gives the linear term of each position of the node's axis (query positions for q, key
positions for k / v). ``atp*`` per key position (k / v): z'_p is the head's z with only key /
value position p of its unit patched (``nodes.key_position_z``, one attention call per key
position, summed over every query position), c_hat_QK(u, p) = sum_{h reads u} sum_q
(z'_p,h - z_h)[q] . dM/dz_h[q]; z'_p is recomputed for each of the L + 1 gradients (memory:
one site's P x z at a time). Zero / mean denoising: the base run is the ablated one
(``node_edits``), and the estimates linearise there.
"""
from __future__ import annotations

import torch

from ..capture import Z
from . import nodes


class _GradDrop(torch.autograd.Function):
    """Identity on a layer's output; in backward, optionally routes the gradient around the layer."""

    @staticmethod
    def forward(ctx, inp, out, flag):
        ctx.flag = flag
        return out.clone()

    @staticmethod
    def backward(ctx, g):
        if ctx.flag["drop"]:
            return g, None, None
        return None, g, None


def atp_effects(model, batch, edits, z_src, metric, index: torch.Tensor, keys: list, *,
                per_position: bool = False, graddrop: bool = False, node: str = "z",
                node_edits: dict | None = None) -> dict:
    """AtP (and, with ``graddrop``, AtP*) estimates for every head (unit) of the sites ``keys``.

    Args:
        batch: base inputs (n inputs); edits: edits of the base run.
        z_src: (site key, base z [n, pos, head, d_head]) -> values patched in, same shape;
            for node q/k/v: (site key, base node [n, unit, pos, d_head]) -> the node patched in.
        metric, index: the metric and each local input's index in it.
        node: ``z`` | ``q`` | ``k`` | ``v`` (module docstring).
        node_edits: q/k/v nodes replaced in the base run (``nodes.ablated``: zero / mean
            denoising); the estimates linearise at that run.

    Returns:
        {"atp": {key: [n, unit] or [n, unit, pos]}, "atp*": {...} when ``graddrop``,
        "atp_qk": {...} when ``graddrop`` and node != z, "base_metric": [n]}.
    """
    hooks = []
    flags: list[dict] = []
    order = list(keys)
    per_key = per_position and node in ("k", "v")
    try:
        if graddrop:
            for st in model.stacks:
                for layer in st.layers:
                    flag = {"drop": False, "out": []}
                    flags.append(flag)
                    hooks.append(layer.register_forward_hook(_wrap(flag), with_kwargs=True))
        if node == "z":
            trace, calls = model.run(batch, capture=[Z(order, grad=True)], edits=edits, grad=True), {}
        else:
            trace, calls = nodes.capture(model, batch, order, edits, grad=True, capture_z=True, replace=node_edits)
    finally:
        for h in hooks:
            h.remove()
    m = metric.evaluate(trace.output, index)
    total = m.sum()
    inputs = [trace.z[k] for k in order]                          # z as the output projections read it
    deltas = []                                                    # z'_h - z_h, [n, pos, head, d_head]
    member = {}                                                    # node q/k/v: bool [unit, head] per site
    for k, z in zip(order, inputs):
        zb = z.detach()
        if node == "z":
            deltas.append(z_src(k, zb).to(zb.dtype) - zb)
            continue
        site = model.site(*k)
        u = list(range(nodes.n_units(site, node)))
        member[k] = nodes.members(site.n_heads, u, nodes.groups(site, node, u)).to(zb.device, zb.dtype)
        if graddrop and per_key:                                   # z'_p per key position, rebuilt per use
            src = z_src(k, calls[k].node(node).detach())
            deltas.append(lambda k=k, zb=zb, src=src, grp=nodes.groups(site, node, u):
                          nodes.key_position_z(calls[k], node, src, zb, grp).to(zb.dtype) - zb)
        elif graddrop:                                             # the QK fix: z' from the exact attention
            nb = calls[k].node(node).detach()
            deltas.append(nodes.patched_z(calls[k], node, z_src(k, nb)).to(zb.dtype) - zb)

    def estimate(grads, which=None) -> dict:
        out = {}
        for i, (k, d, g) in enumerate(zip(order, deltas, grads)):
            if which is not None and i not in which:
                continue
            if callable(d):                                        # per key position: [P, n, pos, head, d_head]
                d = d()
                g = torch.zeros_like(d[0]) if g is None else g.reshape(d.shape[1:])
                e = torch.einsum("pnthd,nthd->pnh", d, g)
                out[k] = torch.einsum("pnh,uh->nup", e, member[k]).float()             # [n, unit, key pos]
                continue
            e = (d * (torch.zeros_like(d) if g is None else g.reshape(d.shape))).sum(-1)   # [n, pos, head]
            if node != "z":
                e = torch.einsum("nph,uh->nup", e, member[k])                          # [n, unit, pos]
                out[k] = e.float() if per_position else e.sum(2).float()
                continue
            out[k] = e.permute(0, 2, 1).float() if per_position else e.sum(1).float()
        return out

    # GradDrop of one chain of layers (every model but an encoder-decoder) reuses the undropped
    # backward above each dropped layer: ``_chain`` below
    chain = graddrop and len(model.stacks) == 1 and all(len(f["out"]) == 1 for f in flags) and _CHAIN
    outs = [f["out"][0] for f in flags] if chain else []
    live = [o for o in outs if o.requires_grad]                    # layers below every patched site: none

    def split(grads):
        it = iter(grads[len(inputs):])
        return grads[:len(inputs)], [next(it) if o.requires_grad else None for o in outs]
    if node == "z":
        g_in, g_out = split(torch.autograd.grad(total, inputs + live, retain_graph=graddrop, allow_unused=True))
        res = {"atp": estimate(g_in)}
        undropped = res["atp"]
    else:                                                          # linear in the node itself
        xs = [calls[k].node(node) for k in order]
        gx = torch.autograd.grad(total, xs, retain_graph=True, allow_unused=True)
        lin = {}
        for k, x, g in zip(order, xs, gx):
            xb = x.detach()
            e = ((z_src(k, xb).to(xb.dtype) - xb) * (torch.zeros_like(xb) if g is None else g)).sum(-1)   # [n, U, T]
            lin[k] = e.float() if per_position else e.sum(2).float()
        res = {"atp": lin}
        if graddrop:
            g_in, g_out = split(torch.autograd.grad(total, inputs + live, retain_graph=True, allow_unused=True))
            res["atp_qk"] = undropped = estimate(g_in)
    res["base_metric"] = m.detach()
    if chain:
        layer_of = [model.stack_of(*k)[1] for k in order]
        res["atp*"] = _chain(flags, outs, g_out, inputs, layer_of, undropped, estimate)
    elif graddrop:
        acc = None
        for flag in flags:
            flag["drop"] = True
            try:
                grads = torch.autograd.grad(total, inputs, retain_graph=True, allow_unused=True)
            finally:
                flag["drop"] = False
            est = estimate(grads)
            acc = {k: v.abs() for k, v in est.items()} if acc is None else {k: acc[k] + est[k].abs() for k in acc}
        scale = 1.0 / max(1, len(flags) - 1)
        res["atp*"] = {k: v * scale for k, v in acc.items()}
    return res


_CHAIN = True          # tests switch the shortcut off to compare it with L full backward passes


def _chain(flags, outs, g_out, inputs, layer_of, undropped: dict, estimate) -> dict:
    """GradDrop over one chain of layers from L backward passes of decreasing depth.

    Dropping layer l leaves every gradient above it unchanged (the layers above read nothing
    below l except l's output), gives the nodes of layer l none, and sends dM/d(output of l),
    known from the undropped pass, to l's input through the skip connection. So the nodes
    above l keep their undropped estimate, those of l get 0, and only the layers below l are
    backpropagated: sum_l l instead of L x L layer backwards (about half), with the same
    operations on the same values as a full dropped pass."""
    keys = list(undropped)
    acc = {k: torch.zeros_like(v) for k, v in undropped.items()}
    for l, flag in enumerate(flags):
        below = [i for i, j in enumerate(layer_of) if j < l]
        for i, j in enumerate(layer_of):
            if j > l:
                acc[keys[i]] += undropped[keys[i]].abs()
        if not below or g_out[l] is None:
            continue
        flag["drop"] = True
        try:
            grads = torch.autograd.grad(outs[l], [inputs[i] for i in below], grad_outputs=g_out[l],
                                        retain_graph=True, allow_unused=True)
        finally:
            flag["drop"] = False
        full = [None] * len(inputs)
        for i, g in zip(below, grads):
            full[i] = g
        for k, v in estimate(full, which=set(below)).items():
            acc[k] += v.abs()
    scale = 1.0 / max(1, len(flags) - 1)
    return {k: v * scale for k, v in acc.items()}


def _wrap(flag):
    def hook(mod, args, kwargs, out):
        inp = args[0] if args else kwargs["hidden_states"]
        wrapped = _GradDrop.apply(inp, out[0] if isinstance(out, tuple) else out, flag)
        flag["out"].append(wrapped)
        return (wrapped, *out[1:]) if isinstance(out, tuple) else wrapped
    return hook
