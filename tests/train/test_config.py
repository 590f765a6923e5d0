"""Config files and overrides: unknown keys get a did-you-mean, values are YAML (never eval), flags win."""

from __future__ import annotations

import pytest

from msaconv.train import config as C

from train_helpers import run_cli


def test_unknown_key_in_yaml_file(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 0.1\nepochs: 1\n")
    assert run_cli(["train", "--config", f]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'learning_rate'" in err and "did you mean" in err and str(f) in err


def test_unknown_key_in_set():
    with pytest.raises(ValueError, match=r"unknown config key 'epoch'; did you mean 'epochs'\?"):
        C.resolve(sets=["epoch=3"])


def test_precedence_and_yaml_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.5\nepochs: 7\nmodel_kwargs: {drop_path_rate: 0.1}\n")
    cfg = C.resolve(str(f), ["lr=0.25", "model_kwargs.depths=[1, 1, 1, 1]", "eval_sizes=[8, 16]"], {"epochs": 2})
    assert cfg.lr == 0.25 and cfg.epochs == 2 and cfg.eval_sizes == [8, 16]
    assert cfg.model_kwargs == {"drop_path_rate": 0.1, "depths": [1, 1, 1, 1]}


def test_values_are_not_evaluated():
    with pytest.raises(ValueError, match="model must be a str"):
        C.resolve(sets=["model=[1, 2]"])
    cfg = C.resolve(sets=["name=__import__('os').system('true')"])
    assert cfg.name == "__import__('os').system('true')"  # a plain string, never executed


@pytest.mark.parametrize("sets,match", [
    (["epochs=0"], r"epochs=0 must be >= 1"),
    (["optimizer=adam"], r"optimizer='adam' is not one of sgd, adamw; did you mean 'adamw'\?"),
    (["lr=-1"], r"lr=-1.0 must be > 0"),
    (["batch_size=abc"], r"batch_size must be a int, got 'abc'"),
    (["nokey"], r"--set: expected key=value"),
])
def test_bad_values(sets, match):
    with pytest.raises(ValueError, match=match):
        C.resolve(sets=sets)


def test_every_recipe_parses():
    names = C.list_recipes()
    assert {"tic_nano", "tic_micro", "tic_tiny", "tic_small", "tic_base"} <= set(names)
    for n in names:
        cfg = C.resolve(n)
        assert cfg.model.startswith("tic_")


def test_null_in_model_kwargs_reaches_the_model_config():
    """``--set model_kwargs.shift=null`` turns MDCSM off (create_model alone would drop the None, timm's rule)."""
    from msaconv.models import create_model_from_config

    cfg = C.resolve(sets=["model_kwargs.shift=null", "model_kwargs.inter_pool=false"])
    assert cfg.model_kwargs == {"shift": None, "inter_pool": False}
    m = create_model_from_config("tic_nano", cfg.model_kwargs, 10)
    mixers = [mod for mod in m.modules() if type(mod).__name__ == "MSAttention2d"]
    assert mixers and all(x.shift is None and x.inter_pool is None for x in mixers)
    default = create_model_from_config("tic_nano", {}, 10)
    assert all(type(x).__name__ != "MSAttention2d" or x.shift is not None for x in default.modules())
