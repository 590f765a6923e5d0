"""Analysis tools: attention distance, head importance, effective receptive field, attention maps."""

from .attention import (NO_WEIGHTS, HeadDistance, attention_map, attention_mixers, key_displacements,
                        mean_attention_distance, scatter_window)
from .erf import ERF, effective_receptive_field, mass_radius
from .heads import HeadImportance, head_importance

__all__ = [
    "ERF",
    "HeadDistance",
    "HeadImportance",
    "NO_WEIGHTS",
    "attention_map",
    "attention_mixers",
    "effective_receptive_field",
    "head_importance",
    "key_displacements",
    "mass_radius",
    "mean_attention_distance",
    "scatter_window",
]
