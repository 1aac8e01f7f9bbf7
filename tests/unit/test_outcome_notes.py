"""The note of a retrain run states its outcome in one line."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.views.run_notes import outcome_note, short_reason

LOST = ("does not beat the champion (the gain is not significant): candidate RMSE 46.100 vs champion 46.900 "
        "(needs < 46.431, margin 1.0%); 95% interval of the RMSE change (candidate - champion) [-1.2, +0.4] "
        "[compared on 80 holdout rows: 9 the champion trained on were left out]")


def run(status: str, reason: str = "", **params: Any) -> dict[str, Any]:
    return {"status": status, "reason": reason, "params": {"margin": None, "dry_run": False, "force": False,
                                                           "as_of": None, **params}}


def evaluation(decision: str, reason: str = "beats the champion", champion: int | None = 1) -> dict[str, Any]:
    return {"candidate_version": 3, "champion_version": champion, "decision": decision, "reason": reason,
            "candidate_metrics": {"rmse": 45.14}, "champion_metrics": {"rmse": 46.93} if champion else None}


def test_a_promotion_names_the_version_and_the_rmse_change() -> None:
    assert outcome_note(run("promoted"), evaluation("promote")) == "promoted v3: RMSE 46.9 → 45.1"


def test_a_first_champion_has_no_earlier_rmse() -> None:
    assert outcome_note(run("promoted"), evaluation("promote", champion=None)) == "promoted v3: RMSE 45.1 (first champion)"


def test_a_kept_champion_gives_the_decisions_reason_shortened() -> None:
    assert outcome_note(run("kept", f"champion kept: {LOST}"), evaluation("keep", LOST)) == \
        "kept v1: the gain is not significant (candidate v3)"


def test_no_new_data() -> None:
    reason = "no new data: snapshot abc is the one version 2 was trained on (run x); trigger with force=true"
    assert outcome_note(run("skipped", reason), None) == "skipped: no new data"


def test_a_dry_run_says_so_first() -> None:
    assert outcome_note(run("kept", "dry run: would promote version 3", dry_run=True), evaluation("promote")) == \
        "DRY RUN: would promote v3: RMSE 46.9 → 45.1"


def test_an_as_of_run_says_its_cut_off_and_that_it_never_promotes() -> None:
    note = outcome_note(run("kept", "as of ...", as_of="2026-03-01T00:00:00+00:00"), evaluation("promote"))
    assert note == "as of 2026-03-01 00:00 UTC: would promote v3: RMSE 46.9 → 45.1, never promoted"


@pytest.mark.parametrize(("status", "reason", "note"), [
    ("validation_failed", "Validation of suite 'patients' failed: 12 of 400 rows quarantined\n- sex: ...",
     "validation failed: Validation of suite 'patients' failed: 12 of 400 rows quarantined"),
    ("failed", "params refused: unknown param 'marin'", "failed: params refused: unknown param 'marin'"),
])
def test_a_failure_gives_its_first_line(status: str, reason: str, note: str) -> None:
    assert outcome_note(run(status, reason), None) == note


def test_a_promotion_refused_at_the_last_moment_is_a_kept_champion() -> None:
    reason = "the champion is version 2 now, not 1 that the candidate was compared with"
    assert outcome_note(run("kept", reason), evaluation("promote")) == f"kept v1: {reason}"


def test_a_run_the_registry_never_saw() -> None:
    assert outcome_note(None, None) == "failed before any stage ran: see the task log"


def test_a_long_reason_is_cut() -> None:
    assert len(short_reason("x" * 500)) == 160 and short_reason("x" * 500).endswith("…")
