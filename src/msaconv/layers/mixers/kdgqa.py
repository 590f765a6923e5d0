"""``kdgqa``: key-norm-driven grouped-query attention over any head-structured mixer (KDGQA / DGQA, "Beyond Uniform Query Distribution", 2024).

Computation: grouped-query attention with ``kv_heads = g`` key/value heads for the ``h`` query heads. The
key/value heads are the means of ``h/g`` consecutive heads of the inner mixer's keys and values (GQA's
"uptraining" conversion; the projections are linear, so this equals mean-pooling their weights). Query
heads are then *allocated* to the g groups in proportion to the key norms ``n_j = sum_batch ||K_j||_F``:
``a_j = round(w_j / sum(w) * h)``, repaired to sum to h (take one from the largest while too many, give
one to the smallest while too few), and query heads ``0..a_1-1`` use group 1, the next ``a_2`` group 2, ...
A group may get no query head. The weights ``w`` come from ``mode``:

* ``'kd'`` (KDGQA): min-max normalised norms of the current batch (recomputed every forward; so the
  smallest-norm group gets no query unless all norms are equal, as the authors' code; equal norms give
  an even split);
* ``'ema'`` (DGQA): an exponential moving average of the norms tracked over training,
  ``ema <- m ema + (1 - m) n`` every ``window_size`` training steps (``m = momentum``, 0.9: a slow
  average); evaluation reuses the tracked allocation (deliberately frozen: the authors' code also
  updates its cache at evaluation, so its allocation would depend on the evaluation batches);
* ``'diff'`` (DGQA): ``|n - n_prev|`` against the norms cached at the last update.

``released_cache=True`` reproduces the cache of the authors' DGQA code instead: a cache ``c`` starting
at 0 and updated ``c <- (c + n) / window_size`` at every window step (a running *sum* of the norms for
``window_size=1``); ``'diff'`` allocates by ``|c - n|`` and ``'ema'`` by ``m c + (1 - m) n`` (their
``0.9 n + 0.1 c`` is ``momentum=0.1``), both from the cache before the update. Evaluation stays frozen.

The allocation is a discrete choice (no gradient flows through it). ``.allocation`` holds the last one.
Cost: the inner mixer's attention with g distinct key/value heads (computed densely per query head).
New resolution: as the inner mixer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_token_mixer
from ._common import check_choice, check_float, check_input, check_int, default_heads
from ._heads import HeadStructured, as_head_structured, build_inner

MODES = ("kd", "ema", "diff")


def allocate(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """Round ``weights / sum * heads`` to ints that sum to ``heads`` (even split if the weights sum to 0)."""
    g = weights.numel()
    w = weights.detach().double()
    if not torch.isfinite(w).all() or float(w.sum()) <= 0:
        w = torch.ones_like(w)
    a = torch.round(w / w.sum() * heads).long()
    while int(a.sum()) > heads:
        a[int(torch.argmax(a))] -= 1
    while int(a.sum()) < heads:
        a[int(torch.argmin(a))] += 1
    assert a.numel() == g
    return a


class KDGQAWrapper(nn.Module):
    """Key-driven grouped-query attention around a head-structured token mixer.

    Fidelity: KDGQA / DGQA (Khan et al., arXiv 2408.08454) compared with ``modules/attention/kdgqa.py``
    and ``dgqa.py`` of the authors' key-driven-gqa code (read in the fork yjzhang0505/key-driven-gqa;
    the authors' own repository is not available to us): ``'kd'`` matches (min-max weights, rounding,
    argmax/argmin repair); equal norms give an even split where theirs divides by zero. ``'ema'`` and
    ``'diff'`` differ: our cache is a true EMA / the last norms (theirs is the running sum
    ``c <- (c + n) / window_size``: ``released_cache=True`` reproduces it), evaluation is frozen (theirs
    updates the cache at evaluation) and the repair is deterministic (theirs picks random groups). Key and
    value heads are group means of the inner mixer's heads, which equals their mean-pooled projections.
    """

    _heads: HeadStructured  # set with object.__setattr__ (not a registered submodule)
    allocation: torch.Tensor  # the buffers registered in __init__
    norm_state: torch.Tensor
    steps: torch.Tensor

    def __init__(self, dim: int, num_heads: int = 8, inner="global", kv_heads: int | None = None, mode: str = "kd",
                 window_size: int = 1, momentum: float = 0.9, released_cache: bool = False, device=None, dtype=None,
                 **inner_options):
        super().__init__()
        cls = "KDGQAWrapper"
        self.dim = check_int(cls, "dim", dim)
        self.inner = build_inner(cls, inner, dim, num_heads, inner_options, device, dtype)
        heads = as_head_structured(self.inner, cls)
        object.__setattr__(self, "_heads", heads)
        h = self.num_heads = heads.num_heads
        g = max(1, h // 2) if kv_heads is None else kv_heads
        self.kv_heads = check_int(cls, "kv_heads", g)
        if self.kv_heads == 1:
            ok = [d for d in range(2, h + 1) if h % d == 0]
            fix = (f"choose kv_heads from {ok}" if ok else "use num_heads >= 2") + \
                " (num_heads >= 4 makes the default kv_heads = num_heads // 2 at least 2)"
            raise ValueError(f"{cls}: kv_heads=1 puts all {h} query heads in one group, so the key-driven allocation "
                             f"has nothing to choose (it is multi-query attention); {fix}")
        if h % self.kv_heads:
            divisors = [d for d in range(1, h + 1) if h % d == 0]
            raise ValueError(f"{cls}: kv_heads={self.kv_heads} must divide the inner mixer's num_heads={h}; "
                             f"choose kv_heads from {divisors}")
        self.mode = check_choice(cls, "mode", mode, MODES)
        self.window_size = check_int(cls, "window_size", window_size)
        self.momentum = check_float(cls, "momentum", momentum, 0.0, 1.0)
        if not isinstance(released_cache, bool):
            raise ValueError(f"{cls}: released_cache must be True or False, got {released_cache!r}")
        self.released_cache = released_cache
        g = self.kv_heads
        self.register_buffer("allocation", torch.full((g,), h // g, dtype=torch.long, device=device))
        self.register_buffer("norm_state", torch.zeros(g, dtype=torch.float32, device=device))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=device))

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        """Mean of each group of ``h/g`` consecutive heads (head axis 1)."""
        B, h = t.shape[:2]
        return t.reshape(B, self.kv_heads, h // self.kv_heads, *t.shape[2:]).mean(dim=2)

    @torch.no_grad()
    def _update_allocation(self, k: torch.Tensor) -> torch.Tensor:
        n = k.float().flatten(2).norm(dim=-1).sum(dim=0)                  # [g]
        if self.mode == "kd":
            lo, hi = n.min(), n.max()
            w = (n - lo) / (hi - lo) if float(hi - lo) > 0 else torch.ones_like(n)
            return allocate(w, self.num_heads)
        if not self.training:
            return self.allocation.clone() if int(self.steps) > 0 else allocate(n, self.num_heads)
        if int(self.steps) % self.window_size == 0 and self.released_cache:
            c = self.norm_state
            w = (n - c).abs() if self.mode == "diff" else self.momentum * c + (1 - self.momentum) * n
            a = allocate(w, self.num_heads)
            self.norm_state.copy_((c + n) / self.window_size)
        elif int(self.steps) % self.window_size == 0:
            first = int(self.steps) == 0
            if self.mode == "ema":
                self.norm_state.copy_(n if first else self.momentum * self.norm_state + (1 - self.momentum) * n)
                a = allocate(self.norm_state, self.num_heads)
            else:  # diff
                a = allocate(n if first else (n - self.norm_state).abs(), self.num_heads)
                self.norm_state.copy_(n)
        else:
            a = self.allocation.clone()
        self.steps += 1
        return a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("KDGQAWrapper", x, self.dim)
        hs = self._heads
        q, k, v = hs.qkv_heads(x)
        k, v = self._pool(k), self._pool(v)                                # [B, g, ...]
        a = self._update_allocation(k)
        self.allocation.copy_(a)
        group_of = torch.repeat_interleave(torch.arange(self.kv_heads, device=a.device), a.to(a.device))
        k, v = k.index_select(1, group_of.to(k.device)), v.index_select(1, group_of.to(v.device))
        return hs.merge_heads(hs.attend_heads(q, k, v, (x.shape[-2], x.shape[-1])))

    def extra_repr(self) -> str:
        s = f"num_heads={self.num_heads}, kv_heads={self.kv_heads}, mode={self.mode!r}"
        if self.mode != "kd":
            s += f", window_size={self.window_size}, momentum={self.momentum}"
            s += ", released_cache=True" if self.released_cache else ""
        return s


@register_token_mixer("kdgqa", paper="KDGQA / DGQA (key-driven GQA, 2024)")
def kdgqa(dim: int, num_heads: int | None = None, **options) -> KDGQAWrapper:
    """``num_heads=None``: the smallest head count >= 4 dividing ``dim`` (2 key/value groups at 4)."""
    return KDGQAWrapper(dim, num_heads=default_heads(dim, 4) if num_heads is None else num_heads, **options)
