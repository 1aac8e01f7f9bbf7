"""Live performance on a real PostgreSQL: forecasts and outcomes inserted as the batch and the CRM write them,
judged by `pipeline.monitoring.performance`; the signals it remembers; `simulate-outcomes` and `performance` by CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.contract.config import PerformancePolicy
from pipeline.data import demo
from pipeline.monitoring import outcomes, performance
from pipeline.registry.runs import Run
from pipeline.workspace import Workspace
from tests.commands import output
from tests.integration.stage_runs import fetch, stored_text

AS_OF = datetime(2026, 11, 30, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def register_versions(ws: Workspace, holdout: list[float | None], champion: int) -> list[int]:
    """Versions with an evaluation recording each holdout RMSE (None: no evaluation), and the champion (its index)."""
    versions = []
    with ws.engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO pipeline.snapshots (snapshot_hash, source_table, query, watermark, row_count, path, first_run_id)
            VALUES ('s', 'public.patient_records', 'q', now(), 0, 'p', 'r') ON CONFLICT DO NOTHING"""))
        for n, rmse in enumerate(holdout):
            run_id = f"train-{n}-{len(holdout)}"
            version = conn.scalar(sa.text("""
                INSERT INTO pipeline.model_versions (model, run_id, snapshot_hash, artifact_hash, artifact_path,
                       model_family, params, cv_metrics, train_rows, holdout_rows, holdout_start, library_versions,
                       code_version)
                VALUES (:model, :run_id, 's', 'a', 'p', 'ridge', '{}', '{}', 1, 1, '{}', '{}', 'c') RETURNING version
            """), {"model": ws.model, "run_id": run_id})
            if rmse is not None:
                conn.execute(sa.text("""
                    INSERT INTO pipeline.evaluations (run_id, candidate_version, holdout_rows, candidate_metrics, policy,
                           decision, reason)
                    VALUES (:run_id, :v, 10, CAST(:metrics AS jsonb), '{}', 'keep', 'test')
                """), {"run_id": run_id, "v": version, "metrics": json.dumps({"rmse": rmse})})
            versions.append(int(version))
    make_champion(ws, versions[champion])
    return versions


def make_champion(ws: Workspace, version: int) -> None:
    with ws.engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO pipeline.champion (model, slot, version, run_id) VALUES (:model, 'production', :v, 'test')
            ON CONFLICT (model, slot) DO UPDATE SET version = EXCLUDED.version
        """), {"model": ws.model, "v": version})


def add_records(ws: Workspace, ids: list[int], sex: list[str] | None = None) -> None:
    """Study visits under these ids, awaiting their outcome."""
    records = demo.demo_records().iloc[: len(ids)].copy()
    records["patient_id"] = ids
    records["progression_12m"] = np.nan
    if sex:
        records["sex"] = sex
    with ws.engine.begin() as conn:
        demo.copy_into(conn, demo.DEMO_TABLE, records)


def add_forecasts(ws: Workspace, rows: list[tuple[int, str, int, float, float, float, datetime]]) -> None:
    """(version, source, record id, forecast, lower, upper, made_at) rows of pipeline.predictions."""
    with ws.engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO pipeline.predictions (model, version, source_id, prediction, lower, upper, coverage, made_at,
                                              run_id, source, input_hash)
            VALUES (:model, :v, :id, :p, :lo, :hi, 0.9, :made_at, 'score-test', :source, 'h')
        """), [{"model": ws.model, "v": v, "source": s, "id": str(i), "p": p, "lo": lo, "hi": hi, "made_at": m}
               for v, s, i, p, lo, hi, m in rows])


def set_outcomes(ws: Workspace, values: dict[int, float], known_at: datetime | None = None) -> None:
    """Fill in outcomes by UPDATE: known at `known_at` as the writer says, or stamped now by the trigger."""
    with ws.engine.begin() as conn:
        for record, value in values.items():
            conn.execute(sa.text(
                "UPDATE public.patient_records SET progression_12m = :v"
                + (", label_recorded_at = :at" if known_at else "") + " WHERE patient_id = :id"),
                {"v": float(value), "at": known_at, "id": record})


def monitor(ws: Workspace, run_id: str, as_of: datetime = AS_OF, **kwargs: Any) -> dict[str, Any]:
    return performance.monitor_performance(ws, Run(run_id, as_of, "test"), **kwargs)


