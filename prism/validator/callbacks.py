"""Stage callbacks: every stage's numbers go to the log, and to wandb when enabled."""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from prism import __version__
from prism.validator.config import WandbConfig

logger = logging.getLogger(__name__)


class StageCallback(Protocol):
    def on_stage_end(self, stage: str, payload: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class LoggingCallback:
    def on_stage_end(self, stage: str, payload: dict[str, Any]) -> None:
        if payload:
            logger.info("%s: %s", stage, json.dumps(payload, sort_keys=True, default=str))

    def close(self) -> None:
        return None


class WandbCallback:
    """Logs every stage's numbers to wandb (offline unless configured online)."""

    def __init__(self, config: WandbConfig, *, hotkey: str) -> None:
        import wandb  # optional at run time; only imported when enabled

        self._run = wandb.init(
            project=config.project,
            mode=config.mode,
            dir=str(config.dir) if config.dir else None,
            config={"hotkey": hotkey, "prism": __version__},
            reinit=True,
        )

    def on_stage_end(self, stage: str, payload: dict[str, Any]) -> None:
        numbers = {f"{stage}/{k}": v for k, v in payload.items() if isinstance(v, int | float)}
        if numbers:
            self._run.log(numbers)

    def close(self) -> None:
        self._run.finish()
