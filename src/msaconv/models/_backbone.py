"""What :class:`~msaconv.models.hier.HierNet` and :class:`~msaconv.models.tic_conv.ConvNet` share of timm's
model contract: a ``stem`` + ``stages`` body read by ``forward_features``, a head that pools (or keeps the
map, ``global_pool=''``) and classifies, and the methods around that head written once."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._blocks import check_image
from ._builder import prune_stages, stage_intermediates, traceable_annotations


@traceable_annotations
class Backbone(nn.Module):
    """Base of the backbones. A subclass's ``__init__`` calls ``super().__init__(cfg)`` (the config is
    validated and the contract's attributes are set from it), then builds ``stem``, ``stages`` (an
    ``nn.Sequential``), ``head`` and its other head modules and sets ``global_pool``; it defines
    ``forward_features`` and ``forward_head``.

    ``_POOLS``: the pools ``reset_classifier`` takes besides '' (no pooling). The hooks
    ``_classifier_pool``, ``_set_pool``, ``_init_head`` and ``_prune_norm`` are what the subclasses do
    differently around the head."""

    _POOLS: tuple[str, ...] = ("avg",)

    def __init__(self, cfg: Any):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.min_input_size = cfg.min_input_size()
        self.pretrained_cfg: dict = {}
        self.num_features = self.head_hidden_size = cfg.dims[-1]
        self.feature_info: list[dict[str, Any]] = [dict(num_chs=d, reduction=r, module=f"stages.{i}")
                                                   for i, (d, r) in enumerate(zip(cfg.dims, cfg.reductions()))]

    # ---- checks ---------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """A clear error for inputs the model cannot take (wrong rank or channels, below the minimum size)."""
        check_image(self.pretrained_cfg.get("architecture", type(self).__name__), x, self.in_chans,
                    self.min_input_size, self.cfg.reductions()[-1])

    # ---- timm contract --------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: identity, so ``forward`` returns the pooled features, normed in
        HierNet).

        ``global_pool``: None keeps the current pooling (the model's default again if it was '' and a
        classifier is asked for), one of the model's pools ('avg'; ConvNet also 'max') pools, '' keeps the
        map (``forward`` returns ``[B, C, H, W]``; only with ``num_classes=0``)."""
        if global_pool is not None and global_pool not in self._POOLS + ("",):
            pools = ", ".join(repr(p) for p in self._POOLS)
            raise ValueError(f"reset_classifier: global_pool={global_pool!r} is not supported; use {pools}, '' "
                             f"(no pooling, with num_classes=0) or None (keep the current one)")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"reset_classifier: num_classes must be an int >= 0, got {num_classes!r}")
        pool = global_pool if global_pool is not None else (
            self.global_pool or (self._classifier_pool() if num_classes else ""))
        if pool == "" and num_classes > 0:
            pools = " or ".join(repr(p) for p in self._POOLS)
            raise ValueError(f"reset_classifier: num_classes={num_classes} needs pooling (a linear head on the "
                             f"pooled vector); use global_pool={pools}, or num_classes=0 with global_pool=''")
        self._set_pool(pool)
        self.num_classes = num_classes
        head: nn.Module = nn.Identity()
        if num_classes > 0:
            linear = nn.Linear(self.num_features, num_classes)
            self._init_head(linear)
            ref = next(self.parameters(), None)
            head = linear if ref is None else linear.to(device=ref.device, dtype=ref.dtype)
        self.head = head.train(self.training)

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs at ``indices`` (timm's rule; see :func:`msaconv.models._builder.stage_intermediates`)."""
        return stage_intermediates(self, x, indices, norm, stop_early, output_fmt, intermediates_only)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the head); returns the kept indices."""
        take, pruned = prune_stages(self, indices)
        if pruned or prune_norm:
            self._prune_norm()
        if pruned or prune_head:
            self.reset_classifier(0)
        return take

    # ---- what the subclasses do differently around the head ----------------------------------------
    def _classifier_pool(self) -> str:
        """The pooling a classifier gets when ``reset_classifier`` is asked for one after '' (no pooling)."""
        return self._POOLS[0]

    def _set_pool(self, pool: str) -> None:
        self.global_pool = pool

    def _init_head(self, head: nn.Linear) -> None:
        """Initialise a new classifier (torch's default init is kept here)."""

    def _prune_norm(self) -> None:
        """Drop the head's norm (``prune_intermediate_layers``); nothing here: no head norm."""
