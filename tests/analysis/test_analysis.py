"""Analysis tools on small models whose answers are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from msaconv.analysis import (attention_map, effective_receptive_field, head_importance, key_displacements,
                              mass_radius, mean_attention_distance, scatter_window)
from msaconv.layers import MSAttention2d


class Tiny(nn.Module):
    """stem (stride 2) -> MSAttention2d -> pool -> linear, with a timm-style feature_info."""

    def __init__(self, dim=8, heads=2, **mixer):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, stride=2, padding=1)
        self.mixer = MSAttention2d(dim, heads, **mixer)
        self.head = nn.Linear(dim, 3)
        self.feature_info = [dict(module="stem", num_chs=dim, reduction=2), dict(module="mixer", num_chs=dim, reduction=2)]

    def forward(self, x):
        return self.head(self.mixer(self.stem(x)).mean((2, 3)))


def _uniform(m: MSAttention2d):
    """q = k = 0: every logit is 0, so the weights are uniform over the window."""
    with torch.no_grad():
        m.attn.qkv.weight.zero_()
        m.attn.qkv.bias.zero_()


def test_displacements_follow_the_border_rule():
    m = MSAttention2d(4, 1, kernel_size=3, dilation=2)
    dy, dx = key_displacements(m, 9, 8)
    assert dy.shape == (1, 9, 8, 9)
    assert sorted(set(dy.flatten().tolist())) == [-2.0, 0.0, 2.0]
    c = MSAttention2d(4, 1, kernel_size=3, border="clamp")
    dy, dx = key_displacements(c, 9, 8)
    assert dy[0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # the corner window slides inward
    assert dx[0, 8 - 1, 7].tolist() == [-2, -1, 0] * 3


def test_mdcsm_heads_look_half_a_map_away_and_ipm_cells_are_centred():
    m = MSAttention2d(8, 4, kernel_size=3, shift=dict(mode="kv", directions=4, fraction=0.25, local=0.5))
    dy, dx = key_displacements(m, 8, 8)
    centre = 4  # slot (1, 1) is the window centre
    assert dy[0, 3, 3, centre] == 0 and dx[0, 3, 3, centre] == 0  # local head
    assert {abs(float(dy[h, 3, 3, centre])) + abs(float(dx[h, 3, 3, centre])) for h in (2, 3)} == {2.0}
    p = MSAttention2d(4, 1, kernel_size=3, inter_pool=dict(mode="grid", grid=2))
    dy, dx = key_displacements(p, 4, 6)
    assert dy.shape[-1] == 9 + 4
    # query (0, 0): cells centred at rows 0.5 / 2.5 and cols 1 / 4
    assert dy[0, 0, 0, 9:].tolist() == [0.5, 0.5, 2.5, 2.5] and dx[0, 0, 0, 9:].tolist() == [1.0, 4.0, 1.0, 4.0]


def test_mean_distance_of_uniform_attention_is_exact():
    torch.manual_seed(0)
    model = Tiny(kernel_size=3).eval()
    _uniform(model.mixer)
    rows = mean_attention_distance(model, torch.randn(2, 3, 16, 12))
    want = (4 * 1 + 4 * math.sqrt(2)) / 9  # 'zeros': the outside slots keep their offsets and weights
    assert len(rows) == 2
    for r in rows:
        assert r.distance == pytest.approx(want, abs=1e-6)  # float32 weights
        assert r.distance_px == pytest.approx(2 * want) and r.map_size == (8, 6)


def test_mean_distance_matches_the_scattered_map():
    torch.manual_seed(1)
    model = Tiny(kernel_size=5, border="mask", dilation=1).eval()
    x = torch.randn(1, 3, 14, 14)
    rows = mean_attention_distance(model, x)
    feats = model.stem(x)
    w = model.mixer.attention_weights(feats)[0]
    total = torch.zeros(2, dtype=torch.float64)
    for yo in range(7):
        for xo in range(7):
            m = scatter_window(model.mixer, w, 7, 7, (yo, xo))
            yy, xx = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
            d = torch.sqrt((yy - yo) ** 2 + (xx - xo) ** 2).double()
            total += (m * d).sum((1, 2))
    torch.testing.assert_close(total / 49, torch.tensor([r.distance for r in rows], dtype=torch.float64))


def test_attention_map_sums_to_one_per_head():
    torch.manual_seed(2)
    model = Tiny(kernel_size=3, border="circular", inter_pool="grid")
    maps = attention_map(model, torch.randn(3, 16, 16), "mixer", (5, 9))
    assert maps.shape == (2, 8, 8)
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"attention_map: unknown layer 'mixr'; did you mean 'mixer'\?"):
        attention_map(model, torch.randn(3, 16, 16), "mixr", (0, 0))


def test_erf_of_a_convolution_stays_inside_its_support():
    torch.manual_seed(3)
    model = Tiny(kernel_size=7)
    erfs = effective_receptive_field(model, torch.randn(2, 3, 32, 32))
    stem, mixer = erfs
    nz = (stem.map > 0).nonzero()
    # centre feature (8, 8) of a stride-2 3x3 conv reads input rows/cols 15..17
    assert nz[:, 0].min() >= 15 and nz[:, 0].max() <= 17
    assert mixer.radius[0.9] > stem.radius[0.9]  # a 7x7 attention window reaches further
    assert stem.map.sum() == pytest.approx(1.0)


def test_mass_radius_of_a_delta_and_of_a_ring():
    e = torch.zeros(9, 9, dtype=torch.float64)
    e[4, 4] = 1
    assert mass_radius(e, 0.5) == 0
    e[4, 7] = 1
    assert mass_radius(e, 0.9) == 3


def test_head_importance_finds_a_dead_head():
    torch.manual_seed(4)
    model = Tiny(dim=8, heads=2, kernel_size=3)
    with torch.no_grad():
        model.mixer.proj.weight[:, 4:] = 0  # head 1 (channels 4..7) no longer reaches the output
    data = [(torch.randn(4, 3, 12, 12), torch.randint(0, 3, (4,))) for _ in range(2)]
    rows = head_importance(model, data)
    dead = [r for r in rows if r.head == 1][0]
    live = [r for r in rows if r.head == 0][0]
    assert dead.top1_drop == 0 and dead.loss_rise == pytest.approx(0, abs=1e-9) and dead.grad_importance == 0
    assert live.grad_importance > 0 and live.loss_rise != 0


def test_models_without_attention_say_so():
    with pytest.raises(ValueError, match=r"has no MSA-Conv attention mixer \(this mixer has no spatial attention weights\)"):
        mean_attention_distance(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"head_importance: Sequential has no multi-head MSA-Conv mixer"):
        head_importance(nn.Sequential(nn.Conv2d(3, 4, 3)), [(torch.randn(1, 3, 8, 8), torch.tensor([0]))])
