"""The overflow decision stage: policy + metric samples + clock -> state and remote share per model.

Pure: no I/O, no clock, no protobuf. See `engine` for the state machine, `share` for the proportional
formula, `status` for the status document and `evaluator` for evaluating all models at once.
"""

# The sources' output type, re-exported for the callers of the engine.
from spillover.decide.engine import (
    DEFAULT_MAX_AGE,
    Decision,
    MetricReading,
    ModelMemory,
    SampleLike,
    Transition,
    evaluate,
    read_metrics,
)
from spillover.decide.evaluator import Evaluation, Evaluator
from spillover.decide.share import proportional_share, share_levels, step_share
from spillover.decide.status import status_document, status_of
from spillover.sources.metrics.sample import Sample

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