def test_live_metrics_equal_a_hand_computation_each_row_judged_by_its_own_version(ws: Workspace) -> None:
    v1, v2, v3 = register_versions(ws, [12.0, 15.0, 14.0], champion=1)
    add_records(ws, [1001, 1002, 1003, 1004, 1005, 1006], sex=["F", "M", "F", "M", "F", "M"])
    add_forecasts(ws, [
        (v1, "batch", 1001, 90, 80, 100, at("2026-09-01")), (v1, "batch", 1002, 170, 160, 180, at("2026-09-01")),
        (v2, "batch", 1001, 130, 110, 150, at("2026-09-10")),
        (v2, "batch", 1001, 104, 94, 114, at("2026-10-01")),   # the latest before the outcome: judged
        (v2, "batch", 1002, 140, 130, 150, at("2026-09-10")), (v2, "batch", 1003, 190, 170, 210, at("2026-09-10")),
        (v2, "api", 1004, 150, 140, 160, at("2026-09-10")),
        (v2, "api", 1003, 500, 490, 510, at("2026-11-20")),    # made after its outcome was known: not judged
        (v2, "batch", 1005, 60, 50, 70, at("2026-11-15")),     # likewise, and the only forecast of 1005
        (v2, "batch", 1006, 85, 75, 95, at("2026-11-01")),     # its outcome is known only after the run's as-of
        (v3, "shadow", 1001, 95, 85, 105, at("2026-10-01")), (v3, "shadow", 1002, 160, 150, 170, at("2026-10-01")),
        (v3, "shadow", 1003, 230, 220, 240, at("2026-10-01")),
    ])
    set_outcomes(ws, {1001: 100, 1002: 150}, at("2026-10-15"))
    set_outcomes(ws, {1003: 200, 1004: 120, 1005: 80}, at("2026-11-10"))
    set_outcomes(ws, {1006: 90}, at("2026-12-01"))

    result = monitor(ws, "perf-hand")

    stored = {(m["version"], m["source"], m["dimension"], m["slice"], m["grp"]): m for m in fetch(
        ws, "SELECT * FROM pipeline.performance_metrics WHERE run_id = 'perf-hand'")}
    def check(key: tuple[Any, ...], rows: int, rmse: float, mae: float, bias: float, coverage: float) -> None:
        m = stored[key]
        assert (m["rows"], m["mae"], m["bias"], m["coverage"], m["nominal_coverage"]) == (rows, mae, bias, coverage, 0.9)
        assert m["rmse"] == pytest.approx(rmse)
    check((v1, "served", "all", "", "all"), 2, math.sqrt(250), 15, -5, 0.5)         # errors +10, -20
    check((v2, "served", "all", "", "all"), 4, math.sqrt(279), 13.5, -3.5, 0.75)    # -4, +10, +10, -30
    check((v2, "served", "month", "", "2026-10"), 2, math.sqrt(58), 7, 3, 1)
    check((v2, "served", "month", "", "2026-11"), 2, math.sqrt(500), 20, -10, 0.5)
    check((v2, "served", "slice", "sex", "F"), 2, math.sqrt(58), 7, 3, 1)
    check((v2, "served", "slice", "sex", "M"), 2, math.sqrt(500), 20, -10, 0.5)
    check((v3, "shadow", "all", "", "all"), 3, math.sqrt(1025 / 3), 15, -35 / 3, 2 / 3)
    ages = {k[4] for k in stored if k[:4] == (v2, "served", "slice", "age")}
    assert ages and sum(stored[(v2, "served", "slice", "age", g)]["rows"] for g in ages) == 4
    assert {k[0] for k in stored} == {v1, v2, v3}

    [champion] = [v for v in result["versions"] if v["champion"]]
    assert (champion["version"], champion["outcomes"], champion["holdout_rmse"]) == (v2, 4, 15.0)
    assert (result["verdict"], result["degraded"], result["outcomes"]) == ("insufficient_outcomes", False, 4)
    [pair] = result["shadows"]
    assert (pair["shadow_version"], pair["champion_version"], pair["rows"]) == (v3, v2, 3)
    assert pair["champion_rmse"] == pytest.approx(math.sqrt(72)) and pair["mean_difference"] == pytest.approx(809 / 3)
    report = fetch(ws, "SELECT * FROM pipeline.performance_reports WHERE run_id = 'perf-hand'")[0]
    page = Path(report["report_path"])
    assert page.is_file() and report["report_sha256"] == page.name.removesuffix(".html")
    assert "Shadow against champion" in stored_text(ws, page)


