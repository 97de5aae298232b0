"""The compute calibration's plan and fit (the runs themselves are exercised end to end elsewhere)."""

from __future__ import annotations

import pytest

from prism.evaluator.calibration import MIN_GAP_STEPS, _fit, _steps
from prism.evaluator.recipe import reference_steps
from prism.profiles import load_profile


def test_two_runs_far_apart_or_one_whole_run() -> None:
    smoke = load_profile("local_cpu_smoke").regimes[0]
    short, long = _steps(smoke)
    assert (short, long) == (16, 128) and reference_steps(smoke) == 320  # 5% and 40% of the run
    tiny = smoke.model_copy(update={"train_tokens": smoke.sequence_length * smoke.batch_size * 6})
    assert _steps(tiny) == (reference_steps(tiny),)  # too short to put two runs 8 steps apart
    for regime in load_profile("gpu_proxy_eval").regimes:
        steps = _steps(regime)
        assert len(steps) == 2 and steps[1] - steps[0] >= MIN_GAP_STEPS


@pytest.mark.parametrize(
    ("points", "fixed", "per_token"),
    [
        ([(1000, 5.0), (9000, 9.0)], 4.5, 0.0005),  # start-up plus cost per token
        ([(1000, 5.0), (9000, 4.9)], 0.0, 4.9 / 9000),  # the longer run measured less: noise, all per token
        ([(2048, 4.2)], 0.0, 4.2 / 2048),  # one run: exact at its length
    ],
)
def test_the_fit_never_goes_negative_or_divides_by_noise(points, fixed, per_token) -> None:
    got_fixed, got_per_token = _fit(points)
    assert got_fixed == pytest.approx(fixed) and got_per_token == pytest.approx(per_token)
