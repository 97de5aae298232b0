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


@pytest.mark.slow
def test_two_evaluations_asking_at_once_share_one_measurement(tmp_path, text_corpus_builder) -> None:
    """Two workers on one machine calibrating the same regime: the second waits for the first's
    measurement instead of racing it in the same work directory (real sandboxed runs)."""
    import threading

    from prism.evaluator import sandbox as sb
    from prism.evaluator.calibration import calibrate

    data = text_corpus_builder(
        [f"document {i} about a quick brown fox. " * 20 for i in range(60)],
        tmp_path / "data",
        shard_tokens=2048,
    )
    profile = load_profile("local_cpu_smoke")
    regime = profile.regimes[0].model_copy(
        update={"train_tokens": 6 * 8 * 64, "batch_size": 8, "sequence_length": 64}
    )
    cache, isolation = tmp_path / "cache", sb.probe_isolation()
    results: list[object] = []

    def ask() -> None:
        results.append(calibrate(profile, regime, data_dir=data, vocab_size=257, eos_id=256, nproc=1,
                                 cache_dir=cache, isolation=isolation))  # fmt: skip

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert len(results) == 2 and results[0] == results[1]  # one measurement, read twice
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [
        f"calibration-{results[0].key}.json"
    ]
