"""Importable training engine: config, loop, evaluation, checkpoints, torchrun/DDP. No argparse here."""

from __future__ import annotations

from .config import TrainConfig, apply_overrides, list_recipes, load_yaml, parse_set, resolve
from .engine import format_summary, train
from .evaluate import evaluate

__all__ = ["TrainConfig", "apply_overrides", "evaluate", "format_summary", "list_recipes", "load_yaml", "parse_set",
           "resolve", "train"]
