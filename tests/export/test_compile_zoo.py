"""torch.compile(fullgraph=True) forward + backward over every zoo mixer and every TiC model.

Graph capture is what fullgraph tests (a graph break raises), so these use the ``aot_eager`` backend:
dynamo + AOTAutograd trace forward and backward without a C++ compile, which keeps them bounded on 2
cores. A mixer that cannot compile whole goes in ``CANNOT_FULLGRAPH`` with the reason; the test checks
that it still fails, so the list stays true.
"""

from __future__ import annotations

import pytest
import torch

import msaconv
from msaconv.layers.registry import TOKEN_MIXERS, _load_all, get_token_mixer

_load_all()

# name -> why torch.compile(fullgraph=True) cannot capture it (kept honest by the test below)
CANNOT_FULLGRAPH: dict[str, str] = {
    "kdgqa": "its key-norm allocation update branches on a tensor value (float(hi - lo) > 0 in "
             "_update_allocation), a data-dependent guard dynamo cannot trace",
}
# options a mixer needs at dim 32 on an 8x8 map (defaults elsewhere)
OPTIONS: dict[str, dict] = {"moh": {"num_heads": 2}, "spectral": {"size": (8, 8)}}


def _compile_fwd_bwd(module: torch.nn.Module, x: torch.Tensor) -> None:
    torch._dynamo.reset()
    ref = module(x)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.float().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert any(p.grad is not None for p in module.parameters()) or not list(module.parameters())


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("name", sorted(TOKEN_MIXERS))
def test_compile_fullgraph_mixer(name):
    torch.manual_seed(0)
    mixer = get_token_mixer(name, 32, **OPTIONS.get(name, {})).eval()  # eval: no dropout randomness between eager and compiled
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    if name in CANNOT_FULLGRAPH:
        with pytest.raises(Exception):
            _compile_fwd_bwd(mixer, x)
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
