"""The bench's floors run against the pipeline as it is: each probe called in-process on a real champion, so a
layout change that breaks one fails here, not in the next `make bench`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import probe, scoring, threads, workload
from pipeline.contract.settings import Settings
from pipeline.registry.records import current_champion
from pipeline.workspace import Workspace
from tests.integration.stage_runs import promote_demo_champion, quick_workspace


def _spec(settings: Settings, **extra: Any) -> dict[str, Any]:
    return {"database_url": settings.database_url, "config_path": str(settings.config_path),
            "artifact_dir": str(settings.artifact_dir), "pgdata_dir": str(settings.pgdata_dir), "repeats": 1,
            "key_file": str(settings.key_file),
            "run_id": "bench-probe", **extra}


def test_the_floors_measure_the_champion_and_its_snapshots(settings: Settings, tmp_path: Path) -> None:
    ws = quick_workspace(Workspace.open(settings))
    retrain = promote_demo_champion(ws)
    with ws.engine.connect() as conn:
        champion = current_champion(conn, ws.model)
    assert champion is not None
    predict = probe.run_predict_floor(_spec(settings, version=champion["version"]))
    assert predict["rows"] == 88 and predict["seconds"] > 0
    floor = scoring.run_score_floor(_spec(settings))
    assert floor["rows"] == 442 and floor["write_seconds"] > 0
    assert floor["seconds"] == floor["copy_seconds"] + floor["predict_seconds"] + floor["write_seconds"]
    assert floor["unindexed_write_seconds"] > 0  # the write is into pipeline.predictions itself, rolled back:
    with ws.engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM pipeline.predictions WHERE run_id = 'floor'")) == 0
    bench_config = workload.write_config(settings.config_path, tmp_path / "bench.yaml")  # ridge and HGB
    search = probe.run_search_floor(_spec(settings, config_path=str(bench_config),
                                          clean_snapshot_hash=retrain["clean_snapshot_hash"]))
    assert search["folds"] == 5 and search["shape"][0] == search["search_rows"] == 354  # 442 - 88 held out
    assert search["best"] in workload.BENCH_FAMILIES and search["seconds"] > 0
    listing = probe.run_validation_floor(_spec(settings, snapshot_hash=retrain["snapshot"]["snapshot_hash"]))
    assert listing["rows"] == 442 and listing["chunks"] == 1 and listing["result_format"] == "COMPLETE, rows by id"
    ws.engine.dispose()


def test_the_thread_table_trains_with_each_forced_count_quiet_and_busy(settings: Settings, tmp_path: Path) -> None:
    ws = quick_workspace(Workspace.open(settings))
    retrain = promote_demo_champion(ws)
    config = workload.write_config(settings.config_path, tmp_path / "bench.yaml")
    ran: list[tuple[str, str, int | None]] = []

    def run_stage(spec: dict[str, Any], tag: str, name: str, **arguments: Any) -> dict[str, Any]:
        from pipeline.contract.config import load_config

        ran.append((spec["run_id"], name, load_config(Path(spec["config_path"])).training.n_jobs))
        return probe.run_stage({**spec, "stage": name, "arguments": arguments})  # in this process, not a fresh one

    base = _spec(settings, config_path=str(config), watermark=datetime.now(UTC).isoformat())
    step = threads.measure(run_stage, base, "[demo]", 354,
                           retrain["clean_snapshot_hash"], chosen=2.0, chosen_busy=3.0)

    assert ran == [(f"bench-probe-threads-{n}-{setting}", "train_candidate", n)
                   for setting in ("quiet", "busy") for n in (1, 2)]
    with ws.engine.connect() as conn:  # each a run of its own: four more versions, each trained
        runs = conn.scalar(sa.text("SELECT count(*) FROM pipeline.model_versions WHERE run_id LIKE 'bench-probe-threads-%'"))
    assert runs == 4
    quiet = step["forced"]["quiet"]
    assert set(quiet) == set(step["forced"]["busy"]) == {"1", "2"} and all(s > 0 for s in quiet.values())
    assert step["floor_seconds"] == min(quiet.values()) and step["vs_better"] == 2.0 / min(quiet.values())
    [line] = threads.verdicts([{"rows": 354, "steps": [step]}])
    assert line.startswith("train threads at 354: chosen by size 2.00 s") and line.endswith(
        "OK" if step["vs_better"] <= threads.TARGET else "MISSED")
    ws.engine.dispose()
