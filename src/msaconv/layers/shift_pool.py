"""TiC's two capacity-enhancing strategies as options of :class:`~msaconv.layers.MSAttention2d`.

The paper's abstract names them and their aim only ("establish long-distance connections between tokens
and enlarge the effective receptive field"); every detail here is ours, and each
has the spec's default reading and its alternative behind a ``mode`` switch.

**MDCSM** (multi-directional cyclic shift), :class:`CyclicShift`:

- ``mode='kv'`` (default reading): the heads are split into a local group (``local`` share of them) and
  up to ``directions`` direction groups (4: up, down, left, right; 8: plus the diagonals). The K and V of
  direction group ``(dy, dx)`` are rolled cyclically so that the window of query ``(y, x)`` is centred
  on ``(y + dy*sy, x + dx*sx)`` (wrapping around), with ``sy = round(fraction*H)`` and
  ``sx = round(fraction*W)``; q is never rolled, so outputs stay aligned with their queries. Rolling the
  whole map would change nothing but the border: only the *relative* roll of part of the heads adds
  long-range links. Costs no FLOPs.
- ``mode='input'`` (alternative): the channels of x are split the same way (a local share and
  ``directions`` groups) and each group is rolled before the qkv projection, so q, k and v all mix
  shifted and unshifted channels.

Note: with ``fraction=0.5`` a roll "up" and a roll "down" by half the map are the same roll when the
size is even, so 4 directions give 2 distinct shifts (and 8 give 3). That is the spec's default;
``fraction=0.25`` gives 4 distinct ones.

**IPM** (inter-pooling), :class:`InterPool`:

- ``mode='grid'`` (default reading): K and V are average-pooled (adaptively) to a fixed ``grid``
  (default 4x4, clamped to the map size so that no token is repeated) and passed to the op as
  ``extra_k``/``extra_v``: every query sees its window plus a coarse summary of the whole image, in
  the same softmax.
- ``mode='local'`` (alternative): K and V are average-pooled with a stride-1 ``kernel`` x ``kernel``
  window (default 3, padding not counted) before the window gather: each key summarises its
  neighbourhood and the window reaches ``k + kernel - 1``.

Everything is a fraction of the map or a fixed grid, never a size fixed at construction, so a layer
built once runs at any resolution.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

SHIFT_MODES: tuple[str, ...] = ("kv", "input")
POOL_MODES: tuple[str, ...] = ("grid", "local")

# (dy, dx) of each direction group, in the order groups are filled
_DIRECTIONS = {
    4: ((-1, 0), (1, 0), (0, -1), (0, 1)),
    8: ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)),
}


def _bad(fn: str, arg: str, value: object, fix: str) -> ValueError:
    return ValueError(f"{fn}: {arg} got {value!r}; {fix}")


@dataclass(frozen=True)
class CyclicShift:
    """MDCSM settings. ``mode``: 'kv' (roll K, V of head groups) or 'input' (roll channel groups of x).

    ``directions``: 4 or 8; ``fraction``: the roll as a share of H and W, in (0, 1); ``local``: the share
    of heads ('kv') or channels ('input') left unshifted, in [0, 1).
    """

    mode: str = "kv"
    directions: int = 4
    fraction: float = 0.5
    local: float = 0.5

    def __post_init__(self):
        fn = "CyclicShift"
        if self.mode not in SHIFT_MODES:
            raise _bad(fn, "mode", self.mode, f"choose one of {SHIFT_MODES} ('kv' is the default reading)")
        if self.directions not in _DIRECTIONS or isinstance(self.directions, bool):
            raise _bad(fn, "directions", self.directions, "use 4 (up, down, left, right) or 8 (plus diagonals)")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 < self.fraction < 1:
            raise _bad(fn, "fraction", self.fraction, "use a share of the map size in (0, 1), e.g. 0.5 or 0.25")
        if isinstance(self.local, bool) or not isinstance(self.local, (int, float)) or not 0 <= self.local < 1:
            raise _bad(fn, "local", self.local, "use the unshifted share in [0, 1), e.g. 0.5")

    def offsets(self, height: int, width: int) -> tuple[tuple[int, int], ...]:
        """The roll ``(oy, ox)`` of each direction group at this map size: a key at ``(y+oy, x+ox)`` moves to ``(y, x)``."""
        sy, sx = _round_half_up(self.fraction * height), _round_half_up(self.fraction * width)
        return tuple((dy * sy, dx * sx) for dy, dx in _DIRECTIONS[self.directions])

    def groups(self, n: int) -> list[tuple[int, int]]:
        """``[start, end)`` of the local group, then of each direction group, over ``n`` heads or channels.

        The local group takes ``round(local * n)`` (at most ``n - 1``); the rest is split as evenly as
        possible, earlier directions first; a direction that gets nothing is left out (see ``n_used``).
        """
        n_local = min(_round_half_up(self.local * n), n - 1)
        rest = n - n_local
        per, extra = divmod(rest, self.directions)
        bounds, start = [(0, n_local)], n_local
        for g in range(self.directions):
            size = per + (1 if g < extra else 0)
            bounds.append((start, start + size))
            start += size
        return bounds


@dataclass(frozen=True)
class InterPool:
    """IPM settings. ``mode``: 'grid' (pooled extra keys) or 'local' (stride-1 pooled K, V).

    ``grid``: the pooled grid of 'grid' mode, an int or ``(gh, gw)``; ``kernel``: the odd pooling window
    of 'local' mode.
    """

    mode: str = "grid"
    grid: int | tuple[int, int] = 4
    kernel: int = 3

    def __post_init__(self):
        fn = "InterPool"
        if self.mode not in POOL_MODES:
            raise _bad(fn, "mode", self.mode, f"choose one of {POOL_MODES} ('grid' is the default reading)")
        g = self.grid
        ok = (isinstance(g, int) and not isinstance(g, bool) and g >= 1) or (
            isinstance(g, (tuple, list)) and len(g) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in g))
        if not ok:
            raise _bad(fn, "grid", g, "use a positive int or a pair (gh, gw), e.g. grid=4 or grid=(7, 7)")
        if isinstance(g, list):
            object.__setattr__(self, "grid", tuple(g))
        k = self.kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise _bad(fn, "kernel", k, "use an odd positive int, e.g. kernel=3")

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The pooled grid at this map size: the configured grid, clamped to the map."""
        gh, gw = (self.grid, self.grid) if isinstance(self.grid, int) else self.grid
        return min(gh, height), min(gw, width)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)  # no int(): under torch.export a symbolic size stays symbolic


