"""Per-stage and per-block config fields, and how YAML / JSON / ``--set`` values map onto them.

In Python a config field takes one shared value, a **tuple** with one entry per stage, and inside a stage
a **list** that cycles over the stage's blocks: ``dilation=(1, [1, 2], [1, 2], 1)``. A window or dilation
pair is a tuple too: ``kernel_size=((5, 1), (5, 1), (5, 1))`` is a 5x1 strip window in every stage.

YAML, JSON and ``--set`` have lists only, so there the form is explicit (:func:`plain_overrides`):

- a list is one entry per stage; a list inside it is one *value* (a pair): ``kernel_size: [[5, 1], [5, 1],
  [5, 1]]`` is a 5x1 window in each of three stages, never a 5x5 block followed by a 1x1 one;
- ``{blocks: [...]}`` cycles over the blocks of a stage: ``dilation: [1, {blocks: [1, 2]}, 1]``, or
  ``shift: {blocks: [null, kv]}`` for every stage;
- ``{stages: [...]}`` is the same as a list (one entry per stage).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, TypeVar

from .._errors import check_probability, did_you_mean

FORMS = ("blocks", "stages")


def _err(cfg: object, arg: str, value: object, fix: str) -> ValueError:
    return ValueError(f"{type(cfg).__name__}: {arg}={value!r} is invalid; {fix}")


def per_stage(cfg: object, arg: str, value: Any, n: int) -> list:
    """A per-stage field: a tuple with one entry per stage, or any other value shared by every stage.

    (A *list* inside is a per-block cycle, see :func:`at_block`.)
    """
    if isinstance(value, tuple):
        if len(value) != n:
            raise _err(cfg, arg, value, f"give one entry per stage ({n} stages), or a single value for all; a pair "
                                        f"like (5, 1) for every stage is written ((5, 1),) * {n} in Python, "
                                        f"{[[5, 1]] * n} in YAML or --set")
        return list(value)
    return [value] * n


def at_block(value: Any, block: int) -> Any:
    """The value of one block: a list cycles over the blocks of its stage, anything else is shared."""
    return value[block % len(value)] if isinstance(value, list) and value else value


def override_fields(cfg: Any, kwargs: dict) -> Any:
    """A copy of the config dataclass ``cfg`` with ``kwargs`` replaced; unknown names get a did-you-mean and
    the list of fields."""
    names = [f.name for f in fields(cfg)]
    for k in kwargs:
        if k not in names:
            raise ValueError(f"{type(cfg).__name__}: unknown option {k!r};{did_you_mean(k, names)} "
                             f"options are {', '.join(names)}")
    return replace(cfg, **kwargs)


def _pos_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


_C = TypeVar("_C", bound="StageConfig")


class StageConfig:
    """What the backbone configs (:class:`~msaconv.models.hier.HierConfig`,
    :class:`~msaconv.models.tic_conv.ConvNetConfig`) share besides their fields: the stage count, overrides,
    and the checks of the fields each of them has."""

    dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_classes: int

    @property
    def num_stages(self) -> int:
        return len(self.dims)

    def override(self: _C, **kwargs) -> _C:
        """A copy with fields replaced; unknown names get a did-you-mean and the list of fields."""
        return override_fields(self, kwargs)

    def _check_stages(self, example: tuple[int, ...]) -> int:
        """``dims`` and ``depths``: tuples of positive ints, one per stage. Returns the number of stages."""
        n = len(self.dims) if isinstance(self.dims, tuple) else 0
        if not n or not all(_pos_int(d) for d in self.dims):
            raise _err(self, "dims", self.dims, f"use a tuple of positive ints, one per stage, e.g. {example}")
        if not isinstance(self.depths, tuple) or len(self.depths) != n or not all(_pos_int(d) for d in self.depths):
            raise _err(self, "depths", self.depths, f"use a tuple of {n} positive ints, e.g. {(2,) * n}")
        return n

    def _check_probabilities(self, *args: str) -> None:
        for arg in args:
            check_probability(type(self).__name__, arg, getattr(self, arg))

    def _check_num_classes(self) -> None:
        c = self.num_classes
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise _err(self, "num_classes", c, "use a positive int, or 0 for pooled features")


def _form(value: Any) -> str | None:
    return next(iter(value)) if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in FORMS else None


def _one_value(arg: str, value: Any) -> Any:
    form = _form(value)
    if form is not None:
        raise ValueError(f"model_kwargs.{arg}={value!r}: '{form}:' cannot appear inside a block's value; "
                         f"write {{blocks: [...]}} at a stage's place, e.g. {arg}: [3, {{blocks: [3, 5]}}, 3]")
    return tuple(value) if isinstance(value, list) else value


def _stage_value(arg: str, value: Any) -> Any:
    form = _form(value)
    if form == "blocks":
        blocks = value["blocks"]
        if not isinstance(blocks, list) or not blocks:
            raise ValueError(f"model_kwargs.{arg}: 'blocks:' takes a non-empty list of per-block values, "
                             f"got {blocks!r}; e.g. {{blocks: [1, 2]}}")
        return [_one_value(arg, b) for b in blocks]
    return _one_value(arg, value)


def plain_overrides(kwargs: dict) -> dict:
    """Model overrides as YAML / JSON / ``--set`` write them -> the Python config form (module docstring).

    ``{"kernel_size": [[5, 1]] * 3}`` -> ``{"kernel_size": ((5, 1),) * 3}``;
    ``{"dilation": [1, {"blocks": [1, 2]}]}`` -> ``{"dilation": (1, [1, 2])}``.
    """
    out = {}
    for arg, value in kwargs.items():
        form = _form(value)
        if form == "blocks":
            out[arg] = _stage_value(arg, value)
        elif form == "stages" or isinstance(value, list):
            stages = value["stages"] if form == "stages" else value
            if not isinstance(stages, list):
                raise ValueError(f"model_kwargs.{arg}: 'stages:' takes a list with one entry per stage, got {stages!r}")
            out[arg] = tuple(_stage_value(arg, v) for v in stages)
        else:
            out[arg] = value
    return out
