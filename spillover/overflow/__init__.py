"""The overflow decision stage: policy + metric samples + clock -> state and remote share per model.

Pure: no I/O, no clock, no protobuf. See `engine` for the state machine, `share` for the proportional
formula, `status` for the status document and `evaluator` for evaluating all models at once.
"""

# The sources' output type, re-exported for the callers of the engine.
from spillover.metrics.sample import Sample
from spillover.overflow.engine import (
    DEFAULT_MAX_AGE,
    Decision,
    MetricReading,
    ModelMemory,
    SampleLike,
    Transition,
    evaluate,
    read_metrics,
)
from spillover.overflow.evaluator import Evaluation, Evaluator
from spillover.overflow.share import proportional_share, share_levels, step_share
from spillover.overflow.status import status_document, status_of

__all__ = [
    "DEFAULT_MAX_AGE",
    "Decision",
    "Evaluation",
    "Evaluator",
    "MetricReading",
    "ModelMemory",
    "Sample",
    "SampleLike",
    "Transition",
    "evaluate",
    "proportional_share",
    "read_metrics",
    "share_levels",
    "status_document",
    "status_of",
    "step_share",
]
