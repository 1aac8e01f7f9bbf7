"""The bench's bookkeeping: ratios, the whole-DAG row, the table, the config it trains with. No timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench import peer, report, workload
from bench.__main__ import busy_machine_note, stage_verdicts, verdicts
from pipeline.contract.config import load_config
from pipeline.contract.settings import PROJECT_ROOT


def size(rows: int, seconds: dict[str, float], peaks: dict[str, float]) -> dict[str, Any]:
    steps = [report.step(name, seconds[name], rows, {"ingest_snapshot": 1.0}.get(name), peaks[name], ready_mb=200.0)
             for name in report.STAGES]
    steps.append(report.step(report.READ_ROW, 1.25, rows, 1.0))
    steps.append(report.whole_dag(steps, rows, 3.0))
    return {"rows": rows, "snapshot_rows": rows, "steps": steps,
            "floors": {"COPY into nothing": {"seconds": 1.0}, "bare ridge fit": {"seconds": 2.0, "peak_mb": 300.0}}}


SECONDS = {"ingest_snapshot": 2.0, "validate_snapshot": 10.0, "train_candidate": 30.0, "evaluate_candidate": 5.0,
           "promote_candidate": 0.5}
PEAKS = {"ingest_snapshot": 600.0, "validate_snapshot": 1500.0, "train_candidate": 900.0, "evaluate_candidate": 700.0,
         "promote_candidate": 250.0}


def test_vs_floor_is_the_floors_share_of_the_steps_time() -> None:
    row = report.step("ingest_snapshot", 2.0, 1000, floor=1.6, peak_mb=100.0)

    assert row["vs_floor"] == 0.8
    assert row["rows_per_second"] == 500
    assert report.step("validate_snapshot", 2.0, 1000)["vs_floor"] is None


def test_whole_dag_sums_the_stages_and_keeps_the_largest_peak() -> None:
    steps = size(10**6, SECONDS, PEAKS)["steps"]
    dag = next(s for s in steps if s["step"] == report.DAG_ROW)

    assert dag["seconds"] == sum(SECONDS.values())  # the read row is part of ingest, not added again
    assert dag["peak_mb"] == 1500.0
    assert dag["vs_floor"] == 3.0 / sum(SECONDS.values())


def test_table_has_a_line_per_step_and_floor() -> None:
    text = report.table([size(10**4, SECONDS, PEAKS)], {(10**4, "train_candidate"): 25.0},
                        {(10**4, "train_candidate"): 3600.0}, {(10**4, "train_candidate"): 0.125})
    lines = text.splitlines()

    assert lines[0].split() == ["rows", "step", "seconds", "rows/s", "floor", "s", "vs", "floor", "peak", "MB",
                                "last", "run", "s", "last", "vs", "floor", "last", "run", "MB"]
    assert len(lines) == 2 + len(report.STAGES) + 2 + 2
    train = next(line for line in lines if "train_candidate" in line)
    assert train.split()[0] == "10^4" and train.split()[-3:] == ["25.00", "0.12", "3,600"]
    assert any("floor: COPY into nothing" in line for line in lines)


def test_verdicts_name_each_target_and_whether_it_was_met() -> None:
    sizes = [size(10**5, SECONDS, PEAKS), size(10**6, SECONDS, {**PEAKS, "validate_snapshot": 2500.0})]
    dag_parse = [{"file": "retrain.py", "dag_seconds": 0.2, "heavy_imports": [], "ok": True}]

    lines = verdicts(sizes, dag_parse)

    assert lines[0].startswith("read rows -> Arrow at 10^6: 0.80 of COPY-into-nothing") and "OK" in lines[0]
    assert "2,500 MB per task (validate_snapshot)" in lines[1] and lines[1].endswith("MISSED")
    assert lines[-1].startswith("DAG parse retrain.py: 0.200 s") and lines[-1].endswith("OK")
    evaluate = next(line for line in lines if line.startswith("evaluate_candidate at 10^6"))
    assert evaluate == f"evaluate_candidate at 10^6: {SECONDS['evaluate_candidate']:.2f} s (target <= 1.5 s) " + (
        "OK" if SECONDS["evaluate_candidate"] <= 1.5 else "MISSED")
    whole = next(line for line in lines if line.startswith("whole retrain at 10^6"))
    assert whole.startswith(f"whole retrain at 10^6: {3.0 / sum(SECONDS.values()):.2f} of its floor")


def test_validation_is_judged_against_great_expectations_listing_rows_on_the_same_chunks() -> None:
    steps = {s["step"]: s for s in size(10**6, SECONDS, PEAKS)["steps"]}
    steps["validate_snapshot"] = report.step("validate_snapshot", 3.0, 10**6, 1.0)
    assert stage_verdicts(steps)[0] == ("validate_snapshot at 10^6: 3.00 s, 3.0x GX listing unexpected rows on the "
                                        "same chunks (target <= 2x) MISSED")
    steps["validate_snapshot"] = report.step("validate_snapshot", 1.5, 10**6, 1.0)
    assert stage_verdicts(steps)[0].endswith("1.5x GX listing unexpected rows on the same chunks (target <= 2x) OK")


def test_training_and_the_whole_retrain_are_judged_on_their_floors_at_every_size() -> None:
    steps = {s["step"]: s for s in size(10**4, SECONDS, PEAKS)["steps"]}
    steps["train_candidate"] = report.step("train_candidate", 10.0, 10**4, 8.0)
    steps[report.DAG_ROW] = report.step(report.DAG_ROW, 20.0, 10**4, 11.0)

    lines = stage_verdicts(steps, 10**4)

    assert lines == [
        "train_candidate at 10^4: 0.80 of its floor, the same search by bare scikit-learn (target >= 0.7) OK",
        "whole retrain at 10^4: 0.55 of its floor, COPY + bare search + GX listing rows + bare predict "
        "(target >= 0.6) MISSED"]  # validation and evaluation are judged at 10^6 only


def test_the_peer_row_holds_our_retrain_as_its_floor_and_is_judged_on_time_and_memory() -> None:
    measured = {"seconds": 40.0, "steps": {name: 8.0 for name in peer.STEPS}, "peak_mb": 500.0, "ready_mb": 200.0,
                "best": "Ridge", "cv_rmse": 30.0, "holdout_rmse": 29.0, "gx": {"success": False}, "holdout_rows": 2}
    sized = size(10**4, SECONDS, PEAKS)
    ours = next(s for s in sized["steps"] if s["step"] == report.DAG_ROW)
    sized["steps"] += peer.rows(measured, ours, 10**4)

    total = next(s for s in sized["steps"] if s["step"] == peer.ROW)
    (line,) = peer.verdicts([sized])

    assert total["vs_floor"] == sum(SECONDS.values()) / 40.0
    assert [s["step"] for s in sized["steps"][-len(peer.STEPS):]] == [f"  peer: {name}" for name in peer.STEPS]
    assert line == (f"our retrain / the hand-wired peer at 10^4: {sum(SECONDS.values()):.2f} s / 40.00 s = "
                    f"{sum(SECONDS.values()) / 40:.2f} (target <= 0.5) MISSED; peak 1,500 MB per task, the peer's "
                    "500 MB (target <=) MISSED")
    assert "peer: hand-wired retrain" in report.table([sized], {})


def test_previous_results_are_read_for_comparison(tmp_path: Path) -> None:
    path = tmp_path / "latest.json"
    path.write_text(json.dumps({"commit": "abc123", "sizes": [size(10**4, SECONDS, PEAKS)]}))

    seconds, commit = report.previous_seconds(path)

    assert commit == "abc123"
    assert seconds[(10**4, "validate_snapshot")] == 10.0
    assert seconds[(10**4, "floor: COPY into nothing")] == 1.0
    assert report.previous_seconds(tmp_path / "missing.json") == ({}, None)
    assert report.previous_peaks(path)[(10**4, "validate_snapshot")] == PEAKS["validate_snapshot"]
    assert report.previous_peaks(tmp_path / "missing.json") == {}
    ratios = report.previous_ratios(path)
    assert ratios[(10**4, "ingest_snapshot")] == 1.0 / SECONDS["ingest_snapshot"]
    assert (10**4, "promote_candidate") not in ratios  # no floor, no ratio


def test_bench_config_trains_bounded_families_and_keeps_the_rest(tmp_path: Path) -> None:
    shipped = PROJECT_ROOT / "pipeline.yaml"

    path = workload.write_config(shipped, tmp_path / "bench.yaml")

    config, original = load_config(path), load_config(shipped)
    assert set(config.training.families) == set(workload.BENCH_FAMILIES) & set(original.training.families)
    assert config.dataset == original.dataset  # the suite path is made absolute, so it still resolves
    assert config.promotion == original.promotion and config.quality == original.quality
    assert yaml.safe_load(shipped.read_text()) != yaml.safe_load(path.read_text())


def test_bench_config_can_keep_every_shipped_family(tmp_path: Path) -> None:
    shipped = PROJECT_ROOT / "pipeline.yaml"

    path = workload.write_config(shipped, tmp_path / "bench.yaml", every_family=True)

    assert load_config(path).training == load_config(shipped).training
    described = workload.describe_config(path)
    assert "random_forest" in described and "also has" not in described
    assert f"sample of at most {load_config(shipped).training.search_max_rows:,} rows" in described


def test_a_busy_machine_is_named_beside_the_read_ratio() -> None:
    sizes = [size(10**6, SECONDS, PEAKS)]
    read = next(s for s in sizes[0]["steps"] if s["step"] == report.READ_ROW)

    read["other_cores"] = 0.9
    assert "other processes kept 0.90 cores busy meanwhile" in verdicts(sizes, [])[0]
    read["other_cores"] = 0.05
    assert verdicts(sizes, [])[0].endswith("; other processes: 0.05 cores")
    assert "unknown" in busy_machine_note(None)


def test_plot_is_written(tmp_path: Path) -> None:
    report.plot([size(10**4, SECONDS, PEAKS), size(10**5, SECONDS, PEAKS)], tmp_path / "plot.png")

    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_probe_reports_its_own_peak_not_its_parents() -> None:
    held = np.ones(300 << 20, dtype=np.uint8)  # this process now holds 300 MB more than a bare interpreter
    done = subprocess.run([sys.executable, "-c", "from bench.measure import peak_mb; print(peak_mb())"],
                          capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 200 < held.nbytes / 2**20, done.stdout


def test_the_peers_grid_has_each_configured_family_with_its_parameters() -> None:
    families = load_config(PROJECT_ROOT / "pipeline.yaml").training.families
    grid = peer.param_grid(families, seed=7)

    assert [type(entry["model"][0]).__name__ for entry in grid] == [
        {"ridge": "Ridge", "random_forest": "RandomForestRegressor",
         "hist_gradient_boosting": "HistGradientBoostingRegressor"}[family] for family in families]
    for entry, params in zip(grid, families.values(), strict=True):
        assert {k: v for k, v in entry.items() if k != "model"} == {f"model__{k}": [v] for k, v in params.items()}
        assert entry["model"][0].get_params()["random_state"] == 7
