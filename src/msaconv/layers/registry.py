"""Token-mixer registry: name -> factory, all under one contract.

A token mixer maps ``x [B, C, H, W] -> [B, C, H, W]``. Build one with
``get_token_mixer(name, dim, num_heads=..., **options)``; list them with ``list_token_mixers()``.
Without ``num_heads`` each mixer's factory picks its own default: 1 for most, and for the mixers whose
structure needs several heads (``hilo``, ``moh``, ``kdgqa``) the smallest head count dividing ``dim``
that builds every branch, so a default never yields a degenerate mixer.
Each mixer lives in its own file under :mod:`msaconv.layers.mixers` and registers itself with
:func:`register_token_mixer`.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .._errors import unknown_name
MixerFactory = Callable[..., nn.Module]

TOKEN_MIXERS: dict[str, MixerFactory] = {}
# name -> {"paper": short citation}; optional metadata for tables (``msaconv mixers``) and docs
TOKEN_MIXER_INFO: dict[str, dict[str, str]] = {}


def register_token_mixer(name: str, *, paper: str | None = None) -> Callable[[MixerFactory], MixerFactory]:
    """Decorator: register ``factory(dim, num_heads=..., **options) -> nn.Module`` under ``name``.

    ``paper`` (optional) is a short citation shown by ``msaconv mixers``; without it the last parenthesis
    of the first line of the factory's module docstring is used.
    """

    def deco(factory: MixerFactory) -> MixerFactory:
        if name in TOKEN_MIXERS and TOKEN_MIXERS[name] is not factory:
            raise ValueError(f"register_token_mixer: a token mixer named {name!r} is already registered")
        TOKEN_MIXERS[name] = factory
        if paper is not None:
            TOKEN_MIXER_INFO[name] = {"paper": paper}
        return factory

    return deco


def token_mixer_paper(name: str) -> str:
    """The paper a registered mixer comes from (metadata, else its module docstring), or ``''``."""
    _load_all()
    if name not in TOKEN_MIXERS:
        raise unknown_name("token_mixer_paper", "token mixer", name, sorted(TOKEN_MIXERS))
    if name in TOKEN_MIXER_INFO:
        return TOKEN_MIXER_INFO[name]["paper"]
    import sys

    doc = (getattr(sys.modules.get(TOKEN_MIXERS[name].__module__), "__doc__", None) or "").strip().splitlines()
    first = doc[0] if doc else ""
    if first.rstrip(".").endswith(")") and "(" in first:
        return first.rstrip(".")[first.rfind("(") + 1:-1]
    return ""


def _load_all() -> None:
    from . import mixers  # noqa: F401  (importing the package registers every mixer)


def list_token_mixers() -> list[str]:
    """Names of every registered token mixer, sorted."""
    _load_all()
    return sorted(TOKEN_MIXERS)


def get_token_mixer(name: str, dim: int, num_heads: int | None = None, **options) -> nn.Module:
    """Build the token mixer ``name`` for ``dim`` channels; unknown names get a did-you-mean.

    ``num_heads=None`` (the default) leaves the choice to the mixer's factory (see the module docstring).
    """
    _load_all()
    if name not in TOKEN_MIXERS:
        raise unknown_name("get_token_mixer", "token mixer", name, sorted(TOKEN_MIXERS))
    if num_heads is None:
        return TOKEN_MIXERS[name](dim, **options)
    return TOKEN_MIXERS[name](dim, num_heads=num_heads, **options)
