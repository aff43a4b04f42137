"""head_patch: Triton kernel and reference against a per-variant loop written here (float64:
copy the input's z, overwrite one head, multiply by the whole projection), on odd shapes,
fp32 and bf16, masks of patched positions, both modes. Fresh random inputs each run; the
kernel's output is poisoned (NaN) before each run."""
from __future__ import annotations

import random

import pytest
import torch

from workbench.cuda import head_patch
from workbench.errors import UserError

HAS_TRITON = __import__("importlib.util").util.find_spec("triton") is not None
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch"] + (["triton"] if HAS_TRITON else [])


def loop_reference(z_base, z_new, rows, heads, w_full, bias, mask):
    """float64, one variant at a time: [V, T, d_model]."""
    outs = []
    for v in range(len(rows)):
        x = z_base[rows[v]].double().clone()                     # [T, H, d]
        for t in range(x.shape[0]):
            if mask is None or mask[v, t]:
                x[t, heads[v]] = z_new[v, t].double()
        y = x.reshape(x.shape[0], -1) @ w_full.double()
        outs.append(y if bias is None else y + bias.double())
    return torch.stack(outs)


CASES = {"T37_d80_bias_mask": dict(n=2, t=37, h=3, d=80, dm=48, v=5, bias=True, mask=True),
         "T1_d32": dict(n=1, t=1, h=4, d=32, dm=40, v=4, bias=False, mask=False),
         "T20_d64_mask": dict(n=3, t=20, h=2, d=64, dm=70, v=6, bias=True, mask=True)}


@pytest.fixture
def poisoned(monkeypatch):
    if HAS_TRITON:
        from workbench.cuda.head_patch import triton as kernel

        monkeypatch.setattr(kernel, "_alloc", lambda shape, dtype, device: torch.full(shape, float("nan"),
                                                                                      dtype=dtype, device=device))


RUNS = [(n, d, m, b) for n in CASES for d in (torch.float32, torch.bfloat16) for m in ("z", "rank")
        for b in BACKENDS if b == "torch" or d == torch.float32 or n == "T37_d80_bias_mask"]


@pytest.mark.parametrize("name,dtype,mode,backend", RUNS,
                         ids=[f"{n}-{str(d)[6:]}-{m}-{b}" for n, d, m, b in RUNS])
def test_head_patch_matches_a_per_variant_loop(name, dtype, mode, backend, poisoned):
    c = CASES[name]
    seed = random.randrange(2**31)
    g = torch.Generator().manual_seed(seed)
    z_base = torch.randn(c["n"], c["t"], c["h"], c["d"], generator=g).to(dtype)
    z_new = torch.randn(c["v"], c["t"], c["d"], generator=g).to(dtype)
    rows = torch.randint(0, c["n"], (c["v"],), generator=g)
    heads = torch.randint(0, c["h"], (c["v"],), generator=g)
    w_full = (torch.randn(c["h"] * c["d"], c["dm"], generator=g) / c["d"] ** 0.5).to(dtype)
    bias = torch.randn(c["dm"], generator=g).to(dtype) if c["bias"] else None
    mask = torch.rand(c["v"], c["t"], generator=g) < 0.5 if c["mask"] else None
    want = loop_reference(z_base, z_new, rows, heads, w_full, bias, mask)
    base_out = None
    if mode == "rank":
        base_out = (z_base.double().reshape(c["n"], c["t"], -1) @ w_full.double()
                    + (0 if bias is None else bias.double())).to(dtype)
    dev = lambda x: None if x is None else x.to(DEVICE)  # noqa: E731
    got = head_patch(dev(z_base), dev(z_new), dev(rows), dev(heads), dev(w_full.reshape(c["h"], c["d"], c["dm"])),
                     dev(bias) if mode == "z" else None, mask=dev(mask), base_out=dev(base_out), mode=mode,
                     backend=backend)
    assert got.shape == want.shape and got.dtype == dtype
    assert not torch.isnan(got).any(), f"unwritten elements seed={seed}"
    tol = 1e-5 if dtype == torch.float32 else 0.01           # bf16: the output itself is rounded (~0.4% of |y|)
    err = (got.double().cpu() - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"{backend} {mode} max error {err:.3g} seed={seed}"


def test_reference_z_mode_is_f_linear_of_the_spliced_input():
    """Mode "z"'s reference is exactly F.linear on concat z' (what the naive patching loop runs)."""
    z_base, z_new = torch.randn(2, 5, 3, 8), torch.randn(4, 5, 8)
    rows, heads = torch.tensor([0, 1, 1, 0]), torch.tensor([2, 0, 1, 2])
    lin = torch.nn.Linear(24, 16)
    x = z_base[rows].clone()
    x[torch.arange(4), :, heads] = z_new
    want = lin(x.reshape(4, 5, 24))
    got = head_patch(z_base, z_new, rows, heads, lin.weight.detach().t().reshape(3, 8, 16), lin.bias.detach(),
                     backend="torch")
    assert torch.equal(got, want.detach())


def test_bad_arguments_are_user_errors():
    z = torch.zeros(2, 3, 4, 8)
    w = torch.zeros(4, 8, 16)
    with pytest.raises(UserError, match="shapes do not fit"):
        head_patch(z, torch.zeros(1, 3, 7), torch.tensor([0]), torch.tensor([0]), w)
    with pytest.raises(UserError, match="heads in 0..3"):
        head_patch(z, torch.zeros(1, 3, 8), torch.tensor([0]), torch.tensor([4]), w)
    with pytest.raises(UserError, match="needs base_out"):
        head_patch(z, torch.zeros(1, 3, 8), torch.tensor([0]), torch.tensor([0]), w, mode="rank")


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize("family,per_position", [("llama", False), ("bert", False), ("gpt2", True)])
def test_fast_patching_through_the_kernel_equals_naive(family, per_position, monkeypatch):
    """The fast exact path with the Triton head_patch (WORKBENCH_BACKEND=triton; GQA, a biased
    encoder projection, GPT-2's Conv1D projection per position) equals the naive loop."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from test_patching import TOL, metric_for, pair, sharpened

    from workbench.cuda import _backend
    from workbench.patching import patch

    m = sharpened(family)
    clean, corrupt = pair(family, m)
    met = metric_for(family, m, clean)
    heads = [h for h in m.heads() if h.head in (0, 3) and h.layer == 1]      # both GQA groups, last layer
    kw = dict(corrupt=corrupt, heads=heads, per_position=per_position)
    naive = patch(m, clean, met, method="naive", **kw)
    monkeypatch.setenv(_backend.ENV, "triton")
    monkeypatch.setattr(_backend, "_USED", {})
    fast = patch(m, clean, met, method="exact", max_rows=16, **kw)
    assert _backend.used()["head_patch"] == ["triton"]
    assert naive.per_input.abs().max() > 1e-4
    torch.testing.assert_close(fast.per_input, naive.per_input, atol=TOL, rtol=0)
    for key in naive.per_position or {}:
        torch.testing.assert_close(fast.per_position[key], naive.per_position[key], atol=TOL, rtol=0)
