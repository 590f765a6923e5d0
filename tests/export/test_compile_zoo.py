"""torch.compile(fullgraph=True) forward + backward over every zoo mixer and every TiC model.

Graph capture is what fullgraph tests (a graph break raises), so these use the ``aot_eager`` backend:
dynamo + AOTAutograd trace forward and backward without a C++ compile, which keeps them bounded on 2
cores. The compiled output and the gradients of every parameter (and of the input, where it has one) are
compared with eager ones. A mixer that cannot compile whole goes in ``CANNOT_FULLGRAPH`` with the reason
and the error dynamo raises; the test checks that compiling it still raises exactly that, so the list
stays true.
"""

from __future__ import annotations

import pytest
import torch

import msaconv
from msaconv.layers.registry import TOKEN_MIXERS, _load_all, get_token_mixer

_load_all()

# name -> (why torch.compile(fullgraph=True) cannot capture it, the exception, a regex its message matches)
CANNOT_FULLGRAPH: dict[str, tuple[str, type[Exception], str]] = {
    "kdgqa": ("its key-norm allocation update branches on a tensor value (float(hi - lo) > 0 in "
              "_update_allocation), a data-dependent guard dynamo cannot trace",
              torch._dynamo.exc.UserError,
              r"Could not guard on data-dependent expression[\s\S]*float\(hi - lo\) > 0[\s\S]*_update_allocation"),
}
# options a mixer needs at dim 32 on an 8x8 map (defaults elsewhere)
OPTIONS: dict[str, dict] = {"moh": {"num_heads": 2}, "spectral": {"size": (8, 8)}}
# float32: the compiled graph runs the same aten ops, but AOTAutograd may order or fuse their reductions
# differently, so outputs and gradients agree to rounding, not bitwise
OUT_TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)


def _fwd_bwd(fn, module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """Output and gradients (every parameter, and ``x`` as ``'<input>'`` if it requires grad) of a
    weighted sum of the output: random weights, so a gradient that lands on the wrong element shows."""
    module.zero_grad(set_to_none=True)
    x.grad = None
    out = fn(x)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    (out.float() * w).sum().backward()
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in module.named_parameters()}
    if x.requires_grad:
        grads["<input>"] = x.grad.detach().clone()
    return out.detach(), grads


def _compile_fwd_bwd(module: torch.nn.Module, x: torch.Tensor) -> None:
    torch._dynamo.reset()
    ref, ref_grads = _fwd_bwd(module, module, x)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out, grads = _fwd_bwd(compiled, module, x)
    torch.testing.assert_close(out, ref, **OUT_TOL)
    assert grads.keys() == ref_grads.keys()
    assert any(g is not None for g in ref_grads.values())
    for name, g in grads.items():
        want = ref_grads[name]
        assert (g is None) == (want is None), f"{name}: eager grad {want is not None}, compiled {g is not None}"
        if want is not None:
            torch.testing.assert_close(g, want, **GRAD_TOL, msg=lambda m, name=name: f"grad of {name}: {m}")


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("name", sorted(TOKEN_MIXERS))
def test_compile_fullgraph_mixer(name):
    torch.manual_seed(0)
    mixer = get_token_mixer(name, 32, **OPTIONS.get(name, {})).eval()  # eval: no dropout randomness between eager and compiled
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    if name in CANNOT_FULLGRAPH:
        _, error, message = CANNOT_FULLGRAPH[name]
        mixer(x)  # eager works: only the capture fails
        torch._dynamo.reset()
        with pytest.raises(error, match=message):
            torch.compile(mixer, fullgraph=True, backend="aot_eager")(x)
        return
    _compile_fwd_bwd(mixer, x)


@pytest.mark.slow
@pytest.mark.compile
# tic_small and tic_base pass too (52 s and 34 s here, measured by hand); left out to bound CI time
@pytest.mark.parametrize("name", ["tic_micro", "tic_tiny"])
def test_compile_fullgraph_tic(name):
    torch.manual_seed(0)
    model = msaconv.create_model(name).eval()
    _compile_fwd_bwd(model, torch.randn(1, 3, 32, 32))
