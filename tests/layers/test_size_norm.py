"""SizeBatchNorm2d: BatchNorm2d with running statistics per training map size."""

import pytest
import torch
from torch import nn

from msaconv.layers import SizeBatchNorm2d


def _batches(sizes, seed=0, c=5):
    g = torch.Generator().manual_seed(seed)
    # each size has its own mean and scale, as real maps of different sizes do
    return [torch.randn(6, c, s, s, generator=g, dtype=torch.float64) * (1 + s / 10) + s / 8 for s in sizes]


def _pair(slots=3, momentum=0.1):
    torch.manual_seed(1)
    sbn = SizeBatchNorm2d(5, slots, momentum=momentum).double()
    with torch.no_grad():
        sbn.weight.uniform_(0.5, 1.5)
        sbn.bias.uniform_(-0.5, 0.5)
    bn = nn.BatchNorm2d(5, momentum=momentum).double()
    bn.load_state_dict({k: v for k, v in sbn.state_dict().items() if not k.startswith("slot_")})
    return sbn, bn


def test_one_training_size_is_batchnorm2d():
    sbn, bn = _pair()
    for x in _batches([8] * 5):
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = sbn(x1), bn(x2)
        torch.testing.assert_close(y1, y2)
        y1.sum().backward()
        y2.sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(sbn.weight.grad, bn.weight.grad)
    torch.testing.assert_close(sbn.running_mean, bn.running_mean)
    torch.testing.assert_close(sbn.running_var, bn.running_var)
    assert sbn.trained_sizes() == [(8, 8)] and int(sbn.num_batches_tracked) == 5
    sbn.eval(), bn.eval()
    for s in (4, 8, 13):  # every evaluation size uses the one trained set
        x = _batches([s], seed=s)[0]
        torch.testing.assert_close(sbn(x), bn(x))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_each_slot_averages_its_own_size_and_the_shared_one_all(momentum):
    sizes = [6, 8, 10, 8, 6, 10, 10, 8, 6, 6]
    xs = _batches(sizes)
    sbn, bn_all = _pair(momentum=momentum)
    for x in xs:
        sbn(x)
        bn_all(x)
    torch.testing.assert_close(sbn.running_mean, bn_all.running_mean)  # what nn.BatchNorm2d would hold
    torch.testing.assert_close(sbn.running_var, bn_all.running_var)
    assert sbn.trained_sizes() == [(6, 6), (8, 8), (10, 10)]
    for i, s in enumerate((6, 8, 10)):
        _, bn_s = _pair(momentum=momentum)
        for x, t in zip(xs, sizes):
            if t == s:
                bn_s(x)
        torch.testing.assert_close(sbn.slot_mean[i], bn_s.running_mean)
        torch.testing.assert_close(sbn.slot_var[i], bn_s.running_var)
        assert int(sbn.slot_batches[i]) == sizes.count(s)
        sbn.eval(), bn_s.eval()
        x = _batches([s], seed=9)[0]
        torch.testing.assert_close(sbn(x), bn_s(x))  # evaluated at a trained size: that size's statistics
        sbn.train()


def test_evaluation_takes_the_nearest_trained_size():
    sbn, _ = _pair()
    for x in _batches([6, 8, 12]):
        sbn(x)
    sbn.eval()
    # nearest by the ratio of areas: 7x7 is 49/36 from 6x6 and 64/49 from 8x8 -> 8x8; 10x10: 144/100 < 100/64 -> 12x12
    for s, slot in ((4, 0), (6, 0), (7, 1), (8, 1), (10, 2), (12, 2), (20, 2)):
        x = _batches([s], seed=s)[0]
        ref = nn.functional.batch_norm(x, sbn.slot_mean[slot], sbn.slot_var[slot], sbn.weight, sbn.bias, False, 0.0,
                                       sbn.eps)
        torch.testing.assert_close(sbn(x), ref, msg=f"{s}x{s} should use slot {slot}")
    # a rectangle by its area (100, as 10x10); area 48 is as far from 36 as from 64 (48/36 = 64/48): a tie goes
    # to the larger
    for (h, w), slot in (((5, 20), 2), ((4, 12), 1)):
        x = torch.randn(2, 5, h, w, dtype=torch.float64)
        torch.testing.assert_close(sbn(x), nn.functional.batch_norm(x, sbn.slot_mean[slot], sbn.slot_var[slot],
                                                                    sbn.weight, sbn.bias, False, 0.0, sbn.eps))


def test_untrained_layer_uses_the_shared_statistics():
    sbn, bn = _pair()
    sbn.eval(), bn.eval()
    x = _batches([7])[0]
    torch.testing.assert_close(sbn(x), bn(x))


def test_a_size_beyond_the_slots_is_an_error_naming_them():
    sbn, _ = _pair(slots=2)
    sbn(_batches([6])[0])
    sbn(_batches([8])[0])
    with pytest.raises(RuntimeError, match=r"map size 10x10.*all 2 slots hold other sizes \(6x6, 8x8\).*size_bn"):
        sbn(_batches([10])[0])
    assert sbn.trained_sizes() == [(6, 6), (8, 8)] and int(sbn.num_batches_tracked) == 2  # nothing was changed


@pytest.mark.parametrize("bad", [dict(slots=0), dict(slots=True), dict(slots=2, momentum=1.5), dict(slots=2, momentum=1)])
def test_bad_arguments_name_themselves(bad):
    with pytest.raises(ValueError, match="slots|momentum"):
        SizeBatchNorm2d(4, **bad)
    with pytest.raises(AssertionError, match="4-D"):
        SizeBatchNorm2d(4, 2)(torch.randn(2, 4, 3))


def test_update_bn_reestimates_every_slot():
    sbn, _ = _pair()
    xs = _batches([6, 8, 6, 8])
    for x in xs:
        sbn(x)
    torch.optim.swa_utils.update_bn([xs[0], xs[2]], sbn)  # resets, then a cumulative average over 6x6 only
    assert sbn.trained_sizes() == [(6, 6)]
    both = torch.cat([xs[0], xs[2]])
    torch.testing.assert_close(sbn.slot_mean[0], both.mean((0, 2, 3)))
    torch.testing.assert_close(sbn.running_mean, both.mean((0, 2, 3)))


def test_state_dict_round_trip_channels_last_and_script():
    sbn, _ = _pair()
    for x in _batches([6, 8]):
        sbn(x.contiguous(memory_format=torch.channels_last))
    other = SizeBatchNorm2d(5, 3).double()
    other.load_state_dict(sbn.state_dict())
    sbn.eval(), other.eval()
    x = _batches([8], seed=4)[0]
    torch.testing.assert_close(other(x), sbn(x))
    torch.testing.assert_close(torch.jit.script(other)(x), sbn(x))
    assert "slots=3" in repr(sbn)


def test_evaluation_runs_on_the_meta_device():
    with torch.device("meta"):
        sbn = SizeBatchNorm2d(5, 2).eval()
        y = sbn(torch.empty(2, 5, 6, 6))
    assert y.shape == (2, 5, 6, 6) and y.device.type == "meta"


def test_plain_fx_traces_the_evaluation_path():
    sbn, _ = _pair()
    for x in _batches([6, 8]):
        sbn(x)
    sbn.eval()
    traced = torch.fx.symbolic_trace(sbn)
    for s in (6, 7, 8, 12):  # the traced graph still picks the nearest trained size at every input size
        x = _batches([s], seed=s)[0]
        torch.testing.assert_close(traced(x), sbn(x))
