"""torch.compile(fullgraph=True) forward+backward, torch.export with dynamic H/W, and FLOP counting."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import msaconv
from msaconv.export import export_program
from msaconv.ops import msa_conv2d


@pytest.mark.slow
@pytest.mark.compile
def test_compile_fullgraph_forward_backward_tic_nano():
    torch.manual_seed(0)
    model = msaconv.create_model("tic_nano")
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for p, g in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_torch_export_tic_nano_dynamic_shapes():
    model = msaconv.create_model("tic_nano").eval()
    ep = export_program(model, torch.randn(2, 3, 32, 32), dynamic=True)
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "msaconv.msa_conv2d.default" in ops  # one node per call
    shape_in = ep.graph_signature.user_inputs[0]
    x_meta = next(n for n in ep.graph.nodes if n.name == shape_in).meta["val"]
    assert all(not isinstance(s, int) for s in (x_meta.shape[0], x_meta.shape[2], x_meta.shape[3]))
    gm = ep.module()
    for shape in [(1, 3, 32, 32), (3, 3, 28, 30)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride,extra", [(1, 0), (2, 3)])
def test_flop_counter_counts_one_msa_conv2d_call(stride, extra):
    B, h, H, W, D, k = 2, 3, 9, 7, 8, 5
    q, k_, v = (torch.randn(B, h, H, W, D) for _ in range(3))
    ek = ev = None
    if extra:
        ek, ev = torch.randn(B, h, extra, D), torch.randn(B, h, extra, D)
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    with FlopCounterMode(display=False) as fc:
        msa_conv2d(q, k_, v, k, stride=stride, extra_k=ek, extra_v=ev)
    # q.k (2 flops per multiply-add) and a.v over the K + M keys of each of the B*heads*P queries
    expected = 4 * B * h * Ho * Wo * (k * k + extra) * D
    assert fc.get_total_flops() == expected
    counts = fc.get_flop_counts()["Global"]
    assert counts[torch.ops.msaconv.msa_conv2d] == expected