def _from_option(fn: str, arg: str, value: object, cls, modes: tuple[str, ...]):
    """None/False -> None; True -> defaults; a mode name; a dict of fields; or an instance."""
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        if value not in modes:
            from .._errors import unknown_name
            raise unknown_name(fn, f"{arg} mode", value, modes)
        return cls(mode=value)
    if isinstance(value, dict):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"{fn}: {arg} has unknown keys {unknown}; allowed keys are {sorted(names)}")
        return cls(**value)
    raise ValueError(
        f"{fn}: {arg} must be None, True, a mode name {modes}, a dict or a {cls.__name__}, got {value!r}; "
        f"use e.g. {arg}={modes[0]!r}"
    )


def resolve_shift(fn: str, value: object) -> CyclicShift | None:
    """Normalise the ``shift=`` option of a layer (see :func:`_from_option`)."""
    return _from_option(fn, "shift", value, CyclicShift, SHIFT_MODES)


def resolve_inter_pool(fn: str, value: object) -> InterPool | None:
    """Normalise the ``inter_pool=`` option of a layer (see :func:`_from_option`)."""
    return _from_option(fn, "inter_pool", value, InterPool, POOL_MODES)


def roll_groups(t: torch.Tensor, dim: int, bounds: list[tuple[int, int]],
                offsets: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Roll slices ``bounds[1:]`` of ``t`` along ``dim`` by ``offsets`` over the last two (H, W) axes.

    ``bounds[0]`` is the unshifted local group. Slot ``(y, x)`` of group g then holds the input at
    ``(y + oy, x + ox)`` (mod H, W).

    In eager mode on a plain tensor this is one gather through a cached permutation (its backward the
    gather through the inverse permutation): the same values as the per-group rolls and their
    concatenation, without their ~20 small copies forward and backward per layer. Traced code (torch.compile,
    export, FX) takes the roll form, whose sizes may be symbolic.
    """
    if type(t) is torch.Tensor and not torch.compiler.is_compiling() and t.dim() >= 3:
        d = dim % t.dim()
        perm, inv = _group_roll_permutation(tuple(t.shape[d:]), tuple(bounds), tuple(offsets), t.device)
        return _Permute.apply(t, d, perm, inv)
    return _roll_groups_by_parts(t, dim, bounds, offsets)


def _roll_groups_by_parts(t: torch.Tensor, dim: int, bounds: list[tuple[int, int]],
                          offsets: tuple[tuple[int, int], ...]) -> torch.Tensor:
    parts = [t.narrow(dim, 0, bounds[0][1])] if bounds[0][1] else []
    for (start, end), (oy, ox) in zip(bounds[1:], offsets):
        if end > start:
            part = t.narrow(dim, start, end - start)
            parts.append(torch.roll(part, shifts=(-oy, -ox), dims=(-2, -1)) if (oy or ox) else part)
    return torch.cat(parts, dim=dim)


# a few entries per model and input size; each holds two int64 tensors of a whole k or v map
@functools.lru_cache(maxsize=32)
def _group_roll_permutation(shape: tuple[int, ...], bounds: tuple[tuple[int, int], ...],
                            offsets: tuple[tuple[int, int], ...],
                            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat source index of every element of ``roll_groups`` over a tensor of ``shape`` (grouped axis
    first), and its inverse."""
    n = math.prod(shape)
    src = torch.arange(n, device=device).view(shape)
    perm = _roll_groups_by_parts(src, 0, list(bounds), offsets).reshape(n)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n, device=device)
    return perm, inv


