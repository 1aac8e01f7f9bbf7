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


def test_a_failed_validation_lists_every_failed_expectation_compactly_within_airflows_limit() -> None:
    from pipeline.data.validate import ValidationFailed
    from pipeline.views.run_notes import MAX_NOTE, validation_note

    failures = [{"expectation": f"expect_column_values_to_be_between_{i}", "column": f"feature_{i}",
                 "unexpected_count": 100 + i, "sample_ids": list(range(20))} for i in range(40)]
    reason = str(ValidationFailed("patients", failures[:3], headline="12 of 400 rows quarantined (3.0%):"))
    assert validation_note(reason) == (
        "validation failed: 12 of 400 rows quarantined (3.0%): expect_column_values_to_be_between_0 on feature_0 "
        "(100 rows); expect_column_values_to_be_between_1 on feature_1 (101 rows); "
        "expect_column_values_to_be_between_2 on feature_2 (102 rows)")
    many = validation_note(str(ValidationFailed("patients", failures, headline="schema problem:")))
    assert len(many) <= MAX_NOTE and many.endswith("more (see the quality report)")
    shown = many.count(" on feature_")
    assert many.endswith(f"and {40 - shown} more (see the quality report)") and shown > 5


def test_the_other_dags_notes_say_what_happened() -> None:
    from pipeline.views.run_notes import champion_note, drift_note, failure_note, performance_note, score_note

    assert score_note({"version": 3, "rows_scored": 34, "rows_selected": 40, "rows_refused": 6,
                       "score_records": "awaiting_outcome", "reason_counts": {"impossible_dates": 2,
                                                                             "missing_required": 4},
                       "shadows": [{"version": 2, "status": "done", "rows_scored": 34}]}) == (
        "v3 scored 34 of 40 records (awaiting_outcome); 6 refused: missing_required 4, impossible_dates 2; "
        "shadow v2 scored 34")
    features = [{"feature": "bmi", "psi": 0.41, "drifted": True}, {"feature": "ldl", "psi": 0.02, "drifted": False}]
    assert drift_note({"verdict": "drift", "recent_rows": 60, "drifted_features": ["bmi"], "features": features}) == (
        "drift in bmi (PSI 0.41) on 60 recent records: retrain requested")
    assert drift_note({"verdict": "stable", "recent_rows": 60, "features": features[1:]}) == (
        "stable: no feature drifted on 60 recent records (largest PSI 0.02, ldl)")
    assert performance_note({"verdict": "degraded", "champion_version": 1, "live_rmse": 127.5, "holdout_rmse": 54.1,
                             "outcomes": 40, "ratio_low": 2.14, "ratio_high": 2.57, "signal_id": 7}) == (
        "v1 DEGRADED: live RMSE 127.5 on 40 outcomes, 2.36 x holdout 54.1 [2.14, 2.57]: retrain requested")
    assert champion_note({"champion": 2, "replaced": 1, "reason": "better live", "forced_past": []}, "promote") == (
        "done: v2 is champion (was v1), promote: better live")
    assert failure_note("set_champion", "a rollback needs a reason (the form's Reason field)", "data", refused=True) \
        == "refused: a rollback needs a reason (the form's Reason field); nothing changed"
    assert failure_note("score_records", "disk full", "infrastructure") == "failed (infrastructure) in score_records: disk full"


def test_an_erasure_note_counts_requests_and_never_names_the_patient() -> None:
    from pipeline.views.run_notes import erasure_note

    assert erasure_note([]) == "no erasure request pending"
    note = erasure_note([{"request_id": 4, "status": "done", "versions_trained_on_erased": [1, 3]},
                         {"request_id": 5, "status": "duplicate"}])
    assert note == "2 erasure requests: #4 done (versions trained on the patient: v1, v3), #5 duplicate"
