"""Parity of our token mixers with timm's modules of the same papers: copy timm's weights, match outputs.

Run in the timm stage: ``python -m pytest -m timm tests/layers/test_mixers_timm.py``. Where our design
deliberately differs (halo's default masked border), the difference itself is tested.
"""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

from msaconv.layers import get_token_mixer  # noqa: E402

pytestmark = pytest.mark.timm


def _randomise(m: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        for name, b in m.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _map(t: torch.Tensor, H: int, W: int) -> torch.Tensor:
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], H, W)


def _halo_pair(dim=32, heads=4, block=4, halo=2):
    from timm.layers.halo_attn import HaloAttn

    ref = HaloAttn(dim, num_heads=heads, block_size=block, halo_size=halo).eval()
    _randomise(ref)
    ours = get_token_mixer("halo", dim, num_heads=heads, block_size=block, halo_size=halo, border="zeros",
                           proj=False).eval()
    d = dim // heads
    with torch.no_grad():
        ours.q.weight.copy_(ref.q.weight)
        # timm's kv channels are per head [k_h (d), v_h (d)]; ours are [k (all heads), v (all heads)]
        w = ref.kv.weight.reshape(heads, 2, d, dim, 1, 1).transpose(0, 1).reshape(2 * dim, dim, 1, 1)
        ours.kv.weight.copy_(w)
        ours.rel_height.copy_(ref.pos_embed.height_rel)
        ours.rel_width.copy_(ref.pos_embed.width_rel)
    return ref, ours


@pytest.mark.parametrize("size", [(8, 8), (12, 8)])
def test_halo_matches_timm_haloattn(size):
    ref, ours = _halo_pair()
    x = torch.randn(2, 32, *size)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_halo_default_mask_differs_from_timm_only_at_the_border():
    """Deliberate: our default masks outside keys (timm gives them zero vectors that still take mass).

    Blocks whose windows lie inside the image agree exactly; border blocks differ.
    """
    ref, ours = _halo_pair()
    ours.border = "mask"
    x = torch.randn(1, 32, 16, 16)
    a, b = ours(x), ref(x)
    # block size 4, halo 2: the window of block (1, 1) spans pixels 2..9, inside the 16x16 map
    torch.testing.assert_close(a[..., 4:12, 4:12], b[..., 4:12, 4:12], rtol=1e-4, atol=1e-4)
    assert (a[..., :4, :4] - b[..., :4, :4]).abs().max() > 1e-3


@pytest.mark.parametrize("heads", [4, 9])
def test_gpsa_matches_timm_convit_gpsa(heads):
    from timm.models.convit import GPSA

    dim = 36
    ref = GPSA(dim, num_heads=heads, locality_strength=1.0).eval()
    ref.local_init()
    ours = get_token_mixer("gpsa", dim, num_heads=heads).eval()
    # the local init alone must agree (same offsets, same strength)
    torch.testing.assert_close(ours.pos_proj.weight, ref.pos_proj.weight)
    torch.testing.assert_close(ours.v.weight, ref.v.weight)
    _randomise(ref, seed=heads)
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if k != "rel_indices"})
    x = torch.randn(2, dim, 6, 6)  # timm's GPSA assumes a square token grid
    torch.testing.assert_close(ours(x), _map(ref(_tokens(x)), 6, 6), rtol=1e-4, atol=1e-5)


def test_gpsa_nonsquare_differs_from_timm_by_design():
    """timm's rel_indices assume sqrt(N) x sqrt(N); ours rebuild them from (H, W), so an 8x2 map
    (N = 16, same as 4x4) gets different positional scores from timm's and the real geometry."""
    from timm.models.convit import GPSA

    ref = GPSA(16, num_heads=4).eval()
    ref.local_init()
    ours = get_token_mixer("gpsa", 16, num_heads=4).eval()
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if k != "rel_indices"})
    x = torch.randn(1, 16, 8, 2)
    assert (ours(x) - _map(ref(_tokens(x)), 8, 2)).abs().max() > 1e-3
    # and ours on 8x2 equals the positional geometry of an 8x2 grid: token (0,0) -> (1,0) is dy = 1
    from msaconv.layers.mixers.gpsa import rel_indices

    r = rel_indices(8, 2)
    assert r[0, 2].tolist() == [0.0, 1.0, 1.0]


def test_channel_matches_timm_davit_channel_attention():
    from timm.models.davit import ChannelAttention

    dim, heads = 32, 4
    ref = ChannelAttention(dim, num_heads=heads).eval()
    _randomise(ref)
    ours = get_token_mixer("channel", dim, num_heads=heads).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, dim, 7, 5)
    torch.testing.assert_close(ours(x), _map(ref(_tokens(x)), 7, 5), rtol=1e-4, atol=1e-5)


def test_shsa_matches_timm_shvit_shsa():
    shvit = pytest.importorskip("timm.models.shvit")
    dim, pdim, qk = 32, 8, 16
    ref = shvit.SHSA(dim, qk, pdim).eval()
    _randomise(ref)
    ours = get_token_mixer("shsa", dim, partial_dim=pdim, qk_dim=qk).eval()
    sd = {k.replace("proj.1.", "proj."): v for k, v in ref.state_dict().items()}
    ours.load_state_dict(sd)
    x = torch.randn(2, dim, 9, 7)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_shsa_default_init_differs_from_shvit_by_design():
    """SHViT zero-inits the output BN weight (a block-level recipe); our default does not, zero_init=True does."""
    shvit = pytest.importorskip("timm.models.shvit")
    ref = shvit.SHSA(32, 16, 8)
    assert torch.all(ref.proj[1].bn.weight == 0)
    assert torch.all(get_token_mixer("shsa", 32, partial_dim=8).proj.bn.weight == 1)
    assert torch.all(get_token_mixer("shsa", 32, partial_dim=8, zero_init=True).proj.bn.weight == 0)
