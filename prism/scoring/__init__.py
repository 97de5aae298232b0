"""Scoring: run manifests -> scores -> ownership -> weights. Pure: no torch, bittensor, disk,
clock or randomness; every output is a function of the submission records, the policy, the
metagraph's hotkey -> uid map and the block. See docs/scoring.md for the formulas."""

from prism.scoring.comparison import Comparison, Side, beats, noise_margin, paired_mean_and_stderr
from prism.scoring.competition import run_competitions
from prism.scoring.paired import EvalRequest, ModelEval, PairedCell, PairedMeasurement
from prism.scoring.policy import (
    RULES_SCHEDULE,
    RULES_V1,
    RULES_V2,
    CompetitionRules,
    ScoringPolicy,
    policy_for_profile,
    rules_at_block,
)
from prism.scoring.reasons import ALL_REASONS, ELIGIBILITY_REASONS, SCORING_REASONS, reason_fault
from prism.scoring.records import SubmissionRecord
from prism.scoring.standings import FamilyEntry, OwnershipEvent, Standings, VariantEntry, VersionEntry
from prism.scoring.submissions import SubmissionVerdict
from prism.scoring.validation import Cell, ModeResult, RunVerdict, check_run, mode_result
from prism.scoring.weights import Leaderboard, Payout, WeightResult, compute_weights

__all__ = [
    "ALL_REASONS",
    "ELIGIBILITY_REASONS",
    "RULES_SCHEDULE",
    "RULES_V1",
    "RULES_V2",
    "SCORING_REASONS",
    "Cell",
    "Comparison",
    "CompetitionRules",
    "EvalRequest",
    "FamilyEntry",
    "Leaderboard",
    "ModeResult",
    "ModelEval",
    "OwnershipEvent",
    "PairedCell",
    "PairedMeasurement",
    "Payout",
    "RunVerdict",
    "ScoringPolicy",
    "Side",
    "Standings",
    "SubmissionRecord",
    "SubmissionVerdict",
    "VariantEntry",
    "VersionEntry",
    "WeightResult",
    "beats",
    "check_run",
    "compute_weights",
    "mode_result",
    "noise_margin",
    "paired_mean_and_stderr",
    "policy_for_profile",
    "reason_fault",
    "rules_at_block",
    "run_competitions",
]