def degraded_history(ws: Workspace, ids: list[int], version: int, spread: float, seed: int = 0) -> None:
    """Served forecasts of 100 for `ids`, then outcomes 100 + N(0, spread) filled in (stamped now)."""
    add_forecasts(ws, [(version, "batch", i, 100.0, 80.0, 120.0, at("2026-01-01")) for i in ids])
    errors = np.random.default_rng(seed).normal(0.0, spread, len(ids))
    set_outcomes(ws, {i: 100.0 + e for i, e in zip(ids, errors, strict=True)})


LATER = datetime(2100, 1, 1, tzinfo=UTC)  # after every outcome stamped now


def test_a_degraded_champion_signals_once_until_more_outcomes_or_a_new_champion(ws: Workspace) -> None:
    v1, v2 = register_versions(ws, [10.0, 10.0], champion=0)
    add_records(ws, list(range(2001, 2091)))
    degraded_history(ws, list(range(2001, 2061)), v1, spread=20.0)

    first = monitor(ws, "perf-1", LATER)
    again = monitor(ws, "perf-2", LATER)

    assert (first["verdict"], first["degraded"], first["outcomes"]) == ("degraded", True, 60)
    assert first["ratio_low"] > 1.2 and first["signal"]["version"] == v1 and first["signal"]["outcomes"] == 60
    assert again["degraded"] is True and again["signal"] is None  # the same evidence: remembered, not sent again
    assert monitor(ws, "perf-1", LATER)["signal"] == first["signal"]  # a retried run gets its own signal back
    degraded_history(ws, list(range(2061, 2091)), v1, spread=20.0, seed=1)  # min_outcomes (30) more outcomes
    more = monitor(ws, "perf-3", LATER)
    assert more["signal"] is not None and more["signal"]["outcomes"] == 90
    assert monitor(ws, "perf-4", LATER)["signal"] is None

    make_champion(ws, v2)
    add_forecasts(ws, [(v2, "batch", i, 100.0, 80.0, 120.0, at("2026-02-01")) for i in range(2001, 2061)])
    changed = monitor(ws, "perf-5", LATER)
    assert changed["signal"] is not None and changed["signal"]["version"] == v2
    signals = fetch(ws, "SELECT run_id FROM pipeline.performance_signals ORDER BY signal_id")
    assert [s["run_id"] for s in signals] == ["perf-1", "perf-3", "perf-5"]
    assert [r["signal_id"] is not None for r in fetch(
        ws, "SELECT signal_id FROM pipeline.performance_reports ORDER BY created_at")] == [True, False, True, False, True]


def test_the_verdict_resamples_the_holdout_errors_stored_at_evaluation(ws: Workspace) -> None:
    held = np.random.default_rng(9).normal(0.0, 10.0, 88)
    v1, = register_versions(ws, [float(np.sqrt(np.mean(held ** 2)))], champion=0)
    stored = stages.store_holdout_errors(ws, held, np.zeros(88))
    with ws.engine.begin() as conn:
        conn.execute(sa.text("UPDATE pipeline.evaluations SET evidence = CAST(:e AS jsonb) WHERE candidate_version = :v"),
                     {"e": json.dumps({"holdout_errors": stored}), "v": v1})
    add_records(ws, list(range(4001, 4061)))
    degraded_history(ws, list(range(4001, 4061)), v1, spread=12.0)

    verdict = monitor(ws, "perf-both", LATER)

    assert np.array_equal(performance.holdout_errors(ws, v1), held ** 2)
    assert "resampling the live outcomes and the 88 holdout rows" in verdict["reason"]
    live = np.array([r["outcome"] - 100.0 for r in fetch(ws, "SELECT progression_12m AS outcome FROM "
                                                           "public.patient_records WHERE patient_id > 4000 ORDER BY patient_id")]) ** 2
    policy = ws.config.monitoring.performance
    expected = performance.ratio_interval(live, held ** 2, policy.bootstrap_samples, policy.confidence or 0.95,
                                          ws.config.training.seed)
    assert (verdict["ratio_low"], verdict["ratio_high"]) == pytest.approx(expected)


