"""Generic tests over every registered token mixer (and the notable options of some).

Each case: shape at 28x28 and 27x19 (or the documented error), a gradient reaches every parameter,
state_dict round trip, float64 gradcheck on a tiny map, input and config errors, extra_repr, and a few
training steps inside a small pre-norm residual network.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msaconv.layers import get_token_mixer, list_token_mixers

DIM, HEADS = 16, 4

# small per-mixer options that keep the tests fast (and exercise the padding paths at 27x19)
FAST = {
    "halo": {"block_size": 4, "halo_size": 1},
    "glmix": {"num_slots": 16},
    "spectral": {"size": (28, 28)},
    "msa_conv": {"kernel_size": 3},
}
# extra cases beyond one per name: (id, name, options)
EXTRA = [
    ("global+head_token", "global", {"head_token": True}),
    ("halo+zeros", "halo", {"block_size": 4, "halo_size": 1, "border": "zeros"}),
    ("axial+sum", "axial", {"mode": "sum"}),
    ("hilo+alpha0", "hilo", {"alpha": 0.0}),
    ("spectral+kernel", "spectral", {"size": (28, 28), "resize": "kernel"}),
    ("spectral+bilinear", "spectral", {"size": (28, 28), "resize": "bilinear"}),
    ("moh+msa_conv", "moh", {"inner": "msa_conv", "kernel_size": 3}),
    ("kdgqa+ema", "kdgqa", {"mode": "ema", "window_size": 2}),
    ("kdgqa+diff", "kdgqa", {"mode": "diff"}),
    ("kdgqa+msa_conv", "kdgqa", {"inner": "msa_conv", "kernel_size": 3}),
    ("moh+head_token", "moh", {"head_token": True, "top_k": 2}),
    ("global_gate+sum", "global_gate", {"pooling": "sum"}),
    ("lowtention+stride1", "lowtention", {"stride": 1, "kernel_size": 3}),
    ("lowtention+fused", "lowtention", {"preset": "lowformer_fused"}),
    ("moh+all_shared", "moh", {"shared_heads": 4}),
    ("kdgqa+released_cache", "kdgqa", {"mode": "diff", "released_cache": True}),
    ("ulsam+bn_momentum", "ulsam", {"bn_momentum": 0.9}),
    ("global_gate+bias_reduction", "global_gate", {"gate_bias": False, "reduction": 1}),
]
CASES = [pytest.param(n, FAST.get(n, {}), id=n) for n in list_token_mixers()] + [
    pytest.param(n, o, id=i) for i, n, o in EXTRA
]

# (mixer, options, size) -> the documented error its docstring names
DOCUMENTED_ERRORS = {("spectral", (27, 19)): "built for 28x28 maps, got 27x19"}


def build(name, options, dim=DIM, heads=HEADS, seed=0, **kw):
    torch.manual_seed(seed)
    return get_token_mixer(name, dim, num_heads=heads, **options, **kw)


def perturb(m: nn.Module, seed: int = 1) -> None:
    """Move every parameter off its init (zero-init gates such as DANet's gamma would hide gradients)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)


def test_all_issue_names_registered():
    names = {"msa_conv", "global", "halo", "gpsa", "axial", "hilo", "channel", "shsa", "lowtention", "glmix",
             "spectral", "moh", "kdgqa", "ulsam", "sparse_gsa", "pam", "cam", "global_gate"}
    assert names <= set(list_token_mixers())


def test_unknown_name_did_you_mean():
    with pytest.raises(ValueError, match="did you mean 'halo'"):
        get_token_mixer("hallo", DIM)


@pytest.mark.parametrize("size", [(28, 28), (27, 19)], ids=["28x28", "27x19"])
@pytest.mark.parametrize("name,options", CASES)
def test_shape(name, options, size):
    m = build(name, options).eval()
    x = torch.randn(2, DIM, *size)
    err = DOCUMENTED_ERRORS.get((name, size)) if "resize" not in options else None
    if err:
        with pytest.raises(ValueError, match=err):
            m(x)
        return
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name,options", CASES)
def test_tiny_and_empty_inputs(name, options):
    """1x1, 1xW and Hx1 maps (padding paths, a window larger than the map) and an empty batch."""
    for size in [(1, 1), (1, 5), (3, 1)]:
        opts = {**options, "size": size} if name == "spectral" else options
        m = build(name, opts).eval()
        with torch.no_grad():
            y = m(torch.randn(2, DIM, *size))
        assert y.shape == (2, DIM, *size) and torch.isfinite(y).all()
    m = build(name, {**options, "size": (4, 4)} if name == "spectral" else options).eval()
    assert m(torch.randn(0, DIM, 4, 4)).shape == (0, DIM, 4, 4)


@pytest.mark.parametrize("name,options", CASES)
def test_gradient_reaches_every_parameter(name, options):
    m = build(name, {**options, **({"size": (9, 7)} if name == "spectral" else {})})
    perturb(m)
    m.train()
    x = torch.randn(2, DIM, 9, 7, requires_grad=True)
    y = m(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{name}: no gradient reached {missing}"


@pytest.mark.parametrize("name,options", CASES)
def test_state_dict_round_trip(name, options):
    a = build(name, options, seed=0)
    perturb(a, seed=3)
    b = build(name, options, seed=1)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    size = (28, 28) if name == "spectral" else (11, 7)
    x = torch.randn(1, DIM, *size)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


GRADCHECK_OPTS = {
    "halo": {"block_size": 2, "halo_size": 1},
    "glmix": {"num_slots": 4},
    "spectral": {"size": (5, 3)},
    "msa_conv": {"kernel_size": 3},
    "lowtention": {"kernel_size": 3},
}
GRADCHECK_HEADS = {"kdgqa": 4}  # kdgqa needs >= 2 key/value groups (kv_heads = num_heads // 2)


@pytest.mark.parametrize("name", list_token_mixers())
def test_gradcheck_float64(name):
    torch.manual_seed(0)
    m = get_token_mixer(name, 8, num_heads=GRADCHECK_HEADS.get(name, 2), dtype=torch.float64,
                        **GRADCHECK_OPTS.get(name, {}))
    perturb(m)
    m.eval()
    x = torch.randn(1, 8, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


@pytest.mark.parametrize("name,options", CASES)
def test_input_errors(name, options):
    m = build(name, options)
    with pytest.raises(ValueError, match=f"expected {DIM} input channels"):
        m(torch.randn(1, DIM + 1, 8, 8))
    with pytest.raises(ValueError, match=r"expected input \[B, C, H, W\]"):
        m(torch.randn(DIM, 8, 8))


@pytest.mark.parametrize("name,options", CASES)
def test_extra_repr_shows_options(name, options):
    r = repr(build(name, options))
    assert f"dim={DIM}" in r
    shown = [k for k in options if k != "inner"]  # the inner mixer shows as a child module
    assert all(f"{k}=" in r for k in shown), (r, shown)


# one bad config per mixer, with the fix-naming message
CONFIG_ERRORS = [
    ("global", dict(num_heads=3), "dim=16 is not divisible by num_heads=3"),
    ("global", dict(attn_drop=1.5), "attn_drop must be a number in"),
    ("halo", dict(block_size=0), "block_size must be an int >= 1"),
    ("halo", dict(border="reflect"), "unknown border 'reflect'"),
    ("gpsa", dict(locality_strength=-1.0), "locality_strength must be a number in"),
    ("axial", dict(mode="parallel"), "unknown mode 'parallel'"),
    ("hilo", dict(alpha=2.0), "alpha must be a number in"),
    ("hilo", dict(window_size=0), "window_size must be an int >= 1"),
    ("hilo", dict(num_heads=1), r"alpha=0.5 with num_heads=1 gives 0 Lo-Fi .* use num_heads=2"),
    ("hilo", dict(alpha=0.2), r"alpha=0.2 with num_heads=4 gives 0 Lo-Fi .* use num_heads=8"),
    ("channel", dict(num_heads=5), "not divisible by num_heads=5"),
    ("shsa", dict(partial_dim=40), "partial_dim=40 exceeds dim=16"),
    ("lowtention", dict(stride=0), "stride must be an int >= 1"),
    ("lowtention", dict(upsampler="bilinear"), "unknown upsampler 'bilinear'"),
    ("lowtention", dict(preset="b1"), "unknown preset 'b1'"),
    ("glmix", dict(num_slots=10), "num_slots=10 is not a square number"),
    ("glmix", dict(local_kernel=4), "local_kernel must be odd"),
    ("spectral", dict(size=(0, 4)), "size must be a positive int or a pair"),
    ("spectral", dict(resize="nearest"), "unknown resize 'nearest'"),
    ("moh", dict(top_k=9), "top_k=9 exceeds the 2 routed heads"),
    ("moh", dict(shared_heads=3), "shared_heads=3 leaves 1 routed head .* use shared_heads=4"),
    ("moh", dict(shared_heads=5), "shared_heads=5 exceeds num_heads=4"),
    ("moh", dict(shared_heads=4, top_k=1), "no routed head to pick"),
    ("moh", dict(inner="halo"), "is not head-structured"),
    ("moh", dict(inner="kdgqa"), "is itself a wrapper"),
    ("kdgqa", dict(kv_heads=3), "kv_heads=3 must divide the inner mixer's num_heads=4"),
    ("kdgqa", dict(mode="pgqa"), "unknown mode 'pgqa'"),
    ("kdgqa", dict(kv_heads=1), r"kv_heads=1 puts all 4 query heads in one group.* choose kv_heads from \[2, 4\]"),
    ("kdgqa", dict(num_heads=2), "kv_heads=1 puts all 2 query heads in one group"),
    ("ulsam", dict(num_heads=3), "not divisible by num_heads=3"),
    ("ulsam", dict(bn_momentum=1.5), "bn_momentum must be a number in"),
    ("sparse_gsa", dict(num_heads=6), "not divisible by num_heads=6"),
    ("pam", dict(reduction=0), "reduction must be an int >= 1"),
    ("cam", dict(), None),
    ("global_gate", dict(pooling="max"), "unknown pooling 'max'"),
    ("global_gate", dict(kernel_size=4), "kernel_size must be odd"),
    ("global_gate", dict(padding_mode="circular"), "unknown padding_mode 'circular'"),
    ("global_gate", dict(preset="dwformer"), "unknown preset 'dwformer'"),
]


@pytest.mark.parametrize("name,options,match", CONFIG_ERRORS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CONFIG_ERRORS)])
def test_config_errors(name, options, match):
    kw = {"num_heads": HEADS, **options}
    if match is None:  # cam has no option to get wrong but dim
        with pytest.raises(ValueError, match="dim must be an int >= 1"):
            get_token_mixer(name, 0)
        return
    with pytest.raises(ValueError, match=match):
        get_token_mixer(name, DIM, **kw)


class _TinyNet(nn.Module):
    """stem -> one pre-norm residual block with the mixer -> pool -> linear (a stand-in backbone)."""

    def __init__(self, name, options):
        super().__init__()
        self.stem = nn.Conv2d(3, DIM, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(1, DIM)
        self.mixer = get_token_mixer(name, DIM, num_heads=HEADS, **options)
        self.head = nn.Linear(DIM, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.mixer(self.norm(x))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("name,options", CASES)
def test_trains_a_few_steps(name, options):
    torch.manual_seed(0)
    opts = {**options, **({"size": (8, 8)} if name == "spectral" else {})}
    net = _TinyNet(name, opts)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    before = [p.detach().clone() for p in net.mixer.parameters()]
    losses = []
    for _ in range(4):
        loss = nn.functional.cross_entropy(net(x), y)
        if hasattr(net.mixer, "load_balance_loss"):
            loss = loss + 0.01 * net.mixer.load_balance_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert any(not torch.equal(b, p) for b, p in zip(before, net.mixer.parameters()))


@pytest.mark.parametrize("name", list_token_mixers())
def test_bfloat16_forward(name):
    """Built with dtype=bfloat16, a mixer runs in bfloat16 and returns bfloat16 (spectral computes its
    FFT in float32: there is no complex bfloat16)."""
    kw = {"size": (9, 7)} if name == "spectral" else {}
    m = build(name, kw, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    with torch.no_grad():
        y = m(torch.randn(2, DIM, 9, 7, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == (2, DIM, 9, 7) and torch.isfinite(y).all()
