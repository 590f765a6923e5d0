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
    strides (a free view). ``channels_first=True``: for an NCHW-contiguous ``x``, ``weight @ x.flatten(2)``
    per image, so the output is NCHW-contiguous too, without the copy that ``linear`` would make of x; a
    channels-last ``x`` takes the ``linear`` path all the same (it is a free view there, and ``bmm`` would
    copy x, and in the backward sum a weight gradient per image).
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
        if self.channels_first and (tracing or not _channels_last(x)):  # a traced graph: the NCHW path
            B, _, H, W = x.shape
            # bmm over an expanded (not copied) weight: matmul would fold the batch and transpose back
            if bias is not None:
                y = torch.baddbmm(bias[None, :, None], w.expand(B, -1, -1), x.reshape(B, x.shape[1], H * W))
            else:
                y = torch.bmm(w.expand(B, -1, -1), x.reshape(B, x.shape[1], H * W))
            return y.view(B, w.shape[0], H, W)
        return F.linear(x.permute(0, 2, 3, 1), w, bias).permute(0, 3, 1, 2)


def _channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D ``x`` is laid out channels-last (and not also NCHW-contiguous, as a 1x1 map or one channel is)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
