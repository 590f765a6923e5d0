"""Training configuration: one flat dataclass, YAML files (recipes) and ``key=value`` overrides.

Order of precedence (later wins): the dataclass defaults (the main job: tic_conv_nano on the embedded CIFAR-10
subset), a ``--config`` YAML file, ``--set key=value`` pairs, then the explicit CLI flags. Values are parsed
with ``yaml.safe_load`` (never ``eval``) and checked against the field types; an unknown key gets a
did-you-mean and the list of keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
TTA_MODES = ("none", "flip", "both")


@dataclass
class TrainConfig:
    # model
    model: str = "tic_conv_nano"
    model_kwargs: dict = field(default_factory=dict)  # overrides passed to create_model (drop_path_rate, ...)
    # data
    data: str = "embedded"  # 'embedded' | ImageFolder dir | zip | tar (a dir with train/ and val/ is split)
    val_data: str = "auto"  # 'auto': the embedded test set for 'embedded', else <data>/val or none
    data_mode: str = "auto"  # 'auto' | 'memory' | 'stream' (DataLoader workers, for ImageNet-size sets)
    workers: int = 2  # DataLoader workers in stream mode
    limit_train: int | None = None
    limit_val: int | None = None
    skip_bad: bool = False
    mean: list = field(default_factory=lambda: [0.4914, 0.4822, 0.4465])
    std: list = field(default_factory=lambda: [0.2470, 0.2435, 0.2616])
    # schedule
    epochs: int = 10
    batch_size: int = 128  # per process
    grad_accum: int = 1
    optimizer: str = "adamw"  # 'sgd' | 'adamw'
    lr: float = 2e-3  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "onecycle"  # 'cosine' | 'onecycle' | 'constant' | 'step'
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    clip_grad: float | None = None
    nonfinite_loss: str = "stop"  # NaN/inf loss: 'stop' (error naming the step, last good checkpoint kept) | 'skip' the batch
    label_smoothing: float = 0.1
    aux_loss_weight: float | None = None  # weight of the mixers' auxiliary losses (MoH load balance); None: the paper's
    # augmentation
    img_size: int = 32
    train_sizes: list | None = None  # multi-size training: one size per step drawn from this list (None: img_size)
    crop_pad: int = 4
    hflip: bool = True
    rand_augment_n: int = 0  # ops per image (0: off)
    rand_augment_m: float = 9.0
    mixup: float = 0.0  # Beta alpha (0: off)
    cutmix: float = 0.0
    mix_prob: float = 1.0
    # regularisation and precision
    ema_decay: float = 0.0  # EMA of weights (0: off); evaluation then uses the EMA weights
    amp: str = "none"  # 'none' | 'bf16' (autocast) | 'auto' (bf16 where the device computes it natively)
    channels_last: bool = False
    # evaluation and bookkeeping
    eval_sizes: list = field(default_factory=lambda: [24, 32, 40, 48, 64])
    eval_protocols: list = field(default_factory=lambda: ["resize"])  # final eval: 'resize' and/or 'canvas'
    tta: str = "none"  # final eval: 'none', 'flip' (mean of the image's and its mirror's logits) or 'both'
    # final eval: also the figures with BatchNorm statistics re-estimated at each size from this many training
    # images (no labels, no gradient; 0: off), as top1_recal, ... (msaconv.train.evaluate.recalibrated)
    bn_recalibrate: int = 0
    eval_every: int = 1  # epochs
    epoch_eval_images: int | None = 2000  # per-epoch check on a fixed class-mixed subset (None: all); final: all
    eval_batch_size: int = 500
    seed: int = 0
    output: str = "runs"
    name: str | None = None  # run folder name (default <model>-<UTC time>)
    resume: str | None = None  # a run folder, a checkpoint .json, or 'auto'
    checkpoint_every: int = 200  # steps (plus every epoch end)
    log_every: int = 20  # steps between metric lines
    threads: int | None = None  # torch threads (default: what torch picks)
    progress: bool = True
    deterministic: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


# names other tools (timm's train.py, PyTorch examples) use for our keys
ALIASES = {"learning_rate": "lr", "wd": "weight_decay", "bs": "batch_size", "opt": "optimizer", "sched": "schedule",
           "warmup": "warmup_epochs", "image_size": "img_size", "input_size": "img_size", "smoothing": "label_smoothing",
           "drop_path": "model_kwargs.drop_path_rate", "drop_path_rate": "model_kwargs.drop_path_rate",
           "model_ema_decay": "ema_decay", "clip_grad_norm": "clip_grad", "aa": "rand_augment_n",
           "num_workers": "workers", "output_dir": "output", "experiment": "name", "limit": "limit_train"}


def _unknown_key(key: str, where: str) -> ValueError:
    close = [ALIASES[key]] if key in ALIASES else difflib.get_close_matches(key, list(FIELDS), n=1, cutoff=0.5)
    hint = f" did you mean {close[0]!r}?" if close else ""
    return ValueError(f"{where}: unknown config key {key!r};{hint} valid keys: {', '.join(FIELDS)}")


def _coerce(key: str, value: Any, where: str) -> Any:
    hint = _HINTS[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    base = typing.get_origin(base) or base
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: {key} cannot be null; give a {base.__name__}")
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):  # PyYAML reads '1e-3' (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ValueError(f"{where}: {key} must be a {base.__name__}, got {value!r} ({type(value).__name__}); "
                         f"e.g. {key}={FIELDS[key].default if FIELDS[key].default is not dataclasses.MISSING else '...'}")
    return value


def apply_overrides(cfg: TrainConfig, values: dict, where: str) -> TrainConfig:
    """A copy of ``cfg`` with ``values`` applied (keys checked; ``model_kwargs.X`` sets one model override)."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of config keys, got {type(values).__name__}")
    d = cfg.to_dict()
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key.startswith("model_kwargs."):
            d["model_kwargs"] = {**d["model_kwargs"], key.split(".", 1)[1]: value}
            continue
        if key not in FIELDS:
            raise _unknown_key(key, where)
        d[key] = _coerce(key, value, where)
    out = TrainConfig(**d)
    validate(out)
    return out


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        named = RECIPES_DIR / f"{path}.yaml"
        if named.is_file():
            p = named
        else:
            raise ValueError(f"--config: {str(path)!r} is not a file nor a recipe name; recipes: "
                             f"{', '.join(list_recipes())}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"--config: {p} is not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config: {p} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def parse_set(items: list[str]) -> dict:
    """``["lr=0.05", "model_kwargs.drop_path_rate=0.1"]`` -> dict; values via ``yaml.safe_load``."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: expected key=value, got {item!r}; e.g. --set lr=0.05")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def validate(cfg: TrainConfig) -> None:
    def bad(key, why):
        raise ValueError(f"config: {key}={getattr(cfg, key)!r} {why}")

    for key in ("epochs", "batch_size", "grad_accum", "img_size", "eval_batch_size", "checkpoint_every", "log_every",
                "eval_every"):
        if getattr(cfg, key) < 1:
            bad(key, "must be >= 1")
    for key in ("limit_train", "limit_val", "threads", "epoch_eval_images"):
        v = getattr(cfg, key)
        if v is not None and v < 1:
            bad(key, "must be >= 1 or null")
    if cfg.lr <= 0:
        bad("lr", "must be > 0; e.g. --lr 0.1 for sgd, 2e-3 for adamw")
    choices = {"optimizer": ("sgd", "adamw"), "schedule": ("cosine", "onecycle", "constant", "step"),
               "amp": ("none", "bf16", "auto"), "data_mode": ("auto", "memory", "stream"),
               "nonfinite_loss": ("stop", "skip")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            close = difflib.get_close_matches(str(getattr(cfg, key)), allowed, n=1)
            bad(key, f"is not one of {', '.join(allowed)}" + (f"; did you mean {close[0]!r}?" if close else ""))
    for key in ("label_smoothing", "mix_prob", "ema_decay", "min_lr_ratio"):
        if not 0 <= getattr(cfg, key) <= 1:
            bad(key, "must be in [0, 1]")
    if cfg.ema_decay >= 1:
        bad("ema_decay", "must be < 1 (e.g. 0.999) or 0 to turn EMA off")
    if not cfg.eval_sizes or any((not isinstance(s, int)) or s < 1 for s in cfg.eval_sizes):
        bad("eval_sizes", "must be a list of positive ints, e.g. [24, 32, 48]")
    if cfg.train_sizes is not None and (not cfg.train_sizes or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in cfg.train_sizes)):
        bad("train_sizes", "must be null or a list of positive ints, e.g. [24, 32, 40] (--train-sizes 24,32,40)")
    from ..data import EVAL_PROTOCOLS

    if not cfg.eval_protocols or any(p not in EVAL_PROTOCOLS for p in cfg.eval_protocols):
        bad("eval_protocols", f"must be a non-empty list of {EVAL_PROTOCOLS}: 'resize' scales the whole image, "
                              "'canvas' keeps the scale and crops / pads to the size")
    if isinstance(cfg.bn_recalibrate, bool) or not isinstance(cfg.bn_recalibrate, int) or cfg.bn_recalibrate < 0:
        bad("bn_recalibrate", "must be an int >= 0: the training images that re-estimate BatchNorm statistics at each "
                              "final evaluation size (0: off; e.g. 2000)")
    if cfg.tta not in TTA_MODES:
        close = difflib.get_close_matches(str(cfg.tta), TTA_MODES, n=1)
        bad("tta", f"is not one of {', '.join(TTA_MODES)}" + (f"; did you mean {close[0]!r}?" if close else ""))
    if len(cfg.mean) != 3 or len(cfg.std) != 3:
        bad("mean", "and std must each hold 3 numbers")
    if cfg.aux_loss_weight is not None and cfg.aux_loss_weight < 0:
        bad("aux_loss_weight", "must be >= 0, or null for the paper's weight (MoH: 0.01)")
    if cfg.warmup_epochs < 0:
        bad("warmup_epochs", "must be >= 0")


def resolve(config_file: str | None = None, sets: list[str] | None = None, flags: dict | None = None) -> TrainConfig:
    """Defaults <- YAML file <- ``--set`` <- explicit flags (``None`` flags are left out).

    Without a ``--config``, the model's own recipe (``recipes/<model>.yaml``, if there is one) is the file:
    a bare ``msaconv train`` is the tic_conv_nano recipe, the main job.
    """
    cfg = TrainConfig()
    if not config_file:
        parsed = parse_set(sets or [])
        model = (flags or {}).get("model") or parsed.get("model") or cfg.model
        if (RECIPES_DIR / f"{model}.yaml").is_file():
            config_file = str(model)
    if config_file:
        cfg = apply_overrides(cfg, load_yaml(config_file), f"--config {config_file}")
    if sets:
        cfg = apply_overrides(cfg, parse_set(sets), "--set")
    if flags:
        cfg = apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None}, "flags")
    validate(cfg)
    return cfg


def dump_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
