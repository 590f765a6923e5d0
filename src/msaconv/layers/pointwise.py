"""``Pointwise2d``: a 1x1 convolution computed as a matrix product.

The projections of attention (q/k/v, output) and the MLP of every block are 1x1 convolutions on NCHW maps.
On CPU, oneDNN's 1x1 convolution is slow on the small maps of the CIFAR-size models (8x8 down to 2x2 at
batch 128): a ``linear`` over a channels-last view of the same tensor runs the same product 1.2-2x faster
forward and backward.
The parameters, their names and shapes, the ``state_dict`` and ``isinstance(m, nn.Conv2d)`` are those of
``nn.Conv2d(in, out, 1)``, so checkpoints and weight-init rules are unchanged.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


class Pointwise2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1, bias=bias)`` computed as one matrix product.

    ``channels_first=False`` (default): ``linear`` over a channels-last view; the output has channels-last
    strides (a free view). ``channels_first=True``: ``weight @ x.flatten(2)`` per image, so the output is
    NCHW-contiguous, which is what a consumer that reads whole ``[C, H, W]`` planes (the fused MSA-Conv
    kernel reads ``[head_dim, H, W]`` planes of q, k and v) can take without a copy.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 channels_first: bool = False):
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)
        self.channels_first = bool(channels_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under torch.fx tracing x has no concrete rank: the traced graph takes the batched 4-D path
        if torch.jit.is_scripting():
            tracing = False
        else:
            tracing = isinstance(x, torch.fx.Proxy)
        if not tracing and x.dim() != 4:  # nn.Conv2d also takes unbatched [C, H, W]
            return self._conv_forward(x, self.weight, self.bias)  # what nn.Conv2d.forward runs (scriptable)
        w = self.weight.flatten(1)
        bias = self.bias  # a local: TorchScript refines Optional locals, not attributes
        if self.channels_first:
            B, _, H, W = x.shape
            # bmm over an expanded (not copied) weight: matmul would fold the batch and transpose back
            if bias is not None:
                y = torch.baddbmm(bias[None, :, None], w.expand(B, -1, -1), x.reshape(B, x.shape[1], H * W))
            else:
                y = torch.bmm(w.expand(B, -1, -1), x.reshape(B, x.shape[1], H * W))
            return y.view(B, w.shape[0], H, W)
        return F.linear(x.permute(0, 2, 3, 1), w, bias).permute(0, 3, 1, 2)
