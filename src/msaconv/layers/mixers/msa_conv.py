"""``msa_conv``: MSA-Conv window attention as a token mixer (TiC, arXiv 2310.04134).

Computation: 1x1 qkv, softmax over each pixel's k x k (dilated) window of q.k, weighted sum of v,
1x1 projection. Cost: 4*N*K*C FLOPs for the core plus 8*N*C^2 for the projections, linear in N = H*W.
New resolution: nothing to change (no positional term); see :class:`msaconv.layers.MSAttention2d`.
Options (passed through ``get_token_mixer("msa_conv", dim, num_heads=..., **options)``): ``kernel_size``,
``dilation``, ``border``, ``qkv_bias``, ``attn_drop``, ``proj_drop``, ``backend``, and TiC's
``shift=`` (MDCSM: ``'kv'`` default reading, ``'input'`` alternative) and ``inter_pool=`` (IPM:
``'grid'`` default reading, ``'local'`` alternative); see :mod:`msaconv.layers.shift_pool`.

Fidelity: TiC (arXiv 2310.04134); the authors' code is not available to us, so the operator follows the
paper's description and the library's own design notes: the window attention itself is the paper's,
while every detail of MDCSM and IPM is our reading (the abstract names them and their aim only), each
with an alternative behind a ``mode`` switch.
"""

from __future__ import annotations

from ..msa_conv import MSAttention2d
from ..registry import register_token_mixer


@register_token_mixer("msa_conv")
def msa_conv(dim: int, num_heads: int = 1, **options) -> MSAttention2d:
    """:class:`msaconv.layers.MSAttention2d` as a token mixer.

    Fidelity: TiC (arXiv 2310.04134), authors' code not available to us; MDCSM and IPM are our reading
    (see the module docstring).
    """
    return MSAttention2d(dim, num_heads=num_heads, **options)
