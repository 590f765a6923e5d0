"""Parameter and FLOP/MAC counts of a model with ``torch.utils.flop_counter``.

``FlopCounterMode`` counts only aten ops with a registered formula (convolutions, matmuls, SDPA on
GPU). Two things it would miss are handled here:

- the MSA-Conv core: if the op ``msa_conv2d`` shows up in the counts (the ops package registered a
  formula for it), its count is used as is; otherwise every MSA-Conv layer adds the analytic
  ``4 * B * H_out * W_out * (K + M) * C`` FLOPs (q.k and a.v over K window slots and M pooled keys)
  minus whatever the counter already saw inside the core (e.g. the matmuls of the extra keys);
- scaled-dot-product attention on CPU (``aten._scaled_dot_product_flash_attention_for_cpu``), which
  has no formula in torch: counted here with torch's own SDPA formula.

MACs = FLOPs / 2 (one multiply-add = 2 FLOPs), as timm's GMACs columns.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter as fc

from ..layers.msa_conv import QKVAttention


def _cpu_sdpa_mapping() -> dict:
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        def sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

        mapping[op] = sdpa_cpu
    return mapping


def count_params(model: nn.Module) -> int:
    """Number of parameters (unique tensors)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: tuple[int, ...] | None = None, batch_size: int = 1) -> dict[str, Any]:
    """Forward FLOPs, GMACs per image and params of ``model`` at ``input_size`` ``(C, H, W)`` (default: the
    model's ``pretrained_cfg['input_size']``).

    Returns a dict: ``params``, ``flops`` (per image), ``gmacs`` (per image), ``input_size``,
    ``msa_core`` ('op formula' when the msa_conv2d op was counted by its registered formula, 'analytic'
    when this function added it, 'none' when the model has no MSA-Conv layer) and ``by_op`` (FLOPs per
    aten op, plus 'msa_conv2d (analytic)' when added).
    """
    if input_size is None:
        input_size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    if not (isinstance(input_size, (tuple, list)) and len(input_size) == 3 and all(isinstance(v, int) and v > 0 for v in input_size)):
        raise ValueError(f"count_flops: input_size must be (C, H, W) positive ints, got {input_size!r}; use e.g. (3, 224, 224)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"count_flops: batch_size must be a positive int, got {batch_size!r}")
    p = next(model.parameters(), None)
    x = torch.zeros(batch_size, *input_size, device=p.device if p is not None else None,
                    dtype=p.dtype if p is not None else None)

    analytic: list[tuple[int, int]] = []  # (id of the attention core, its 4*B*Ho*Wo*(K+M)*C)
    names: dict[int, str] = {}

    def hook(mod: QKVAttention, inputs, out):
        xin = inputs[0]
        H, W = xin.shape[-2:]
        K = mod.kernel_size[0] * mod.kernel_size[1]
        ip = mod.inter_pool
        M = 0
        if ip is not None and ip.mode == "grid":
            gh, gw = ip.grid_size(H, W)
            M = gh * gw
        B, C, Ho, Wo = out.shape
        analytic.append((id(mod), 4 * B * Ho * Wo * (K + M) * C))

    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, QKVAttention):
            names[id(mod)] = name
            handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), fc.FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping()) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    counts = counter.get_flop_counts()
    by_op = {str(op): int(n) for op, n in counts.get("Global", {}).items()}
    total = int(counter.get_total_flops())
    op_counted = any("msa_conv" in op for op in by_op)
    added = 0
    if analytic and not op_counted:
        root = type(model).__name__
        for mid, flops in analytic:
            # what the counter already saw inside this core (besides the qkv projection's convolution)
            seen = counts.get(f"{root}.{names[mid]}" if names[mid] else root, {})
            inside = sum(int(n) for op, n in seen.items() if "convolution" not in str(op))
            added += max(flops - inside, 0)
        by_op["msa_conv2d (analytic)"] = added
        total += added
    return dict(
        params=count_params(model),
        flops=total / batch_size,
        gmacs=total / 2 / 1e9 / batch_size,
        input_size=tuple(input_size),
        msa_core="none" if not analytic else ("op formula" if op_counted else "analytic"),
        by_op=by_op,
    )
