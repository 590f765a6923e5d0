"""``msa_conv2d``: check once, choose a backend, run.

See :mod:`msaconv.ops.shapes` for the exact window rules.
"""

from __future__ import annotations

import torch

from . import backends as _backends
from . import library as _library
from ._checks import Problem, check_msa_conv2d
from .backends import choose_backend, has_explicit_backward
from .library import _to_layout

_FN = "msa_conv2d"


def _use_custom_op(backend: str | None) -> bool:
    """The custom op runs automatic choice and every backend with an explicit backward."""
    if backend is None:
        return True
    be = _backends.BACKENDS.get(backend)
    return be is not None and has_explicit_backward(be)


def msa_conv2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    stride: int | tuple[int, int] = 1,
    border: str = "zeros",
    scale: float | None = None,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    backend: str | None = None,
    layout: str = "bhwd",
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Multi-head self-attention inside a sliding window (MSA-Conv, arXiv 2310.04134).

    Each query pixel attends to the ``K = kh*kw`` keys of its (dilated) window, plus any ``extra_k``:
    ``out_p = sum_n softmax_n(scale * <q_p, k_{p+o_n}>) * v_{p+o_n}``. There is no positional term, so
    the op works at any image size.

    Args:
        q, k, v: ``[B, heads, H, W, head_dim]`` (``layout='bhwd'``) or ``[B, heads, head_dim, H, W]``
            (``layout='bhdhw'``, what a 1x1-conv projection of an NCHW map gives for free).
        kernel_size: window size, an int or ``(kh, kw)``; even and strip (``(5, 1)``) kernels work.
        dilation: spacing of the window's slots, int or pair.
        stride: queries only at ``(sh*i, sw*j)``; ``H_out = (H - 1)//sh + 1``.
        border: what a window that leaves the image sees: ``'zeros'`` (zero keys and values that still
            take softmax mass, the authors' op), ``'mask'`` (outside slots left out), ``'clamp'``
            (NATTEN's rule: the window slides inward; needs ``H, W >= kernel*dilation``) or
            ``'circular'`` (the image wraps around).
        scale: logit scale, default ``head_dim ** -0.5``.
        extra_k, extra_v: ``[B, heads, M, head_dim]`` keys/values every query sees besides its window,
            in the same softmax (always this shape, in either layout).
        backend: None picks the fastest that can run; a name forces it (see :func:`available_backends`).
        layout: ``'bhwd'`` or ``'bhdhw'``; the output uses the same layout.
        dropout_p: attention dropout on the weights (pass 0 at evaluation, as with SDPA).

    Returns:
        ``[B, heads, H_out, W_out, head_dim]`` (or ``[B, heads, head_dim, H_out, W_out]``), q's dtype.
    """
    pb = check_msa_conv2d(_FN, q, k, v, kernel_size, dilation, stride, border, scale, extra_k, extra_v,
                          layout, dropout_p)
    if pb.extra == 0:
        extra_k = extra_v = None
    Ho, Wo = pb.out_size
    if pb.batch == 0:
        shape = (0, pb.heads, Ho, Wo, pb.head_dim) if pb.layout == "bhwd" else (0, pb.heads, pb.head_dim, Ho, Wo)
        return q.new_zeros(shape) + (q.sum() + k.sum() + v.sum()) * 0  # keeps the autograd graph
    if pb.dropout_p == 0 and _use_custom_op(backend):
        # one torch.library node (compiles without graph breaks), which the backward reuses
        if torch.compiler.is_compiling():  # traced: sizes may be symbolic, so the op chooses when it runs
            return _library.msa_conv2d_custom(q, k, v, extra_k, extra_v, pb, backend or "", chosen=False)
        be = choose_backend(pb, backend, explicit_backward=True)  # a clear ValueError here, before the op
        return _library.msa_conv2d_custom(q, k, v, extra_k, extra_v, pb, be.name, chosen=True)
    be = choose_backend(pb, backend)
    native = be.layout
    out = be.forward(_to_layout(q, pb.layout, native), _to_layout(k, pb.layout, native),
                     _to_layout(v, pb.layout, native), extra_k, extra_v, pb)
    return _to_layout(out, native, pb.layout).contiguous()


def msa_conv2d_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    stride: int | tuple[int, int] = 1,
    border: str = "zeros",
    scale: float | None = None,
    extra_k: torch.Tensor | None = None,
    layout: str = "bhwd",
) -> torch.Tensor:
    """The window weights of :func:`msa_conv2d`, ``[B, heads, H_out, W_out, K + M]`` (for analysis).

    Slot ``n < K`` is window slot ``n = i*kw + j`` (offsets: :func:`msaconv.ops.shapes.window_offsets`,
    or the clamp rule); slots ``K..K+M-1`` are the extra keys. Rows sum to 1, except for a query with no
    valid key at all under ``border='mask'`` (all zeros). For 'zeros', weight on outside (zero) keys is
    included. Differentiable; never materialises K copies of k.
    """
    fn = "msa_conv2d_weights"
    pb = check_msa_conv2d(fn, q, k, None, kernel_size, dilation, stride, border, scale, extra_k, None, layout)
    if pb.extra == 0:
        extra_k = None
    from .backends.portable import BACKEND as portable

    return portable.weights(_to_layout(q, pb.layout, "bhwd"), _to_layout(k, pb.layout, "bhwd"), extra_k, pb)


def available_backends(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, str | None]:
    """Whether each backend can run a typical call here: ``{name: None | reason}`` (backends this install
    lacks, such as 'triton' without Triton, last)."""
    q = torch.zeros(1, 1, 8, 8, 4, device=device, dtype=dtype)
    pb = check_msa_conv2d(_FN, q, q, q, 3, 1, 1, "zeros", None, None, None, "bhwd")
    return {**_backends.backend_reasons(pb), **_backends.UNAVAILABLE}
