"""Config checks shared by every module of :mod:`msaconv.layers` (MSA-Conv layers and the token mixers).

Each raises a ``ValueError`` that names the module, the argument, the value and the fix.
"""

from __future__ import annotations


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
