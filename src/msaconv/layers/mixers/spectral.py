"""``spectral``: a learnable global filter in the Fourier domain (SpectFormer, Patro et al., 2023; GFNet, NeurIPS'21).

Computation: ``X = rFFT2(x)`` (orthonormal), ``X <- X * W`` with a learnable complex filter
``W in C^{C x h x (w/2+1)}`` (one per channel), ``y = irFFT2(X)``. Multiplying spectra is a circular
convolution of each channel with a full-size ``h x w`` kernel, so the mixing is global.

Cost in N = H*W: ``O(N C log N)`` for the two FFTs plus ``N C`` complex products; ``h (w/2+1) C * 2``
parameters.

``num_heads`` is accepted for the common contract and ignored (one filter per channel).

New resolution: the filter has the shape of the map it was built for (``size``), so by default a map of
another size raises a ``ValueError`` naming both sizes (SpectFormer's released code breaks there too).
``resize`` adapts the same weights to a new size:

* ``'kernel'``: go back to the filter's spatial kernel (``irFFT2(W)``), keep it centred, zero-pad or crop
  it to the new size and transform again. The layer stays *the same circular convolution* (exactly, when
  the kernel fits in the new map; otherwise the far offsets are dropped).
* ``'bilinear'``: GFNet-style bilinear interpolation of the real and imaginary parts over the
  (centred) frequency grid: approximate, smooth in frequency.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_token_mixer
from ._common import check_input, check_int, check_pair

RESIZES = (None, "kernel", "bilinear")


def _recentre(k: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A circular kernel ``[..., h, w]`` (offset 0 at index 0) moved to a ``size`` grid, offsets kept."""
    h, w = k.shape[-2:]
    H, W = size
    ks = torch.fft.fftshift(k, dim=(-2, -1))          # offset 0 at (h//2, w//2)
    out = k.new_zeros(*k.shape[:-2], H, W)
    # offsets o with -h//2 <= o < h - h//2 and -H//2 <= o < H - H//2
    ylo, yhi = max(-(h // 2), -(H // 2)), min(h - h // 2, H - H // 2)
    xlo, xhi = max(-(w // 2), -(W // 2)), min(w - w // 2, W - W // 2)
    out[..., ylo + H // 2:yhi + H // 2, xlo + W // 2:xhi + W // 2] = ks[..., ylo + h // 2:yhi + h // 2,
                                                                         xlo + w // 2:xhi + w // 2]
    return torch.fft.ifftshift(out, dim=(-2, -1))


class SpectralFilter2d(nn.Module):
    """GFNet / SpectFormer global filter (spectral gating) on a ``[B, C, H, W]`` map.

    Fidelity: SpectFormer (Patro et al., 2023) compared with the authors' badripatro/SpectFormers
    ``vanilla_architecture/spectformer.py`` (``SpectralGatingNetwork``, GFNet's global filter): matches
    (orthonormal rFFT2, complex weight ``[h, w//2+1, C]`` drawn N(0, 0.02), irFFT2); differences kept: a
    map of another size raises a clear error (theirs fails in the product) and ``resize`` can adapt the weights.
    """

    def __init__(self, dim: int, size=(14, 14), resize: str | None = None, device=None, dtype=None):
        super().__init__()
        cls = "SpectralFilter2d"
        self.dim = check_int(cls, "dim", dim)
        self.size = check_pair(cls, "size", size)
        if resize not in RESIZES:
            raise ValueError(f"{cls}: unknown resize {resize!r}; choose one of None (error at another size), "
                             f"'kernel' or 'bilinear'")
        self.resize = resize
        h, w = self.size
        # GFNet layout: [h, w//2+1, C, 2] (real, imaginary), init N(0, 0.02)
        self.complex_weight = nn.Parameter(torch.randn(h, w // 2 + 1, dim, 2, device=device, dtype=dtype) * 0.02)

    def filter(self, H: int, W: int) -> torch.Tensor:
        """The complex filter ``[C, H, W//2+1]`` for an ``H x W`` map (resized if needed and allowed)."""
        w: torch.Tensor = self.complex_weight
        if w.dtype not in (torch.float32, torch.float64):  # no complex bfloat16; half FFTs are GPU-only
            w = w.float()
        wt = torch.view_as_complex(w).permute(2, 0, 1)                              # [C, h, w//2+1]
        if (H, W) == self.size:
            return wt
        if self.resize is None:
            raise ValueError(
                f"SpectralFilter2d: this filter was built for {self.size[0]}x{self.size[1]} maps, got {H}x{W}; "
                f"build it with size=({H}, {W}), or pass resize='kernel' (same circular convolution) or "
                f"resize='bilinear' (interpolated filter) to adapt its weights"
            )
        if self.resize == "kernel":
            k = torch.fft.irfft2(wt, s=self.size)                                       # [C, h, w] real kernel
            return torch.fft.rfft2(_recentre(k, (H, W)))
        # bilinear over the centred frequency grid (rows are full-spectrum, columns half-spectrum)
        ri = torch.view_as_real(torch.fft.fftshift(wt, dim=-2)).permute(0, 3, 1, 2)   # [C, 2, h, w//2+1]
        ri = F.interpolate(ri, size=(H, W // 2 + 1), mode="bilinear", align_corners=True)
        return torch.fft.ifftshift(torch.view_as_complex(ri.permute(0, 2, 3, 1).contiguous()), dim=-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = check_input("SpectralFilter2d", x, self.dim)
        wt = self.filter(H, W)
        if B == 0:  # FFT libraries reject empty batches; the output is empty too
            return x * wt.real.sum() * 0
        X = torch.fft.rfft2(x if x.dtype in (torch.float32, torch.float64) else x.float(), norm="ortho")
        y = torch.fft.irfft2(X * wt, s=(H, W), norm="ortho")
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}, resize={self.resize!r}"


@register_token_mixer("spectral", paper="SpectFormer (2023) / GFNet (NeurIPS'21)")
def spectral(dim: int, num_heads: int = 1, **options) -> SpectralFilter2d:
    return SpectralFilter2d(dim, **options)