def test_stable_outcomes_do_not_degrade_and_the_cli_sends_no_signal(ws: Workspace) -> None:
    v1, = register_versions(ws, [10.0], champion=0)
    add_records(ws, list(range(3001, 3081)))
    degraded_history(ws, list(range(3001, 3081)), v1, spread=10.0)

    stable = monitor(ws, "perf-stable", LATER)
    assert (stable["verdict"], stable["degraded"], stable["signal"]) == ("not_degraded", False, None)
    assert stable["ratio_low"] < 1.2

    set_outcomes(ws, {i: 160.0 for i in range(3001, 3081)})  # corrected outcomes: now far off
    quiet = monitor(ws, "perf-quiet", LATER, send_signal=False)
    assert quiet["degraded"] is True and quiet["signal"] is None
    assert fetch(ws, "SELECT * FROM pipeline.performance_signals") == []


def test_a_missing_threshold_disables_the_trigger_and_still_reports(ws: Workspace) -> None:
    v1, = register_versions(ws, [10.0], champion=0)
    add_records(ws, list(range(4001, 4041)))
    degraded_history(ws, list(range(4001, 4041)), v1, spread=40.0)
    monitoring = dataclasses.replace(ws.config.monitoring, performance=PerformancePolicy(max_ratio=None,
                                                                                           min_outcomes=30))
    unset = dataclasses.replace(ws, config=dataclasses.replace(ws.config, monitoring=monitoring))

    result = monitor(unset, "perf-unset", LATER)

    assert (result["verdict"], result["degraded"], result["signal"]) == ("disabled", False, None)
    assert result["warnings"] == ["monitoring.performance max_ratio, confidence not configured: the performance "
                                  "trigger is disabled (the report is still made)"]
    assert result["live_rmse"] > 30
    stored = fetch(ws, "SELECT warnings, verdict FROM pipeline.performance_reports WHERE run_id = 'perf-unset'")
    assert stored == [{"warnings": result["warnings"], "verdict": "disabled"}]
    assert "warning: monitoring.performance max_ratio, confidence not configured" in stored_text(
        ws, result["report_path"])


def test_sentinel_outcomes_are_refused_by_reason_and_move_no_metric_verdict_or_signal(ws: Workspace) -> None:
    v1, = register_versions(ws, [10.0], champion=0)
    clean, sentinels = list(range(8001, 8101)), [8101, 8102, 8103, 8104]
    add_records(ws, clean + sentinels)
    degraded_history(ws, clean, v1, spread=10.0)
    add_forecasts(ws, [(v1, "batch", i, 100.0, 80.0, 120.0, at("2026-01-01")) for i in sentinels])
    before = monitor(ws, "perf-clean", LATER)
    # -999 on 1 % of the outcomes, "unknown" as a number, an overflow, and NaN, each written by UPDATE
    set_outcomes(ws, {8101: -999.0, 8102: -1e9, 8103: 1e308, 8104: float("nan")})

    after = monitor(ws, "perf-sentinels", LATER)

    assert before["verdict"] == "not_degraded" and before["refused_outcomes"]["refused"] == 0
    same = ("verdict", "degraded", "outcomes", "live_rmse", "ratio_low", "ratio_high")
    assert {k: after[k] for k in same} == {k: before[k] for k in same}
    assert after["versions"] == before["versions"]  # live RMSE, MAE, bias and coverage per version
    refused = after["refused_outcomes"]
    assert (refused["outcomes"], refused["refused"]) == (104, 4)
    assert refused["reason_counts"] == {"not_finite": 1, "out_of_range": 3}  # as training quarantines them
    assert refused["over_limit"] is False and refused["signal"] is None and "sample_ids" not in refused
    page = stored_text(ws, after["report_path"])  # the ids only in the sealed report page
    assert all(f"<td>{i}</td>" in page for i in sentinels), sentinels
    assert after["signal"] is None and fetch(ws, "SELECT * FROM pipeline.performance_signals") == []
    [stored] = fetch(ws, "SELECT refused_outcomes, live_rmse FROM pipeline.performance_reports "
                         "WHERE run_id = 'perf-sentinels'")
    assert stored == {"refused_outcomes": refused, "live_rmse": before["live_rmse"]}
    assert monitor(ws, "perf-sentinels", LATER)["refused_outcomes"] == refused  # a retried run: what it recorded
    assert "out_of_range" in stored_text(ws, after["report_path"])


