"""Pure-PyTorch Transformer-XL with Skip-Retain and stochastic cross-head attention.

See ``docs/DESIGN.md`` for the contracts. Nothing here imports DeepSpeed.
"""

from skipxl.model.adaptive import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax
from skipxl.model.attention import PositionalEmbedding, RelPartialLearnableAttention
from skipxl.model.config import (
    ATTN_IMPLS,
    POSITIONS,
    RETAIN_POSITIONS,
    SKIP_SCHEDULES,
    SKIPPED_GRAD,
    ModelConfig,
    SkipRetainConfig,
)
from skipxl.model.context import Context
from skipxl.model.heads import CROSS_HEAD_MODES, CrossHeadConfig
from skipxl.model.memory import Memory
from skipxl.model.presets import PRESETS, get_preset
from skipxl.model.transformer_xl import LMOutput, StepPlan, TransformerXL

__all__ = [
    "ATTN_IMPLS",
    "CROSS_HEAD_MODES",
    "POSITIONS",
    "PRESETS",
    "RETAIN_POSITIONS",
    "SKIPPED_GRAD",
    "SKIP_SCHEDULES",
    "AdaptiveEmbedding",
    "Context",
    "CrossHeadConfig",
    "LMOutput",
    "Memory",
    "ModelConfig",
    "PositionalEmbedding",
    "ProjectedAdaptiveLogSoftmax",
    "RelPartialLearnableAttention",
    "SkipRetainConfig",
    "StepPlan",
    "TransformerXL",
    "get_preset",
]
