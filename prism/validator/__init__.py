"""The PRISM validator (``python -m prism.validator``, ``neurons/validator.py``).

``config`` holds the typed configuration and flags, ``intake_stage`` discovery, download and
intake, ``chain_stages`` the chain view, beacons and weights, ``evaluation`` the pool stages
(collect, screening, dispatch), ``status`` the status file, ``loop`` the parts and the loop.
"""

from prism.validator.callbacks import LoggingCallback, StageCallback, WandbCallback
from prism.validator.chain_stages import (
    TIMEOUT_SETTLE_BLOCKS,
    ChainView,
    refresh_beacons,
    set_weights,
    sync,
    weights_due,
)
from prism.validator.config import (
    EvaluationConfig,
    FetchConfig,
    ValidatorConfig,
    WandbConfig,
    build_arg_parser,
    config_from_args,
)
from prism.validator.evaluation import (
    INFRA_BACKOFF_MAX_S,
    INFRA_BACKOFF_S,
    EvaluationSettings,
    apply_screening,
    back_off_after_infrastructure_failures,
    dispatch,
    record_outcome,
)
from prism.validator.intake_stage import (
    TRAINING_HOOKS,
    UNREACHABLE_BACKOFF_BLOCKS,
    Candidate,
    admit,
    discover,
    intake,
    planned_runs,
    screening_cell,
)
from prism.validator.loop import ValidatorParts, build_parts, build_pool, main, run, score, step
from prism.validator.state import LoopState
from prism.validator.status import ValidatorStatus, read_status, write_status

__all__ = [
    "INFRA_BACKOFF_MAX_S",
    "INFRA_BACKOFF_S",
    "TIMEOUT_SETTLE_BLOCKS",
    "TRAINING_HOOKS",
    "UNREACHABLE_BACKOFF_BLOCKS",
    "Candidate",
    "ChainView",
    "EvaluationConfig",
    "EvaluationSettings",
    "FetchConfig",
    "LoggingCallback",
    "LoopState",
    "StageCallback",
    "ValidatorConfig",
    "ValidatorParts",
    "ValidatorStatus",
    "WandbCallback",
    "WandbConfig",
    "admit",
    "apply_screening",
    "back_off_after_infrastructure_failures",
    "build_arg_parser",
    "build_parts",
    "build_pool",
    "config_from_args",
    "discover",
    "dispatch",
    "intake",
    "main",
    "planned_runs",
    "read_status",
    "record_outcome",
    "refresh_beacons",
    "run",
    "score",
    "screening_cell",
    "set_weights",
    "step",
    "sync",
    "weights_due",
    "write_status",
]