def test_many_refused_outcomes_are_a_data_quality_signal_not_degradation(ws: Workspace) -> None:
    v1, = register_versions(ws, [10.0], champion=0)
    add_records(ws, list(range(8201, 8301)))
    degraded_history(ws, list(range(8201, 8301)), v1, spread=10.0)
    set_outcomes(ws, {i: -999.0 for i in range(8201, 8211)})  # 10 %, over quality.max_quarantine_share (5 %)

    result = monitor(ws, "perf-many-refused", LATER)

    assert (result["verdict"], result["degraded"], result["signal"], result["outcomes"]) == (
        "not_degraded", False, None, 90)
    assert result["refused_outcomes"]["over_limit"] is True
    [signal] = [w for w in result["warnings"] if w.startswith("data quality:")]
    assert signal.startswith("data quality: 10 of 100 outcomes refused by the contract (10.0%: out_of_range 10")
    assert "not a sign of degradation" in signal and signal in stored_text(ws, result["report_path"])
    assert not any(str(i) in signal for i in range(8201, 8211))  # a warning is logged and stored plain: no ids


# --- by command line ---------------------------------------------------------------------------


def record_rows(ws: Workspace, ids: list[int]) -> pd.DataFrame:
    rows = fetch(ws, "SELECT * FROM public.patient_records WHERE patient_id = ANY(:ids) ORDER BY patient_id", ids=ids)
    return pd.DataFrame(rows)


def test_simulate_outcomes_fills_exactly_the_scored_records_awaiting_theirs(ws: Workspace, cli: Any) -> None:
    v1, = register_versions(ws, [10.0], champion=0)
    add_records(ws, list(range(5001, 5011)))
    set_outcomes(ws, {5009: 55.0, 5010: 66.0}, at("2025-01-01"))  # known already
    scored = [5001, 5002, 5003, 5004, 5009]
    add_forecasts(ws, [(v1, "batch", i, 100.0, 80.0, 120.0, at("2026-01-01")) for i in scored])
    before = record_rows(ws, list(range(5001, 5011)))

    filled = output(cli("simulate-outcomes", "--months", "0", "--seed", "3", "--shift", "glucose=+30", "--json"))

    after = record_rows(ws, list(range(5001, 5011)))
    assert filled["filled"] == 4 and filled["shift"] == {"glucose": 30.0}
    waiting = before.loc[before["patient_id"].isin([5001, 5002, 5003, 5004])]
    expected = outcomes.generate_outcomes(waiting.reset_index(drop=True), seed=3, shift={"glucose": 30.0})
    assert after.set_index("patient_id").loc[[5001, 5002, 5003, 5004], "progression_12m"].tolist() == expected.tolist()
    assert not np.array_equal(expected, outcomes.generate_outcomes(waiting.reset_index(drop=True), seed=3))
    assert after.loc[after["patient_id"].isin([5005, 5006, 5007, 5008]), "progression_12m"].isna().all()
    assert after.set_index("patient_id").loc[[5009, 5010], "progression_12m"].tolist() == [55.0, 66.0]
    features = [c for c in demo.SOURCE_COLUMNS if c != "progression_12m"] + ["recorded_at"]
    pd.testing.assert_frame_equal(after[features], before[features])  # a concept shift: no feature moves
    stamped = after.set_index("patient_id").loc[[5001, 5002, 5003, 5004], "label_recorded_at"]
    assert stamped.notna().all() and (stamped > before["recorded_at"].max()).all()  # by the trigger, at the UPDATE
    assert output(cli("simulate-outcomes", "--months", "0", "--json"))["filled"] == 0


