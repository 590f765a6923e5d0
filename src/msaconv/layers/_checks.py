"""Config checks shared by every module of :mod:`msaconv.layers` (MSA-Conv layers and the token mixers).

Each raises a ``ValueError`` that names the module, the argument, the value and the fix.
"""

from __future__ import annotations

import torch


def check_int(cls: str, arg: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{cls}: {arg} must be an int >= {minimum}, got {value!r}; use e.g. {arg}={max(minimum, 1)}")
    return int(value)


def check_heads(cls: str, dim: int, num_heads: object, arg: str = "num_heads", dim_arg: str = "dim") -> int:
    """``num_heads`` must be a positive int dividing ``dim``; the message lists divisors to choose from."""
    h = check_int(cls, arg, num_heads)
    if dim % h:
        divisors = [d for d in range(1, dim + 1) if dim % d == 0]
        raise ValueError(
            f"{cls}: {dim_arg}={dim} is not divisible by {arg}={h}; choose {arg} from "
            f"{divisors[:12]}{' ...' if len(divisors) > 12 else ''}"
        )
    return h


def check_input(cls: str, x: object, dim: int, dim_arg: str = "dim") -> tuple[int, int, int, int]:
    """``x`` must be ``[B, dim, H, W]`` with H, W >= 1; returns its shape."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{cls}: expected a tensor [B, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        got = tuple(x.shape)
        raise ValueError(f"{cls}: expected input [B, C, H, W], got {got}; add a batch axis with x[None] for one image")
    if x.shape[1] != dim:
        raise ValueError(
            f"{cls}: expected {dim} input channels, got x of shape {tuple(x.shape)}; "
            f"build the layer with {dim_arg}={x.shape[1]} or project x to {dim} channels first"
        )
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{cls}: the input has an empty spatial size {tuple(x.shape[2:])}; H and W must be >= 1")
    return tuple(x.shape)  # type: ignore[return-value]
