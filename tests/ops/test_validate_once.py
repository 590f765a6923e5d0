"""One call validates its arguments once and chooses its backend once; the backward reuses that choice.

Each test counts the calls of ``check_msa_conv2d`` and ``choose_backend`` (under every name msaconv binds
them to) during one forward and backward, through the functional op and through the modules.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from msaconv.layers import MSAConv2d, MSAttention2d
from msaconv.ops import _checks, backends, msa_conv2d


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """Counts of the calls of the check and of the backend choice, wherever msaconv imported them."""
    counts: Counter = Counter()

    def counted(fn):
        def wrapper(*args, **kwargs):
            counts[fn.__name__] += 1
            return fn(*args, **kwargs)
        return wrapper

    for fn in (_checks.check_msa_conv2d, backends.choose_backend):
        wrapper = counted(fn)
        for mod in [m for name, m in sys.modules.items() if name.startswith("msaconv")]:
            for attr, value in list(vars(mod).items()):
                if value is fn:
                    monkeypatch.setattr(mod, attr, wrapper)
    return counts


def _qkv(layout="bhwd"):
    shape = (2, 2, 6, 7, 4) if layout == "bhwd" else (2, 2, 4, 6, 7)
    return [torch.randn(shape, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("backend", [None, "portable", "cpu", "dense", "reference"])
def test_msa_conv2d_checks_once_and_chooses_once(calls, backend):
    q, k, v = _qkv()
    out = msa_conv2d(q, k, v, (3, 5), dilation=(1, 2), backend=backend)
    out.square().sum().backward()
    assert calls == {"check_msa_conv2d": 1, "choose_backend": 1}
    assert q.grad is not None and k.grad is not None and v.grad is not None


def test_msa_conv2d_with_dropout_and_extra_keys_checks_once(calls):
    q, k, v = _qkv("bhdhw")
    ek, ev = (torch.randn(2, 2, 3, 4, requires_grad=True) for _ in range(2))
    msa_conv2d(q, k, v, 3, extra_k=ek, extra_v=ev, layout="bhdhw", dropout_p=0.1).sum().backward()
    assert calls == {"check_msa_conv2d": 1, "choose_backend": 1}


def test_the_backward_runs_the_backend_the_forward_chose(calls, monkeypatch):
    q, k, v = _qkv()
    out = msa_conv2d(q, k, v, 3, backend="portable")
    ran = []
    cls = type(backends.BACKENDS["portable"])
    real = cls.backward
    monkeypatch.setattr(cls, "backward", lambda self, *args: ran.append(self.name) or real(self, *args))
    out.sum().backward()
    assert ran == ["portable"] and calls["choose_backend"] == 1


@pytest.mark.parametrize("make", [
    lambda: MSAConv2d(8, 12, (3, 5), dilation=(2, 1), num_heads=2),
    lambda: MSAttention2d(8, num_heads=2, kernel_size=3, shift="kv", inter_pool="grid"),
], ids=["MSAConv2d", "MSAttention2d"])
def test_a_module_forward_and_backward_check_once_and_choose_once(calls, make):
    m = make()
    x = torch.randn(2, 8, 9, 10, requires_grad=True)
    m(x).square().sum().backward()
    assert calls == {"check_msa_conv2d": 1, "choose_backend": 1}
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())
