"""What ``prism eval`` prints: one table per run, the miner's own failing lines, the baseline, the
limits the run used, and the ``training_for_arch`` family check."""

from __future__ import annotations

from pathlib import Path

from prism.manifest import MANIFEST_FILENAME, RunManifest
from prism.profiles import Profile
from prism.submission import Submission
from prism.submission.errors import Problem


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def family_mismatches(submission: Submission, manifests: list[RunManifest]) -> list[Problem]:
    """A training_for_arch that measures another family than its architecture_id is an error."""
    from prism.commands.identify import family_problems

    measured = {m.submission.family_id for m in manifests if m.submission.family_id}
    return [p for family in sorted(measured) for p in family_problems(submission, family)]


def _matching(manifest: RunManifest, baseline: list[RunManifest]) -> RunManifest | None:
    same_cell = [b for b in baseline if (b.regime.name, b.seed) == (manifest.regime.name, manifest.seed)]
    return (same_cell or baseline or [None])[0]


def redraw_with_baseline(manifests: list[RunManifest], baseline: list[RunManifest], out_root: Path) -> None:
    """Redraw each run's PNG with the matching baseline run's curve overlaid."""
    from prism.evaluator.artifacts import PLOT_PNG_FILE
    from prism.evaluator.plot import curve_from_manifest, plot_loss_png

    for manifest in manifests:
        other = _matching(manifest, baseline)
        if other is None or manifest.artifacts.plot_png is None:
            continue
        plot_loss_png(
            out_root / manifest.run_id / PLOT_PNG_FILE,
            probes=manifest.metrics.probe_curve,
            heldout=manifest.metrics.loss_vs_tokens,
            baseline=curve_from_manifest(other, label=f"baseline {other.run_id}"),
            title=f"{manifest.run_id} vs baseline",
        )


def _limits_rows(m: RunManifest, profile: Profile) -> list[tuple[str, str]]:
    limits, t = profile.limits, m.timings_s
    rows = [
        ("training wall / limit (s)", f"{_fmt(t.get('train_sandbox'), 1)} / {limits.train_wall_s:.0f}"),
        ("held-out wall / limit (s)", f"{_fmt(t.get('heldout_sandbox'), 1)} / {limits.eval_wall_s:.0f}"),
    ]
    if m.compute is not None:
        cap = "-" if m.compute.cap is None else f"{m.compute.cap:.2f}x"
        rows.append(
            ("compute / cap", f"{_fmt(m.compute.ratio, 2)}x of the reference ({m.compute.kind}) / {cap}")
        )
    return rows


def _rows(
    m: RunManifest, profile: Profile, cached: bool, baseline: RunManifest | None
) -> list[tuple[str, str]]:
    from rich.markup import escape

    failure = m.status.failure
    status = (
        "succeeded"
        if failure is None
        else f"[red]failed: {escape(failure.code)} ({failure.fault} fault)[/red]"
    )
    rows = [
        ("regime / seed", f"{m.regime.name} / {m.seed}"),
        ("status", status + ("  [dim](cached: --force recomputes)[/dim]" if cached else "")),
        ("held-out bpb", _fmt(m.metrics.heldout_bpb)),
    ]
    if baseline is not None:
        base, this = baseline.metrics.heldout_bpb, m.metrics.heldout_bpb
        delta = "-" if base is None or this is None else f"{this - base:+.4f} (baseline {base:.4f})"
        rows.append(("vs baseline", delta))
    rows += [
        ("probe bpb (last half)", _fmt(m.metrics.probe_bpb)),
        ("first probe loss (nats)", _fmt(m.metrics.first_probe_loss_nats)),
        ("parameters / layers", f"{m.metrics.parameter_count or '-'} / {m.metrics.layer_count or '-'}"),
        ("steps / tokens", f"{m.metrics.train_steps} / {m.metrics.train_tokens}"),
        ("family / version", f"{m.submission.family_id or '-'} / {m.submission.version_id or '-'}"),
        ("isolation", m.isolation),
        *_limits_rows(m, profile),
        ("wall time (s)", _fmt(m.timings_s.get("total"), 1)),
        (
            "score-eligible",
            "yes" if m.validation.score_eligible else "no: " + ", ".join(m.validation.reasons),
        ),
    ]
    return rows


def _print_failure(console, m: RunManifest) -> None:  # type: ignore[no-untyped-def]
    """The failure and the miner's own frames, the last (where it failed) highlighted. Every text
    here may come from the submission, so it is escaped before rich renders it."""
    from rich.markup import escape

    failure = m.status.failure
    if failure is None:
        return
    console.print(f"[red]{escape(failure.code)}[/red]: {escape(failure.message)}", highlight=False)
    for i, frame in enumerate(failure.frames):
        last = i == len(failure.frames) - 1
        style = "bold red" if last else "dim"
        where = escape(f"{'>' if last else ' '} {frame.file}:{frame.line} in {frame.function}")
        console.print(f"[{style}]{where}[/{style}]", highlight=False)
        if frame.code:
            console.print(f"[{style}]      {escape(frame.code)}[/{style}]", highlight=False)


def print_summary(
    manifests: list[RunManifest],
    out_root: Path,
    *,
    profile: Profile,
    cached: set[str],
    baseline: list[RunManifest],
    mismatches: list[Problem],
) -> None:
    """One key/value table per run: readable in an 80-column terminal."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    for m in manifests:
        table = Table(
            title=f"{m.run_id}  ({m.profile.name}@{m.profile.version}, {m.recipe_mode} recipe)",
            show_header=False,
            title_justify="left",
        )
        table.add_column(style="bold")
        table.add_column()
        for key, value in _rows(m, profile, m.run_id in cached, _matching(m, baseline) if baseline else None):
            table.add_row(key, value)
        console.print(table)
        root = out_root / m.run_id
        # Plain prints, so long paths are never cut and stay copyable.
        print(f"manifest: {root / MANIFEST_FILENAME}")
        for name in (m.artifacts.plot, m.artifacts.plot_png):
            if name:
                print(f"plot:     {root / name}")
        _print_failure(console, m)
    for problem in mismatches:
        console.print(f"[red]error[/red]: {escape(str(problem))}")
