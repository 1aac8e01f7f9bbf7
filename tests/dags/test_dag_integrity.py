"""Every DAG file imports cleanly, cheaply, and `retrain` is wired as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from pipeline.contract.settings import ENV_MODELS_DIR, PROJECT_ROOT

HEAVY_MODULES = ("great_expectations", "sklearn", "pandas", "pyarrow", "pipeline.stages")


def test_every_dag_file_imports_without_errors(dag_bag: Any) -> None:
    assert dag_bag.import_errors == {}
    dag_files = {p.name for p in (PROJECT_ROOT / "dags").glob("*.py")}
    loaded_files = {dag.fileloc.rsplit("/", 1)[-1] for dag in dag_bag.dags.values()}
    assert dag_files <= loaded_files


def test_retrain_schedule_and_run_limits(dag_bag: Any) -> None:
    dag = dag_bag.dags["retrain"]
    assert dag.timetable.timetable.expression == "0 2 * * *"  # nightly, or-ed with the asset
    assert dag.timetable.asset_condition.name == "labelled_patient_records"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and "validate_snapshot" in dag.doc_md


def test_retrain_tasks_in_order(dag_bag: Any) -> None:
    dag = dag_bag.dags["retrain"]
    chain = ["ingest_snapshot", "has_new_data", "validate_snapshot", "plan_search", "search_family",
             "train_candidate", "evaluate_candidate", "promote_candidate", "champion_changed", "announce_champion"]
    assert set(dag.task_ids) == set(chain)
    for upstream, downstream in zip(chain, chain[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert "train_candidate" in dag.get_task("validate_snapshot").downstream_task_ids  # it trains on the clean rows


def test_model_search_is_mapped_over_the_families(dag_bag: Any) -> None:
    """One `search_family` task instance per configured family, expanded from `plan_search`'s list."""
    search = dag_bag.dags["retrain"].get_task("search_family")
    assert search.is_mapped and search.map_index_template == "{{ family }}"
    assert search.upstream_task_ids == {"plan_search", "validate_snapshot"}


def test_every_stage_retries_with_backoff(dag_bag: Any) -> None:
    """Each stage task retries with growing delays; only an infrastructure failure uses them (a failure on the
    data raises AirflowFailException, which is never retried: tests/dags/test_task_failures.py)."""
    dag = dag_bag.dags["retrain"]
    assert len(dag.tasks) >= 10  # every stage is checked, not an empty list
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff > 1, task.task_id


def test_retrain_params_for_operators(dag_bag: Any) -> None:
    params = dag_bag.dags["retrain"].params
    assert params.get_param("margin").schema["type"] == ["null", "number"]
    # the bounds sit in allOf: the UI's number field clamps to a top-level maximum instead of refusing
    assert params.get_param("margin").schema["allOf"][0]["maximum"] <= 1
    assert "maximum" not in params.get_param("margin").schema
    assert params.get_param("dry_run").schema["type"] == "boolean"
    assert params["dry_run"] is False
    assert params.get_param("force").schema["type"] == "boolean"
    for name in ("margin", "dry_run", "force", "as_of"):
        assert params.get_param(name).description


