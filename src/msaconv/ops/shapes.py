"""Window geometry shared by the ops, the layers, the docs and the tests.

The rules. A query at output position ``(yo, xo)`` sits at input position
``(sh*yo, sw*xo)``. Slot ``n = i*kw + j`` of its window reads the key at

- ``border in ('zeros', 'mask')``: ``(y + i*dh - dh*(kh-1)//2, x + j*dw - dw*(kw-1)//2)``, or nothing
  when that leaves the image (a zero key/value for 'zeros', a slot left out of the softmax for 'mask');
- ``border == 'circular'``: the same offsets, taken modulo H and W (the image is a torus);
- ``border == 'clamp'``: NATTEN's neighbourhood rule. Positions ``y ≡ r (mod d)`` form a dilation group
  of ``Lg = ceil((H - r)/d)`` pixels; ``y`` is member ``g = y // d`` of it, and its window is the ``k``
  consecutive members starting at ``clamp(g - (k-1)//2, 0, Lg - k)``: it slides inward at the border
  so that every query sees ``k`` real keys. Needs ``H >= k*d``. (For odd ``k`` this is exactly NATTEN's
  ``get_window_start``; for even ``k`` the query sits at member ``(k-1)//2`` of its window, as in the
  'zeros' mode at dilation 1.)

All four are *separable*: slot ``(i, j)`` reads row ``R[i, yo]`` and column ``C[j, xo]``, valid when
both axis tables say so. :func:`axis_index` builds those per-axis tables.
"""

from __future__ import annotations

import torch


def output_size(height: int, width: int, stride: tuple[int, int]) -> tuple[int, int]:
    """``(H_out, W_out)`` of a stride-``(sh, sw)`` MSA-Conv: queries at ``(sh*i, sw*j)``."""
    return (height - 1) // stride[0] + 1, (width - 1) // stride[1] + 1


def pad_before(kernel: int, dilation: int) -> int:
    """How far the window reaches back from its query (rows above, columns to the left)."""
    return dilation * (kernel - 1) // 2


def window_offsets(kernel: tuple[int, int], dilation: tuple[int, int]) -> list[tuple[int, int]]:
    """The ``K`` offsets ``(dy, dx)`` of the 'zeros'/'mask'/'circular' window, row-major (``F.unfold``'s order)."""
    (kh, kw), (dh, dw) = kernel, dilation
    top, left = pad_before(kh, dh), pad_before(kw, dw)
    return [(i * dh - top, j * dw - left) for i in range(kh) for j in range(kw)]


def clamp_start(group_index: torch.Tensor, group_len: torch.Tensor, kernel: int) -> torch.Tensor:
    """First member of the clamped window of member ``g`` of a dilation group of length ``Lg``."""
    start = group_index - (kernel - 1) // 2
    return torch.minimum(start.clamp(min=0), group_len - kernel)


def axis_index(length: int, kernel: int, dilation: int, stride: int, border: str,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis window tables ``(index, valid)``, each ``[kernel, L_out]``.

    ``index[i, o]`` is the input position read by slot ``i`` of output ``o`` (clamped into ``[0, L)``
    where ``valid`` is False, so it is always safe to gather); ``valid[i, o]`` tells whether that
    position is inside the image ('zeros' and 'mask'; always True for 'clamp' and 'circular').
    """
    out = (length - 1) // stride + 1
    y = torch.arange(out, device=device) * stride  # [L_out] query positions
    slots = torch.arange(kernel, device=device)[:, None]  # [k, 1]
    if border == "clamp":
        r, g = y % dilation, y // dilation
        group_len = (length - r + dilation - 1) // dilation
        pos = (clamp_start(g, group_len, kernel)[None, :] + slots) * dilation + r[None, :]
        return pos, torch.ones_like(pos, dtype=torch.bool)
    pos = y[None, :] + slots * dilation - pad_before(kernel, dilation)  # [k, L_out]
    if border == "circular":
        return pos % length, torch.ones_like(pos, dtype=torch.bool)
    valid = (pos >= 0) & (pos < length)
    return pos.clamp(0, length - 1), valid


def slot_index(height: int, width: int, kernel: tuple[int, int], dilation: tuple[int, int],
               stride: tuple[int, int], border: str,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat key indices and validity for every slot: ``(index [K, P], valid [K, P])``, ``P = H_out*W_out``.

    ``index`` points into the flattened ``H*W`` map; slot ``n = i*kw + j``.
    """
    ri, rv = axis_index(height, kernel[0], dilation[0], stride[0], border, device)  # [kh, Ho]
    ci, cv = axis_index(width, kernel[1], dilation[1], stride[1], border, device)  # [kw, Wo]
    index = ri[:, None, :, None] * width + ci[None, :, None, :]  # [kh, kw, Ho, Wo]
    valid = rv[:, None, :, None] & cv[None, :, None, :]
    kk = kernel[0] * kernel[1]
    return index.reshape(kk, -1), valid.reshape(kk, -1)
