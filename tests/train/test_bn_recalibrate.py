"""BatchNorm statistics re-estimated at the evaluation size (``bn_recalibrate`` / ``--bn-recalibrate``)."""

from __future__ import annotations

import json

import torch
from torch import nn

from msaconv.data import normalize, to_eval_size
from msaconv.train import distributed as D
from msaconv.train.config import TrainConfig
from msaconv.train.data import Split
from msaconv.train.evaluate import recalibrated
from train_helpers import run_cli

# plain BatchNorm (size_bn=0): one set of running statistics, the case re-estimation is about
CONV = ["--model", "convnet_nano", "--set", "model_kwargs={stem_width: 8, dims: [8, 8, 8], depths: [1, 1, 1], size_bn: 0}",
        "--set", "threads=1", "--set", "eval_sizes=[16, 24]", "--set", "eval_batch_size=40", "--img-size", "16",
        "--limit-train", "96", "--limit-val", "48", "--batch-size", "16", "--epochs", "1", "--no-progress"]


def _split(n: int = 70, size: int = 16, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return Split(["a", "b"], "memory", images, torch.arange(n) % 2)


def test_recalibrated_statistics_are_those_of_the_images_at_that_size_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    model[0].running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = _split()
    cfg = TrainConfig(img_size=16, eval_batch_size=32)  # 70 images: batches of 32, 32, 6, averaged by count
    m = recalibrated(model, split, 24, cfg, D.DistInfo(), images=64)
    for k, v in model.state_dict().items():  # the model passed in is as it was
        assert torch.equal(v, before[k]), k
    order = torch.randperm(70, generator=torch.Generator().manual_seed(0x8EC))[:64]
    x = to_eval_size(normalize(split.images[order], cfg.mean, cfg.std), 24, "resize", 16)
    torch.testing.assert_close(m[0].running_mean, x.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m[0].running_var, x.var((0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-4)
    assert not m.training and m[0].momentum == model[0].momentum  # update_bn restores the momentum
    for k in ("1.weight", "1.bias", "2.weight", "2.bias"):  # only running statistics change
        assert torch.equal(m.state_dict()[k], before[k])
    # the canvas protocol re-estimates on the images as that protocol shows them (zero-padded: smaller mean)
    c = recalibrated(model, split, 24, cfg, D.DistInfo(), images=64, protocol="canvas")
    xc = to_eval_size(normalize(split.images[order], cfg.mean, cfg.std), 24, "canvas", 16)
    torch.testing.assert_close(c[0].running_mean, xc.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_train_and_eval_report_recalibrated_scores_beside_the_trained_ones(tmp_path, capsys):
    assert run_cli(["train", *CONV, "--output", tmp_path, "--name", "r", "--tta", "both",
                    "--bn-recalibrate", "32"]) == 0
    out = capsys.readouterr().out
    assert "recal" in out and "from 32 training images" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    for row in summary["final"]:
        assert row["recal_images"] == 32
        for k in ("top1_recal", "top1_flip_recal"):
            assert 0 <= row[k] <= 100
    # at 24 px the statistics differ from the trained ones, so the recalibrated loss does too
    r24 = next(r for r in summary["final"] if r["img_size"] == 24)
    assert r24["loss_recal"] != r24["loss"]

    assert run_cli(["eval", "--checkpoint", tmp_path / "r", "--img-size", "16", "24", "--limit-val", "48",
                    "--bn-recalibrate", "32", "--json", tmp_path / "e.json"]) == 0
    assert "top1_recal" in capsys.readouterr().out
    doc = json.loads((tmp_path / "e.json").read_text())
    assert [r["recal_images"] for r in doc["results"]] == [32, 32]
    # without the option the rows carry no recalibrated figures
    assert run_cli(["eval", "--checkpoint", tmp_path / "r", "--limit-val", "48", "--json", tmp_path / "p.json"]) == 0
    assert "top1_recal" not in json.loads((tmp_path / "p.json").read_text())["results"][0]


def test_bad_bn_recalibrate_values_are_clear_errors(tmp_path, capsys):
    assert run_cli(["train", *CONV, "--output", tmp_path, "--set", "bn_recalibrate=-5"]) != 0
    err = capsys.readouterr().err
    assert "bn_recalibrate" in err and "-5" in err and ">= 0" in err
    assert run_cli(["train", *CONV, "--output", tmp_path, "--name", "r"]) == 0
    capsys.readouterr()
    assert run_cli(["eval", "--checkpoint", tmp_path / "r", "--limit-val", "8", "--bn-recalibrate", "8",
                    "--recal-data", tmp_path / "nowhere"]) != 0
    assert "--recal-data" in capsys.readouterr().err


def test_one_set_of_statistics_over_several_sizes_is_the_mean_of_the_per_size_ones():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    split = _split()
    cfg = TrainConfig(img_size=16, eval_batch_size=32)  # 64 images: two batches of 32 at each size
    info = D.DistInfo()
    a, b = (recalibrated(model, split, s, cfg, info, images=64) for s in (16, 24))
    mixed = recalibrated(model, split, [16, 24], cfg, info, images=64)
    for i in (0, 2):  # every batch counts the same, so the statistics average the two sizes'
        torch.testing.assert_close(mixed[i].running_mean, (a[i].running_mean + b[i].running_mean) / 2)
        torch.testing.assert_close(mixed[i].running_var, (a[i].running_var + b[i].running_var) / 2)
    assert not torch.allclose(a[2].running_mean, b[2].running_mean)  # the sizes do differ
    single = recalibrated(model, split, [24], cfg, info, images=64)  # a list of one size is that size
    torch.testing.assert_close(single[2].running_var, b[2].running_var)


def test_eval_recalibrates_once_over_recal_sizes_and_names_them(tmp_path, capsys):
    assert run_cli(["train", *CONV, "--output", tmp_path, "--name", "r"]) == 0
    capsys.readouterr()
    assert run_cli(["eval", "--checkpoint", tmp_path / "r", "--img-size", "16", "24", "--limit-val", "48",
                    "--bn-recalibrate", "32", "--recal-sizes", "16", "24", "--json", tmp_path / "m.json"]) == 0
    assert "once over 16, 24 px mixed" in capsys.readouterr().out
    rows = json.loads((tmp_path / "m.json").read_text())["results"]
    assert [r["recal_sizes"] for r in rows] == [[16, 24], [16, 24]]
    assert all(0 <= r["top1_recal"] <= 100 for r in rows)
    # per-size recalibration at 24 px gives other statistics than the mixed ones, so another loss
    assert run_cli(["eval", "--checkpoint", tmp_path / "r", "--img-size", "24", "--limit-val", "48",
                    "--bn-recalibrate", "32", "--json", tmp_path / "s.json"]) == 0
    per_size = json.loads((tmp_path / "s.json").read_text())["results"][0]
    assert "recal_sizes" not in per_size and per_size["loss_recal"] != rows[1]["loss_recal"]
    for bad in (["--recal-sizes", "24"], ["--bn-recalibrate", "8", "--recal-sizes", "0", "24"]):
        assert run_cli(["eval", "--checkpoint", tmp_path / "r", "--limit-val", "8", *bad]) != 0
        err = capsys.readouterr().err
        assert "--recal-sizes" in err and "--bn-recalibrate" in err


def test_per_size_batchnorm_re_estimates_each_size_in_its_own_slot():
    from msaconv.layers import SizeBatchNorm2d

    torch.manual_seed(0)
    model = nn.Sequential(SizeBatchNorm2d(3, 2), nn.Conv2d(3, 4, 3), SizeBatchNorm2d(4, 2)).eval()
    split = _split()
    cfg = TrainConfig(img_size=16, eval_batch_size=32)
    info = D.DistInfo()
    a, b = (recalibrated(model, split, s, cfg, info, images=64) for s in (16, 24))
    mixed = recalibrated(model, split, [16, 24], cfg, info, images=64)
    # over several sizes mixed, each size fills its own slot: what a re-estimate at that size alone gives
    assert mixed[2].trained_sizes() == [(14, 14), (22, 22)]
    torch.testing.assert_close(mixed[2].slot_mean[0], a[2].slot_mean[0])
    torch.testing.assert_close(mixed[2].slot_var[1], b[2].slot_var[0])
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x), b(x))


def test_a_model_without_batchnorm_copies_the_plain_figures_instead_of_evaluating_again():
    """Nothing to re-estimate (LayerNorm / GroupNorm models): the recalibrated figures are the plain ones, copied
    with recal_images 0; they equal what the full re-estimation computes. With BatchNorm it still re-estimates."""
    from msaconv.train.evaluate import evaluate, recalibrated_scores

    torch.manual_seed(0)
    split = _split()
    cfg = TrainConfig(img_size=16, eval_batch_size=32, bn_recalibrate=64)

    def scores(model):
        plain = evaluate(model, split, 24, cfg, D.DistInfo(), None, protocol="canvas")
        full = recalibrated_scores(model, split, split, 24, cfg, D.DistInfo(), "canvas")
        fast = recalibrated_scores(model, split, split, 24, cfg, D.DistInfo(), "canvas", plain=plain)
        return plain, full, fast

    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)]
    plain, full, fast = scores(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(1, 4), *head).eval())
    assert full["recal_images"] == 64 and fast["recal_images"] == 0
    for k in ("top1", "top5", "loss"):
        assert fast[f"{k}_recal"] == full[f"{k}_recal"] == plain[k], k
    bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), *head).eval()
    bn[1].running_mean.fill_(3.0)
    plain, full, fast = scores(bn)
    assert fast["recal_images"] == full["recal_images"] == 64
    assert fast["loss_recal"] == full["loss_recal"] != plain["loss"]
