"""Progress bars for long evaluations (rich when asked for, silent otherwise; host side)."""

from __future__ import annotations

from typing import Any


class RunProgress:
    """A rich progress bar per run, fed from the probe stream; a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                transient=False,
            )

    def __enter__(self) -> RunProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def add(self, description: str, total: int) -> int | None:
        if self._bar is None:
            return None
        return self._bar.add_task(description, total=total, status="starting")

    def update(
        self,
        task: int | None,
        *,
        completed: int | None = None,
        status: str | None = None,
        total: int | None = None,
    ) -> None:
        if self._bar is None or task is None:
            return
        fields: dict[str, Any] = {}
        if total is not None:
            fields["total"] = total
        if completed is not None:
            fields["completed"] = completed
        if status is not None:
            fields["status"] = status
        self._bar.update(task, **fields)


__all__ = ["RunProgress"]
