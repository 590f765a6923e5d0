"""Per-stage and per-block config values: YAML / --set lists read one way only (a pair is a pair, a cycle
is ``{blocks: [...]}``), and the model built from them has the kernels the user wrote."""

from __future__ import annotations

import pytest

from msaconv.models import create_model, create_model_from_config, plain_overrides
from msaconv.train import config as C


def _windows(model) -> list[tuple[int, int]]:
    return [m.attn.kernel_size for m in model.modules() if type(m).__name__ == "MSAttention2d"]


def test_yaml_strip_window_builds_strip_windows_in_every_block(tmp_path):
    f = tmp_path / "strip.yaml"
    f.write_text("model: tic_nano\nmodel_kwargs:\n  kernel_size: [[5, 1], [5, 1], [5, 1]]\n")
    cfg = C.resolve(str(f))
    model = create_model_from_config(cfg.model, cfg.model_kwargs, 10)
    assert _windows(model) == [(5, 1)] * 4  # tic_nano: depths 1, 2, 1; not 5x5 then 1x1


def test_set_strip_window_is_the_same_model_as_the_yaml_form():
    cfg = C.resolve(sets=["model=tic_nano", "model_kwargs.kernel_size=[[5, 1], [1, 5], [3, 3]]"])
    model = create_model_from_config(cfg.model, cfg.model_kwargs, 10)
    assert _windows(model) == [(5, 1), (1, 5), (1, 5), (3, 3)]


def test_blocks_form_cycles_over_the_blocks_of_a_stage():
    cfg = C.resolve(sets=["model=tic_nano", "model_kwargs.kernel_size=[3, {blocks: [5, [7, 1]]}, 3]"])
    model = create_model_from_config(cfg.model, cfg.model_kwargs, 10)
    assert _windows(model) == [(3, 3), (5, 5), (7, 1), (3, 3)]
    shared = create_model_from_config("tic_nano", {"shift": {"blocks": [None, "kv"]}}, 10)
    shifts = [m.shift for m in shared.modules() if type(m).__name__ == "MSAttention2d"]
    assert [s is None for s in shifts] == [True, True, False, True]  # block 0, 0, 1, 0 of stages 1, 2, 2, 3


def test_python_and_plain_forms_agree():
    assert plain_overrides({"kernel_size": [[5, 1]] * 3, "dilation": [1, {"blocks": [1, 2]}, 1], "dims": [8, 16, 32],
                            "border": "mask"}) == \
        {"kernel_size": ((5, 1),) * 3, "dilation": (1, [1, 2], 1), "dims": (8, 16, 32), "border": "mask"}
    assert plain_overrides({"depths": {"stages": [1, 1, 1]}}) == {"depths": (1, 1, 1)}


@pytest.mark.parametrize("value, message", [
    ({"blocks": []}, "non-empty list"),
    ([3, {"blocks": [{"blocks": [3]}]}, 3], "cannot appear inside a block"),
    ({"stages": 3}, "one entry per stage"),
])
def test_malformed_forms_name_the_argument_and_the_fix(value, message):
    with pytest.raises(ValueError, match=message) as e:
        plain_overrides({"kernel_size": value})
    assert "model_kwargs.kernel_size" in str(e.value)


def test_a_shared_pair_written_flat_is_refused_with_both_spellings():
    with pytest.raises(ValueError) as e:
        create_model("tic_nano", num_classes=10, kernel_size=(5, 1))
    assert "((5, 1),) * 3" in str(e.value) and "[[5, 1], [5, 1], [5, 1]]" in str(e.value)


def test_convnet_refuses_a_per_block_cycle_instead_of_reading_it_as_a_pair():
    with pytest.raises(ValueError, match="not a per-block cycle"):
        create_model_from_config("tic_conv_nano", {"kernel_size": [3, {"blocks": [3, 5]}, 3]})
    model = create_model_from_config("tic_conv_nano", {"kernel_size": [[5, 1], [5, 1], [5, 1]]})
    assert {m.kernel_size for m in model.modules() if type(m).__name__ == "MSAConv2d"} == {(5, 1)}
