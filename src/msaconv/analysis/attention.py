"""What the attention of a trained model looks at: exact key displacements, mean attention distance,
and the attention map of one query pixel.

For MSA-Conv mixers the window weights come from :meth:`MSAttention2d.attention_weights`
(``[B, heads, H_out, W_out, K + M]``) and the displacement of every slot is known exactly from the
window rules (:mod:`msaconv.ops.shapes`), the MDCSM roll of each head group and the IPM grid cells,
so the mean attention distance (ConViT's measure, ``sum_n a_n * ||delta_n||`` averaged over queries)
is computed exactly, not by sampling.

A mixer with no attention weights (a convolution, a spectral filter, channel attention, whose "tokens"
are channels) is reported by name with :data:`NO_WEIGHTS`, never silently skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..layers.msa_conv import MSAttention2d
from ..ops import shapes

NO_WEIGHTS = "this mixer has no spatial attention weights"


def _axis_displacement(length: int, kernel: int, dilation: int, stride: int, border: str) -> torch.Tensor:
    """Displacement (key - query, in pixels) of each slot along one axis: ``[kernel, L_out]``."""
    index, _ = shapes.axis_index(length, kernel, dilation, stride, border)
    out = index.shape[1]
    query = torch.arange(out)[None, :] * stride
    if border == "clamp":
        return (index - query).double()
    # zeros / mask / circular: the window offset itself (unwrapped for circular, outside slots included)
    offs = torch.arange(kernel)[:, None] * dilation - shapes.pad_before(kernel, dilation)
    return offs.double().expand(kernel, out)


def _wrap(d: torch.Tensor, length: int) -> torch.Tensor:
    """The shortest displacement on a ring of ``length`` pixels."""
    return torch.remainder(d + length / 2, length) - length / 2


def key_displacements(mixer: MSAttention2d, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(dy, dx)`` of every weight slot, each ``[heads, H_out, W_out, K + M]`` (float64, map pixels).

    Window slots follow the border rule; under MDCSM 'kv' a shifted head's window is centred on the rolled
    position (shortest way round the torus); IPM 'grid' tokens sit at the centre of their pooling cell.
    """
    a = mixer.attn
    (kh, kw), (dh, dw), (sh, sw) = a.kernel_size, a.dilation, a.attn_stride
    ry = _axis_displacement(height, kh, dh, sh, a.border)  # [kh, Ho]
    rx = _axis_displacement(width, kw, dw, sw, a.border)  # [kw, Wo]
    Ho, Wo = ry.shape[1], rx.shape[1]
    dy = ry.t()[:, None, :, None].expand(Ho, Wo, kh, kw).reshape(Ho, Wo, kh * kw)
    dx = rx.t()[None, :, None, :].expand(Ho, Wo, kh, kw).reshape(Ho, Wo, kh * kw)
    heads = a.num_heads
    dy = dy[None].repeat(heads, 1, 1, 1)
    dx = dx[None].repeat(heads, 1, 1, 1)
    shift = a.shift
    if shift is not None and shift.mode == "kv":
        bounds = shift.groups(heads)
        for (start, end), (oy, ox) in zip(bounds[1:], shift.offsets(height, width)):
            dy[start:end] = _wrap(dy[start:end] + oy, height)
            dx[start:end] = _wrap(dx[start:end] + ox, width)
    pool = a.inter_pool
    if pool is not None and pool.mode == "grid":
        gh, gw = pool.grid_size(height, width)
        # adaptive pooling cell i covers [floor(i*L/g), ceil((i+1)*L/g)); its centre:
        cy = torch.tensor([(i * height // gh + -(-(i + 1) * height // gh) - 1) / 2 for i in range(gh)], dtype=torch.float64)
        cx = torch.tensor([(j * width // gw + -(-(j + 1) * width // gw) - 1) / 2 for j in range(gw)], dtype=torch.float64)
        qy = (torch.arange(Ho) * sh).double()
        qx = (torch.arange(Wo) * sw).double()
        ey = (cy[None, None, :, None] - qy[:, None, None, None]).expand(Ho, Wo, gh, gw).reshape(Ho, Wo, gh * gw)
        ex = (cx[None, None, None, :] - qx[None, :, None, None]).expand(Ho, Wo, gh, gw).reshape(Ho, Wo, gh * gw)
        dy = torch.cat([dy, ey[None].expand(heads, -1, -1, -1)], dim=-1)
        dx = torch.cat([dx, ex[None].expand(heads, -1, -1, -1)], dim=-1)
    return dy, dx


@dataclass
class HeadDistance:
    layer: str
    head: int
    distance: float  # mean attention distance in feature-map pixels
    distance_px: float  # the same in input-image pixels (times the layer's reduction)
    map_size: tuple[int, int]
    reduction: float

    def as_dict(self) -> dict:
        return asdict(self)


def attention_mixers(model: nn.Module) -> dict[str, MSAttention2d]:
    """Every module of ``model`` that exposes window attention weights, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MSAttention2d)}


def _capture_inputs(model: nn.Module, mixers: dict[str, MSAttention2d], images: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: seen.__setitem__(n, args[0].detach()))
             for name, m in mixers.items()]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def mean_attention_distance(model: nn.Module, images: torch.Tensor) -> list[HeadDistance]:
    """ConViT's mean attention distance per layer and head, exactly from the window weights.

    ``images``: a batch ``[B, 3, H, W]``. Raises a ValueError naming the model when it has no mixer with
    attention weights.
    """
    mixers = attention_mixers(model)
    if not mixers:
        raise ValueError(
            f"mean_attention_distance: {type(model).__name__} has no MSA-Conv attention mixer ({NO_WEIGHTS}); "
            f"use a model built with token_mixer='msa_conv' (e.g. tic_nano)"
        )
    was_training = model.training
    model.eval()
    try:
        inputs = _capture_inputs(model, mixers, images)
    finally:
        model.train(was_training)
    rows = []
    for name, mixer in mixers.items():
        if name not in inputs:
            continue  # a mixer the forward pass did not reach (e.g. an unused branch)
        x = inputs[name]
        H, W = x.shape[-2:]
        weights = mixer.attention_weights(x).double()  # [B, h, Ho, Wo, K+M]
        dy, dx = key_displacements(mixer, H, W)
        dist = torch.sqrt(dy * dy + dx * dx)  # [h, Ho, Wo, K+M]
        per_head = (weights * dist[None]).sum(-1).mean(dim=(0, 2, 3))  # [h]
        reduction = images.shape[-2] / H
        for h, d in enumerate(per_head.tolist()):
            rows.append(HeadDistance(name, h, d, d * reduction, (int(H), int(W)), reduction))
    return rows


def scatter_window(mixer: MSAttention2d, weights: torch.Tensor, height: int, width: int, query: tuple[int, int]) -> torch.Tensor:
    """The weights of one query spread onto the map: ``[heads, H, W]`` (IPM tokens spread over their cells).

    ``weights``: ``[heads, H_out, W_out, K + M]`` of one image; ``query``: ``(row, col)`` in output coordinates.
    """
    yo, xo = query
    a = mixer.attn
    sh, sw = a.attn_stride
    dy, dx = key_displacements(mixer, height, width)
    heads, K = a.num_heads, a.kernel_size[0] * a.kernel_size[1]
    out = torch.zeros(heads, height, width, dtype=torch.float64)
    w = weights[:, yo, xo].double()  # [h, K+M]
    for h in range(heads):
        for n in range(K):
            y = int(round(yo * sh + float(dy[h, yo, xo, n])))
            x = int(round(xo * sw + float(dx[h, yo, xo, n])))
            if a.border in ("zeros", "mask") and (a.shift is None or a.shift.mode != "kv"):
                if not (0 <= y < height and 0 <= x < width):
                    continue  # a zero key outside the image: its weight has nowhere to go
            out[h, y % height, x % width] += w[h, n]
    pool = a.inter_pool
    if pool is not None and pool.mode == "grid":
        gh, gw = pool.grid_size(height, width)
        for i in range(gh):
            r0, r1 = i * height // gh, -(-(i + 1) * height // gh)
            for j in range(gw):
                c0, c1 = j * width // gw, -(-(j + 1) * width // gw)
                cell = w[:, K + i * gw + j] / ((r1 - r0) * (c1 - c0))
                out[:, r0:r1, c0:c1] += cell[:, None, None]
    return out


@torch.no_grad()
def attention_map(model: nn.Module, image: torch.Tensor, layer: str, pixel: tuple[int, int]) -> torch.Tensor:
    """Attention of the query nearest to image ``pixel`` (row, col) in ``layer``: ``[heads, H_map, W_map]``."""
    mixers = attention_mixers(model)
    if layer not in mixers:
        from .._errors import unknown_name
        raise unknown_name("attention_map", "layer", layer, list(mixers) or ["(none: " + NO_WEIGHTS + ")"])
    x = _capture_inputs(model.eval(), {layer: mixers[layer]}, image[None] if image.dim() == 3 else image[:1])[layer]
    H, W = x.shape[-2:]
    mixer = mixers[layer]
    weights = mixer.attention_weights(x)[0]  # [h, Ho, Wo, K+M]
    Ho, Wo = weights.shape[1:3]
    img_h, img_w = image.shape[-2:]
    sh, sw = mixer.attn.attn_stride
    yo = min(int(pixel[0] * H / img_h) // sh, Ho - 1)
    xo = min(int(pixel[1] * W / img_w) // sw, Wo - 1)
    return scatter_window(mixer, weights, H, W, (yo, xo))