class _Permute(torch.autograd.Function):
    """``out.flatten(dim) = t.flatten(dim)[..., perm]``; the gradient is gathered back through ``inv``."""

    @staticmethod
    def forward(t: torch.Tensor, dim: int, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        lead = t.shape[:dim]
        return t.reshape(*lead, -1).index_select(dim, perm).view(t.shape)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.dim, ctx.perm, ctx.inv = inputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _Permute.apply(grad, ctx.dim, ctx.inv, ctx.perm), None, None, None


def shift_input(x: torch.Tensor, shift: CyclicShift) -> torch.Tensor:
    """MDCSM 'input' mode: roll channel groups of ``x [B, C, H, W]`` before the qkv projection."""
    return roll_groups(x, 1, shift.groups(x.shape[1]), shift.offsets(x.shape[-2], x.shape[-1]))


def shift_heads(t: torch.Tensor, shift: CyclicShift) -> torch.Tensor:
    """MDCSM 'kv' mode: roll head groups of ``k`` or ``v`` ``[B, heads, head_dim, H, W]``."""
    return roll_groups(t, 1, shift.groups(t.shape[1]), shift.offsets(t.shape[-2], t.shape[-1]))


def pool_grid(t: torch.Tensor, pool: InterPool) -> torch.Tensor:
    """IPM 'grid' mode: ``[B, heads, head_dim, H, W]`` -> pooled tokens ``[B, heads, M, head_dim]``."""
    B, h, D, H, W = t.shape
    gh, gw = pool.grid_size(H, W)
    if not torch.compiler.is_compiling() and (gh, gw) == (H, W):
        # a map no larger than the grid pools to itself: skip the pooling and its backward (~4% of a
        # tic_nano step in eager mode; traced graphs keep the general op, whose sizes may be symbolic)
        return t.reshape(B, h, D, H * W).transpose(-1, -2)
    pooled = F.adaptive_avg_pool2d(t.reshape(B, h * D, H, W), (gh, gw))  # [B, h*D, gh, gw]
    return pooled.reshape(B, h, D, gh * gw).transpose(-1, -2)  # [B, h, M, D]


def pool_local(t: torch.Tensor, pool: InterPool) -> torch.Tensor:
    """IPM 'local' mode: stride-1 ``kernel`` x ``kernel`` average of ``[B, heads, head_dim, H, W]`` (same shape)."""
    B, h, D, H, W = t.shape
    k = pool.kernel
    out = F.avg_pool2d(t.reshape(B, h * D, H, W), k, stride=1, padding=k // 2, count_include_pad=False)
    return out.view(B, h, D, H, W)
