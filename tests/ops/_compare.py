"""Helpers to run a backend on a case and compare it to the reference (forward and every gradient)."""

from __future__ import annotations

import torch

from msaconv.ops import msa_conv2d

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def run(case, backend, dtype=torch.float64, layout="bhwd", grads=True, dropout_p=0.0, seed=None):
    """Output and gradients of (q, k, v, extra_k, extra_v) under a fixed random upstream gradient."""
    q, k, v, ek, ev = case.tensors(dtype, requires_grad=grads, layout=layout)
    if seed is not None:
        torch.manual_seed(seed)
    out = msa_conv2d(q, k, v, extra_k=ek, extra_v=ev, backend=backend, layout=layout, dropout_p=dropout_p,
                     **case.kwargs())
    if not grads:
        return out.detach(), []
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(case.seed + 1), dtype=torch.float64).to(dtype)
    inputs = [t for t in (q, k, v, ek, ev) if t is not None]
    return out.detach(), list(torch.autograd.grad(out, inputs, g))


def assert_close(name, got, want, tol):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    # Inputs and upstream gradients are N(0, 1); a gradient that is exactly zero in exact arithmetic (all
    # slots reading one key) is judged on that O(0.1) scale rather than on its own rounding noise.
    scale = want.double().abs().max().clamp_min(0.1)
    err = (got.double() - want.double()).abs().max()
    assert err <= tol * scale, f"{name}: max error {err:.3e} > {tol:.0e} x scale {scale:.3e}"


def compare(case, backend, dtype, layout="bhwd", grads=True, ref_dtype=None, tol=None, **kw):
    ref_dtype = ref_dtype or (torch.float64 if dtype in (torch.bfloat16, torch.float16) else dtype)
    tol = TOL[dtype] if tol is None else tol
    want, want_g = run(case, "reference", ref_dtype, layout, grads, **kw)
    got, got_g = run(case, backend, dtype, layout, grads, **kw)
    assert_close(f"{case.id} {backend} out", got, want, tol)
    for name, a, b in zip(("dq", "dk", "dv", "d_extra_k", "d_extra_v"), got_g, want_g):
        assert_close(f"{case.id} {backend} {name}", a, b, tol)