def test_simulate_outcomes_months_is_how_long_after_the_visit_the_outcome_arrives(ws: Workspace,
                                                                                  cli: Any) -> None:
    v1, = register_versions(ws, [10.0], champion=0)
    add_records(ws, [6001, 6002])
    today = datetime.now(UTC).date()
    with ws.engine.begin() as conn:
        for record, visit in ((6001, today - timedelta(days=400)), (6002, today - timedelta(days=200))):
            conn.execute(sa.text("UPDATE public.patient_records SET visit_date = :d, birth_date = :b "
                                 "WHERE patient_id = :id"), {"d": visit, "b": visit - timedelta(days=50 * 365), "id": record})
    add_forecasts(ws, [(v1, "batch", i, 100.0, 80.0, 120.0, at("2026-01-01")) for i in (6001, 6002)])

    assert output(cli("simulate-outcomes", "--json"))["filled"] == 1  # 12 months: only the visit 400 days ago
    assert record_rows(ws, [6001, 6002])["progression_12m"].notna().tolist() == [True, False]
    assert output(cli("simulate-outcomes", "--months", "6", "--json"))["filled"] == 1


def test_performance_cli_json_gives_each_version(ws: Workspace, cli: Any) -> None:
    v1, v2 = register_versions(ws, [10.0, 12.0], champion=1)
    add_records(ws, list(range(7001, 7041)))
    add_forecasts(ws, [(v1, "batch", i, 100.0, 80.0, 120.0, at("2025-06-01")) for i in range(7001, 7041)])
    degraded_history(ws, list(range(7001, 7041)), v2, spread=40.0)

    result = output(cli("performance", "--json"))

    by_version = {v["version"]: v for v in result["versions"]}
    assert set(by_version) == {v1, v2}
    assert {"live_rmse", "holdout_rmse", "outcomes", "degraded"} <= set(by_version[v2])
    assert (by_version[v2]["outcomes"], by_version[v2]["holdout_rmse"], by_version[v2]["degraded"]) == (40, 12.0, True)
    assert by_version[v1]["degraded"] is False and result["signal"] is None
    text = cli("performance")
    assert text.returncode == 0 and "DEGRADED" in text.stdout
    assert re.search(rf"^  v{v2} +served +40 outcomes", text.stdout, re.MULTILINE), text.stdout  # aligned columns


def test_forecasts_without_any_outcome_yet_give_no_verdict_not_an_error(ws: Workspace) -> None:
    register_versions(ws, [50.0], champion=0)
    add_records(ws, [901, 902])
    add_forecasts(ws, [(1, "batch", 901, 150.0, 100.0, 200.0, at("2026-01-05")),
                       (1, "batch", 902, 160.0, 110.0, 210.0, at("2026-01-05"))])

    result = monitor(ws, "no-outcomes")

    assert result["verdict"] == "insufficient_outcomes" and result["outcomes"] == 0
    assert result["degraded"] is False and result["live_rmse"] is None


def strict_json(text: str) -> Any:
    """JSON as the standard has it: a bare NaN or Infinity is an error, not a number."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_performance_json_with_an_infinite_value_is_strict_json(ws: Workspace, cli: Any) -> None:
    v1, = register_versions(ws, [10.0], champion=0)
    add_records(ws, list(range(9001, 9041)))
    add_forecasts(ws, [(v1, "batch", i, 100.0, 80.0, 120.0, at("2026-01-01")) for i in range(9001, 9040)]
                  + [(v1, "batch", 9040, float("inf"), 80.0, float("inf"), at("2026-01-01"))])  # a stored inf
    set_outcomes(ws, {i: 100.0 for i in range(9001, 9041)})

    done = cli("performance", "--json")

    assert done.returncode == 0, done.stderr
    with pytest.raises(ValueError, match="not JSON: Infinity"):
        strict_json(done.stdout.replace('"live_rmse": null', '"live_rmse": Infinity', 1))  # the parser is strict
    result = strict_json(done.stdout)
    assert result["live_rmse"] is None and result["outcomes"] == 40
    assert result["not_finite"]["$.live_rmse"] == "inf is not a finite number, so null"
    assert all(v is None or math.isfinite(v) for m in result["metrics"] for v in (m["rmse"], m["mae"], m["bias"]))
    text = cli("performance", "--run-id", result["run_id"])  # the stored report again, as text
    assert text.returncode == 0 and re.search(rf"^  v{v1} +served +40 outcomes +live RMSE - ", text.stdout,
                                              re.MULTILINE), text.stdout + text.stderr
