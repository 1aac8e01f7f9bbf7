"""The arrival signal on real PostgreSQL: when enough new labelled rows start a retrain, once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.data import demo
from pipeline.data.arrivals import claim_arrival_signal
from pipeline.registry.runs import Run
from pipeline.workspace import Workspace

MIN_NEW_ROWS = 5
DEMO_ROWS = 442


def claim(ws: Workspace, resignal_after: timedelta = timedelta(minutes=30)) -> dict[str, Any] | None:
    return claim_arrival_signal(ws.engine, ws.model, ws.config.dataset, MIN_NEW_ROWS, resignal_after)


def signal_rows(ws: Workspace) -> list[dict[str, Any]]:
    with ws.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "SELECT * FROM pipeline.arrival_signals ORDER BY signal_id")).mappings()]


def answer_with_a_run(ws: Workspace, run_id: str = "answered") -> datetime:
    """A training run that reads up to now, later than every signal so far; returns its watermark."""
    watermark = datetime.now(UTC)
    stages.ingest_snapshot(ws, Run(run_id=run_id, watermark=watermark, triggered_by="arrival"))
    return watermark


@pytest.fixture
def seeded(ws: Workspace) -> Workspace:
    assert demo.seed_demo(ws.engine) == DEMO_ROWS
    return ws


def test_no_rows_no_signal(ws: Workspace) -> None:
    assert claim(ws) is None
    assert signal_rows(ws) == []


def test_first_signal_counts_every_labelled_row(seeded: Workspace) -> None:
    signal = claim(seeded)

    assert signal is not None
    assert signal["new_rows"] == DEMO_ROWS and signal["since"] is None
    newest = demo.demo_records()["recorded_at"].max()
    assert datetime.fromisoformat(signal["up_to"]) == newest
    [row] = signal_rows(seeded)
    assert (row["signal_id"], row["new_rows"], row["since"]) == (signal["signal_id"], DEMO_ROWS, None)
    assert datetime.fromisoformat(signal["at"]) == row["at"]


def test_a_pending_signal_is_not_repeated(seeded: Workspace) -> None:
    assert claim(seeded) is not None

    assert claim(seeded) is None
    demo.simulate_arrivals(seeded.engine, rows=MIN_NEW_ROWS, seed=1)  # more rows do not resend it either
    assert claim(seeded) is None
    assert len(signal_rows(seeded)) == 1


def test_after_a_run_only_rows_past_its_watermark_count(seeded: Workspace) -> None:
    assert claim(seeded) is not None
    watermark = answer_with_a_run(seeded)
    assert claim(seeded) is None  # the run answered the signal, and nothing new has landed

    demo.simulate_arrivals(seeded.engine, rows=MIN_NEW_ROWS - 1, seed=1)
    assert claim(seeded) is None

    demo.simulate_arrivals(seeded.engine, rows=1, seed=2)
    signal = claim(seeded)

    assert signal is not None
    assert signal["new_rows"] == MIN_NEW_ROWS
    assert datetime.fromisoformat(signal["since"]) == watermark
    assert datetime.fromisoformat(signal["up_to"]) > watermark
    assert [r["new_rows"] for r in signal_rows(seeded)] == [DEMO_ROWS, MIN_NEW_ROWS]
    assert signal_rows(seeded)[1]["since"] == watermark


def test_unlabelled_arrivals_never_count(seeded: Workspace) -> None:
    answer_with_a_run(seeded)

    demo.simulate_arrivals(seeded.engine, rows=4 * MIN_NEW_ROWS, seed=1, labelled=False)
    assert claim(seeded) is None

    demo.simulate_arrivals(seeded.engine, rows=MIN_NEW_ROWS, seed=2)
    signal = claim(seeded)
    assert signal is not None and signal["new_rows"] == MIN_NEW_ROWS


def test_an_unanswered_signal_is_sent_again_after_resignal_after(seeded: Workspace) -> None:
    first = claim(seeded)
    assert first is not None

    assert claim(seeded, resignal_after=timedelta(hours=1)) is None
    again = claim(seeded, resignal_after=timedelta(0))

    assert again is not None
    assert again["signal_id"] != first["signal_id"]
    assert again["new_rows"] == first["new_rows"] == DEMO_ROWS
    assert again["since"] is None
    assert len(signal_rows(seeded)) == 2
    assert claim(seeded) is None  # the resent signal is pending in its turn


def test_an_answered_signal_is_not_resent(seeded: Workspace) -> None:
    assert claim(seeded) is not None
    answer_with_a_run(seeded)

    assert claim(seeded, resignal_after=timedelta(0)) is None  # nothing new since the run
    assert len(signal_rows(seeded)) == 1


def test_concurrent_claims_create_one_signal(seeded: Workspace) -> None:
    callers = 6
    barrier = threading.Barrier(callers)
    results: list[dict[str, Any] | None] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            results.append(claim(seeded))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(results) == callers
    signals = [r for r in results if r is not None]
    assert len(signals) == 1 and signals[0]["new_rows"] == DEMO_ROWS
    assert [r["signal_id"] for r in signal_rows(seeded)] == [signals[0]["signal_id"]]
