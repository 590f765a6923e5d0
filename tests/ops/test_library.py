"""msa_conv2d as a torch.library custom op: opcheck, fake tensors, torch.compile(fullgraph=True), FLOP count."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from msaconv.layers.msa_conv import MSAttention2d
from msaconv.ops import msa_conv2d
from msaconv.ops import library  # noqa: F401  (registers the ops)


def _args(layout="bhdhw", extra=0, dtype=torch.float64, stride=(1, 1), backend=""):
    g = torch.Generator().manual_seed(0)
    shape = (2, 2, 3, 7, 9) if layout == "bhdhw" else (2, 2, 7, 9, 3)
    q, k, v = (torch.randn(shape, generator=g, dtype=dtype, requires_grad=True) for _ in range(3))
    ek = ev = None
    if extra:
        ek, ev = (torch.randn(2, 2, extra, 3, generator=g, dtype=dtype, requires_grad=True) for _ in range(2))
    return (q, k, v, ek, ev, [3, 3], [1, 2], list(stride), "zeros", 0.5, layout, backend)


@pytest.mark.parametrize("backend", ["", "portable"])
@pytest.mark.parametrize("layout,extra,stride", [("bhdhw", 0, (1, 1)), ("bhwd", 2, (2, 1))])
def test_opcheck(layout, extra, stride, backend):
    """Schema, fake (meta) implementation, autograd registration and aliasing, checked by torch itself."""
    torch.library.opcheck(torch.ops.msaconv.msa_conv2d.default, _args(layout, extra, stride=stride, backend=backend))


def test_fake_tensor_shapes_match_the_real_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = _args("bhwd", 2, stride=(2, 3))
    real_out, real_stats = torch.ops.msaconv.msa_conv2d(*args)
    with FakeTensorMode() as mode:
        fargs = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake_out, fake_stats = torch.ops.msaconv.msa_conv2d(*fargs)
    assert fake_out.shape == real_out.shape and fake_out.stride() == real_out.stride()
    assert fake_stats.shape == real_stats.shape and fake_stats.dtype == real_stats.dtype


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(16)
        self.mix = MSAttention2d(16, num_heads=2, kernel_size=3, dilation=(1, 2))

    def forward(self, x):
        return x + self.mix(self.norm(x))


@pytest.mark.compile
@pytest.mark.parametrize("compile_backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_forward_and_backward_match_eager(compile_backend):
    torch.manual_seed(0)
    net = _Net().eval()
    x = torch.randn(2, 16, 9, 11, requires_grad=True)
    ref = net(x)
    ref.square().sum().backward()
    ref_grads = [p.grad.clone() for p in net.parameters()] + [x.grad.clone()]
    net.zero_grad()
    x.grad = None
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True, backend=compile_backend)  # fullgraph: a graph break raises
    out = compiled(x)
    out.square().sum().backward()
    grads = [p.grad for p in net.parameters()] + [x.grad]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.compile
def test_compiled_graph_holds_the_op_as_one_node():
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()

    def f(q, k, v):
        return msa_conv2d(q, k, v, 5, dilation=2, layout="bhdhw").sum()

    q, k, v = (torch.randn(1, 2, 4, 10, 12, requires_grad=True) for _ in range(3))
    torch.compile(f, fullgraph=True, backend=counter)(q, k, v).backward()
    assert counter.frame_count == 1
    targets = [str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert any("msaconv.msa_conv2d" in t for t in targets), targets


@pytest.mark.parametrize("extra", [0, 4])
def test_flop_counter_counts_the_formula(extra):
    """4*B*heads*P*(K+M)*head_dim for the forward (q.k and a.v), twice that for the backward."""
    B, h, D, H, W, kk = 2, 3, 8, 10, 12, 5
    q, k, v = (torch.randn(B, h, D, H, W, requires_grad=True) for _ in range(3))
    ek = ev = None
    if extra:
        ek, ev = (torch.randn(B, h, extra, D, requires_grad=True) for _ in range(2))
    with FlopCounterMode(display=False) as counter:
        out = msa_conv2d(q, k, v, kk, stride=2, extra_k=ek, extra_v=ev, layout="bhdhw")
    P = ((H - 1) // 2 + 1) * ((W - 1) // 2 + 1)
    fwd = 4 * B * h * P * (kk * kk + extra) * D
    assert counter.get_total_flops() == fwd
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2 * fwd


def test_flop_counter_sees_the_op_inside_a_module():
    net = MSAttention2d(8, num_heads=2, kernel_size=3)
    x = torch.randn(1, 8, 6, 5)
    with FlopCounterMode(display=False) as counter:
        net(x)
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.msaconv.msa_conv2d] == 4 * 1 * 2 * 30 * 9 * 4


def test_named_autograd_only_backend_runs_outside_the_op():
    """'reference' has no explicit backward: msa_conv2d calls it directly (autograd records it)."""
    q, k, v = (torch.randn(1, 1, 5, 6, 2, requires_grad=True) for _ in range(3))
    out = msa_conv2d(q, k, v, 3, backend="reference")
    assert "msaconv_msa_conv2d" not in type(out.grad_fn).__name__
    assert "msaconv_msa_conv2d" in type(msa_conv2d(q, k, v, 3, backend="portable").grad_fn).__name__
    out.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_unknown_backend_is_a_value_error_before_the_op():
    q = torch.randn(1, 1, 5, 6, 2)
    with pytest.raises(ValueError, match="unknown backend 'cpux'"):
        msa_conv2d(q, q, q, 3, backend="cpux")
