"""Run timm's own ``tests/test_models.py`` (vendored unchanged next to this file) on msaconv's models.

- ``import msaconv`` registers msaconv's public models into timm's registry before the test module is
  imported, so timm's module-level ``list_models(...)`` parametrisations include them.
- Collection keeps only the items parametrised with a model msaconv registered into timm
  (``msaconv.models.timm_status()['registered']``); timm's tests of its own models, and its tests without a
  model parameter, are deselected. The kept items are marked ``timm`` (CI's second stage runs
  ``pytest -m timm``).
- TorchScript tests are skipped, with the reason, for the families in ``EXCLUDE_JIT`` (timm's own test
  file leaves families out the same way, by its ``EXCLUDE_JIT_FILTERS``).
- timm's markers (and ``timeout`` when pytest-timeout is absent) are registered, since msaconv's pytest
  runs with ``--strict-markers``.
- Without timm (CI's first stage) nothing here is collected.
"""

from __future__ import annotations

import fnmatch
import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# the timm release test_models.py was taken from (.ci/run's stage 2 installs this one)
VENDORED_TIMM = "1.0.31"

OURS: frozenset[str] = frozenset()
VERSION_SKIP: str | None = None
if importlib.util.find_spec("timm") is None or importlib.util.find_spec("torchvision") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    import timm

    import msaconv  # noqa: F401  (registers msaconv's models into timm)
    from msaconv.models import timm_status

    OURS = frozenset(timm_status()["registered"])
    if timm.__version__ != VENDORED_TIMM:
        VERSION_SKIP = (f"test_models.py is timm {VENDORED_TIMM}'s, timm {timm.__version__} is installed: "
                        f"pip install timm=={VENDORED_TIMM}, or vendor timm {timm.__version__}'s tests/test_models.py")

# Like timm's EXCLUDE_JIT_FILTERS (the families timm's own torchscript tests leave out): the models with
# MSA-Conv layers cannot be scripted. The layers validate their input and choose a kernel in Python
# (msaconv.ops.msa_conv2d builds a checked Problem dataclass from the shapes, MDCSM / IPM are dataclass
# options); TorchScript compiles neither. Use torch.compile or torch.export / ONNX (msaconv.export) instead;
# the convnet_* baselines script.
EXCLUDE_JIT = {
    "tic_*": "TorchScript cannot compile MSA-Conv's Python-side input checks and kernel dispatch "
             "(use torch.compile or torch.export / ONNX)",
}
JIT_TESTS = ("test_model_forward_torchscript", "test_model_forward_fx_torchscript")

# timm's pyproject.toml [tool.pytest.ini_options] markers
TIMM_MARKERS = {
    "base": "timm: model tests using the basic setup",
    "forward": "timm: per-model forward tests",
    "backward": "timm: per-model backward tests",
    "cfg": "timm: model tests checking the config",
    "cfg_nonstd": "timm: non-standard model config tests",
    "torchscript": "timm: model tests using torchscript",
    "features": "timm: model tests checking feature extraction",
    "fxforward": "timm: model tests using torch fx (only forward)",
    "fxbackward": "timm: model tests using torch fx (only backward)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in TIMM_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): a time limit (enforced only with pytest-timeout)")


def _model_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    name = callspec.params.get("model_name") if callspec is not None else None
    return name if isinstance(name, str) else None


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m / -k selection sees the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop, seen = [], [], 0
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            keep.append(item)
            continue
        seen += 1
        name = _model_of(item)
        if name is not None and name.split(".")[0] in OURS:
            item.add_marker(pytest.mark.timm)
            if VERSION_SKIP:
                item.add_marker(pytest.mark.skip(reason=VERSION_SKIP))
            if getattr(item, "originalname", item.name) in JIT_TESTS:
                for pattern, reason in EXCLUDE_JIT.items():
                    if fnmatch.fnmatch(name, pattern):
                        item.add_marker(pytest.mark.skip(reason=f"{pattern}: {reason}"))
            keep.append(item)
        else:
            drop.append(item)
    if seen and len(drop) == seen:
        raise pytest.UsageError("tests/timm_upstream: timm's test_models.py has no test of an msaconv model; "
                                f"msaconv registered {sorted(OURS)} into timm (see msaconv.models.timm_status())")
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