def test_parsing_dag_files_imports_no_heavy_library() -> None:
    """The scheduler parses DAG files over and over: they must not import GX, sklearn or pandas."""
    probe = (
        "import importlib.util, sys, pathlib\n"
        "for path in sorted(pathlib.Path('dags').glob('*.py')):\n"
        "    spec = importlib.util.spec_from_file_location(path.stem, path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
        "print('PIPELINE=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'pipeline')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    heavy, light = result.stdout.strip().splitlines()[-2:]
    assert heavy == "HEAVY="
    # model names and the params schema only: YAML and the standard library, no stages
    assert light == ("PIPELINE=pipeline,pipeline.contract,pipeline.contract.config,pipeline.contract.params,"
                     "pipeline.contract.settings")


def test_monitor_drift_runs_hourly_and_feeds_the_retrain_asset(dag_bag: Any) -> None:
    dag = dag_bag.dags["monitor_drift"]
    assert dag.timetable.expression == "0 * * * *"
    assert [a.name for a in dag.get_task("request_retrain").outlets] == ["labelled_patient_records"]
    assert "request_retrain" in dag.get_task("drift_found").downstream_task_ids


def test_each_model_config_gets_dags_of_its_own() -> None:
    """A config in PIPELINE_MODELS_DIR gets retrain/monitor_drift/rollback DAGs and an asset named after its model."""
    probe = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder='dags')\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "retrain = bag.dags['retrain__clinic_progression']\n"
        "print(sorted(bag.dags))\n"
        "print(retrain.timetable.asset_condition.name, sorted(retrain.tags))\n"
        "print(bag.dags['retrain'].timetable.asset_condition.name)\n"
    )
    env = {**os.environ, ENV_MODELS_DIR: str(PROJECT_ROOT / "examples" / "clinic")}
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    dags, clinic_asset, primary_asset = result.stdout.strip().splitlines()[-3:]
    assert dags == str(["monitor_drift", "monitor_drift__clinic_progression", "monitor_performance",
                        "monitor_performance__clinic_progression", "process_erasures", "retrain",
                        "retrain__clinic_progression", "rollback", "rollback__clinic_progression", "score_patients",
                        "score_patients__clinic_progression", "set_champion", "set_champion__clinic_progression",
                        "set_shadow", "set_shadow__clinic_progression"])
    assert clinic_asset == "labelled_records__clinic_progression ['clinic_progression', 'training']"
    assert primary_asset == "labelled_patient_records"


def test_every_dag_explains_itself(dag_bag: Any) -> None:
    """A description on each DAG (the UI's list shows it), saying when it runs; the scheduled ones show the cron and
    the asset in their schedule."""
    assert len(dag_bag.dags) >= 6
    for dag in dag_bag.dags.values():
        assert dag.description and len(dag.description) > 40, dag.dag_id
    for dag_id, cron, asset in (("retrain", "0 2 * * *", "labelled_patient_records"),
                                ("score_patients", "30 3 * * *", "champion_model"),
                                ("monitor_performance", "30 1 * * *", "labelled_patient_records")):
        dag = dag_bag.dags[dag_id]
        assert dag.timetable.timetable.expression == cron, dag_id  # the UI's schedule: "Asset or <cron>"
        assert dag.timetable.asset_condition.name == asset and asset in dag.description, dag_id
    assert dag_bag.dags["monitor_drift"].timetable.expression == "0 * * * *"


def test_set_champion_keeps_its_old_id_for_existing_callers(dag_bag: Any) -> None:
    new, old = dag_bag.dags["set_champion"], dag_bag.dags["rollback"]
    assert new.dag_display_name == "Set champion" and "set_champion" in old.dag_display_name
    assert set(new.task_ids) == set(old.task_ids) == {"set_champion"}
    assert new.params.dump() == old.params.dump()
    assert [a.name for a in old.get_task("set_champion").outlets] == ["champion_model"]


def _edges(dag: Any) -> set[tuple[str, str]]:
    return {(task.task_id, downstream) for task in dag.tasks for downstream in task.downstream_task_ids}


def _kinds(dag: Any) -> dict[str, tuple[str, bool, str | None]]:
    return {task.task_id: (type(task).__name__, task.is_mapped, getattr(task, "map_index_template", None))
            for task in dag.tasks}


def test_the_bench_noop_retrain_has_the_retrain_shape(dag_bag: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/dags/noop_retrain.py is the orchestration floor only while it mirrors `retrain`: same tasks, edges,
    operator kinds (short circuits), mapping; and it runs through Airflow to success with the bench's conf."""
    from airflow.dag_processing.dagbag import DagBag

    # dag.test() runs only a DAG some configured bundle holds: the bench's folder joins the project's for this test
    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {}},
               {"name": "bench-dags", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(PROJECT_ROOT / "bench" / "dags")}}]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    noop = DagBag(dag_folder=str(PROJECT_ROOT / "bench" / "dags")).dags["noop_retrain"]
    retrain = dag_bag.dags["retrain"]
    assert _edges(noop) == _edges(retrain)
    assert _kinds(noop) == _kinds(retrain)
    run = noop.test(run_conf={"families": 2})
    assert run.state == "success"
    mapped = sorted(ti.rendered_map_index for ti in run.get_task_instances() if ti.task_id == "search_family")
    assert mapped == ["family-0", "family-1"]
