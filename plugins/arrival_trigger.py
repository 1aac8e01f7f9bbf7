"""The arrival watcher's trigger: fires when enough new labelled rows have landed in PostgreSQL.

It lives in plugins/ because the triggerer imports triggers from there, not from dags/.
The decision, and its state, belong to `pipeline.arrivals`; this class only polls it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


def _claim_signal() -> dict[str, Any] | None:
    from pipeline.arrivals import claim_arrival_signal
    from pipeline.settings import Settings
    from pipeline.stages import Workspace

    ws = Workspace.open(Settings.from_env())
    try:
        return claim_arrival_signal(ws.engine, ws.config.dataset, ws.config.monitoring.min_new_rows)
    finally:
        ws.engine.dispose()


def _poll_seconds() -> float:
    from pipeline.config import load_config
    from pipeline.settings import Settings

    return load_config(Settings.from_env().config_path).monitoring.poll_seconds


class NewLabelledRowsTrigger(BaseEventTrigger):
    """Polls PostgreSQL every `monitoring.poll_seconds` and yields one event per arrival signal."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        interval = await asyncio.to_thread(_poll_seconds)
        while True:
            signal = await asyncio.to_thread(_claim_signal)
            if signal is not None:
                self.log.info("new labelled rows: %s", signal)
                yield TriggerEvent({"source": "arrival", **signal})
            await asyncio.sleep(interval)
