"""The error messages every package of msaconv shares: a name that is not one of the choices (with a
did-you-mean), an int-or-pair argument, a probability. Each message names the function, the argument, the
value it got and the fix. The operator's own checks are in :mod:`msaconv.ops` (``check_msa_conv2d``)."""

from __future__ import annotations

import difflib
from typing import Sequence


def did_you_mean(value: str, choices: Sequence[str]) -> str:
    """`` did you mean 'x'?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f" did you mean {close[0]!r}?" if close else ""


def unknown_name(fn: str, arg: str, value: object, choices: Sequence[str]) -> ValueError:
    """The error for a name that is not one of ``choices``."""
    return ValueError(
        f"{fn}: unknown {arg} {value!r};{did_you_mean(str(value), choices)} "
        f"choose one of {', '.join(repr(c) for c in choices)}"
    )


def pair(fn: str, arg: str, value: object, minimum: int = 1) -> tuple[int, int]:
    """Normalise an int or a pair of ints to a pair, each at least ``minimum``."""
    if isinstance(value, bool):
        vals = None
    elif isinstance(value, int):
        vals = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        vals = tuple(value)
    else:
        vals = None
    if vals is None or not all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
        raise ValueError(
            f"{fn}: {arg} must be an int or a pair of ints (rows, cols), got {value!r}; "
            f"use e.g. {arg}=3 or {arg}=(5, 1)"
        )
    if min(vals) < minimum:
        raise ValueError(
            f"{fn}: {arg} must be >= {minimum} along each axis, got {value!r}; "
            f"use values >= {minimum}"
        )
    return int(vals[0]), int(vals[1])


def check_choice(fn: str, arg: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else :func:`unknown_name`'s error."""
    if value not in choices:
        raise unknown_name(fn, arg, value, choices)
    return str(value)


def check_probability(fn: str, arg: str, p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{fn}: {arg} must be a float in [0, 1), got {p!r}; use e.g. {arg}=0.1")
    return float(p)
