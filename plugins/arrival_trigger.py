"""The arrival watcher's trigger: fires when enough new labelled rows have landed in PostgreSQL.

It lives in plugins/ because the triggerer imports triggers from there, not from dags/.
The decision, and its state, belong to `pipeline.data.arrivals`; this class only polls it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


def _settings(config_path: str | None) -> Any:
    """The environment's settings, for the given model config (None: PIPELINE_CONFIG)."""
    from dataclasses import replace
    from pathlib import Path

    from pipeline.contract.settings import Settings

    settings = Settings.from_env()
    return settings if config_path is None else replace(settings, config_path=Path(config_path))


def _claim_signal(config_path: str | None) -> dict[str, Any] | None:
    from pipeline.data.arrivals import claim_arrival_signal
    from pipeline.workspace import Workspace

    ws = Workspace.open(_settings(config_path))
    try:
        return claim_arrival_signal(ws.engine, ws.model, ws.config.dataset, ws.config.monitoring.min_new_rows)
    finally:
        ws.engine.dispose()


def _poll_seconds(config_path: str | None) -> float:
    from pipeline.contract.config import load_config

    return load_config(_settings(config_path).config_path).monitoring.poll_seconds


class NewLabelledRowsTrigger(BaseEventTrigger):
    """Polls PostgreSQL every `monitoring.poll_seconds` and yields one event per arrival signal,
    for the model whose config is `config_path` (None: the one PIPELINE_CONFIG names)."""

    def __init__(self, config_path: str | None = None) -> None:
        super().__init__()
        self.config_path = config_path

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {"config_path": self.config_path})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        interval = await asyncio.to_thread(_poll_seconds, self.config_path)
        while True:
            signal = await asyncio.to_thread(_claim_signal, self.config_path)
            if signal is not None:
                self.log.info("new labelled rows: %s", signal)
                yield TriggerEvent({"source": "arrival", **signal})
            await asyncio.sleep(interval)
