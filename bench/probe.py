"""One measurement in a fresh process: `python -m bench.probe SPEC.json` writes SPEC's `out` file.

A fresh process per measurement, as Airflow runs each task in its own: its peak resident memory
(`getrusage` high-water mark) belongs to that one step, and includes the interpreter and the
libraries the step imports (`ready_mb` is the resident memory just before the timed call).
Only the call itself is timed, not the imports or opening the workspace.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import copy_into_nothing, peak_mb, rss_mb, timed, workspace
from pipeline.registry.runs import Run

# What a step hands to the next one; the rest of a stage's answer (pages, metric tables) is dropped.
KEPT_KEYS = ("snapshot_hash", "clean_snapshot_hash", "row_count", "rows_read", "rows_valid", "rows_quarantined",
             "version", "model_family", "decision", "reason", "status", "candidate_version")


def stage_calls(spec: dict[str, Any]) -> dict[str, Any]:
    """Each stage of the retrain DAG as a call with the arguments the DAG passes it."""
    from datetime import datetime

    from pipeline import stages

    ws = workspace(spec)
    run = Run(run_id=spec["run_id"], watermark=datetime.fromisoformat(spec["watermark"]), triggered_by="bench")
    return {
        "ingest_snapshot": lambda: stages.ingest_snapshot(ws, run, {}),
        "validate_snapshot": lambda snapshot_hash: stages.validate_snapshot(ws, run, snapshot_hash),
        "train_candidate": lambda clean_snapshot_hash: stages.train_candidate(ws, run, clean_snapshot_hash),
        "evaluate_candidate": lambda version: stages.evaluate_candidate(ws, run, version),
        "promote_candidate": lambda: stages.promote_candidate(ws, run),
    }


def kept(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in KEPT_KEYS if k in result}


# What a stage imports only when it runs (heavy: Great Expectations alone takes seconds, scikit-learn about one),
# imported before the timed call as every other import is: a task process pays it, the bench's orchestration row
# (`python -m bench.orchestration`) shows that.
LATE_IMPORTS = {"ingest_snapshot": ("pipeline.model.train",),  # preflight builds each family's estimator
                "validate_snapshot": ("great_expectations",),
                "train_candidate": ("pipeline.model.train", "pipeline.model.features", "pipeline.model.intervals"),
                "evaluate_candidate": ("pipeline.model.evaluate", "pipeline.model.cards", "pipeline.model.features", "pipeline.model.intervals",
                                       "matplotlib.figure", "matplotlib.backends.backend_agg")}


def import_late(*stages: str) -> None:
    """The late imports of `stages` (LATE_IMPORTS), made now."""
    import importlib

    for stage in stages:
        for module in LATE_IMPORTS.get(stage, ()):
            importlib.import_module(module)


def run_stage(spec: dict[str, Any]) -> dict[str, Any]:
    """One stage of the retrain DAG in this process, as an Airflow task runs it (its pools sized to its slot)."""
    from pipeline.runtime import threads

    with threads.for_task(Path(spec["config_path"])):
        import_late(spec["stage"])
        call = stage_calls(spec)[spec["stage"]]
        ready = rss_mb()
        result, seconds = timed(call, **spec["arguments"])
    return {"seconds": seconds, "ready_mb": ready, "peak_mb": peak_mb(), "result": kept(result)}


def run_retrain(spec: dict[str, Any]) -> dict[str, Any]:
    """Every stage in this one process, in order, as `python -m pipeline retrain` runs them; each timed without
    its late imports."""
    from pipeline.runtime import threads

    with threads.for_task(Path(spec["config_path"])):
        import_late(*LATE_IMPORTS)
        return _retrain(stage_calls(spec))


def _retrain(calls: dict[str, Any]) -> dict[str, Any]:
    ready = rss_mb()
    seconds: dict[str, float] = {}
    snapshot, seconds["ingest_snapshot"] = timed(calls["ingest_snapshot"])
    checked, seconds["validate_snapshot"] = timed(calls["validate_snapshot"], snapshot["snapshot_hash"])
    trained, seconds["train_candidate"] = timed(calls["train_candidate"], checked["clean_snapshot_hash"])
    evaluated, seconds["evaluate_candidate"] = timed(calls["evaluate_candidate"], trained["version"])
    promoted, seconds["promote_candidate"] = timed(calls["promote_candidate"])
    return {"seconds": sum(seconds.values()), "stages": seconds, "ready_mb": ready, "peak_mb": peak_mb(),
            "result": {**kept(evaluated), **kept(promoted)}}


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent not idle since boot (/proc/stat)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def proc_stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): state, ppid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (/proc/PID/stat), with its reaped children's if asked."""
    utime, stime, cutime, cstime = map(int, proc_stat_fields(pid)[11:15])
    return (utime + stime + ((cutime + cstime) if children else 0)) / os.sysconf("SC_CLK_TCK")


def server_pid(engine: Any) -> int | None:
    """The PostgreSQL postmaster's pid when the server runs on this machine: our backend's parent."""
    with engine.connect() as conn:
        backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    try:
        if Path(f"/proc/{backend}/comm").read_text().strip() != "postgres":
            return None  # a process of this machine that happens to have the remote backend's pid
        return int(proc_stat_fields(backend)[1])
    except (OSError, ValueError, IndexError):
        return None  # another machine's server


def server_backends(postmaster: int) -> dict[int, float]:
    """The server's live processes (the postmaster's children: backends, workers) and their CPU seconds."""
    backends: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(proc_stat_fields(int(entry.name))[1]) == postmaster:
                backends[int(entry.name)] = process_cpu_seconds(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile: its time is now in the postmaster's children's
    return backends


def server_cpu_seconds(postmaster: int) -> float:
    """CPU seconds of the server: the postmaster, its reaped backends, and the live ones."""
    live = sum(server_backends(postmaster).values())  # live ones first: one that exits meanwhile counts twice,
    return process_cpu_seconds(postmaster, children=True) + live  # never not at all


@dataclass(frozen=True)
class LoadBreakdown:
    """Seconds over an interval: wall clock, every core's busy time, this process's and the server's CPU."""

    wall: float
    busy: float
    own: float
    server: float

    @property
    def other(self) -> float:
        """CPU seconds of everything else: busy time that is neither this process's nor the server's."""
        return max(0.0, self.busy - self.own - self.server)

    @property
    def cores(self) -> float:
        return self.other / self.wall if self.wall > 0 else 0.0


class OtherLoad:
    """Cores that processes other than this one and its database server kept busy meanwhile:
    their work competes for the same cores as a measurement and slows it."""

    def __init__(self, engine: Any) -> None:
        self.postmaster = server_pid(engine)
        self.started = self.reading()

    def reading(self) -> LoadBreakdown:
        """The totals now: since boot for the machine, since each process started for the others."""
        server = server_cpu_seconds(self.postmaster) if self.postmaster else 0.0
        own = resource.getrusage(resource.RUSAGE_SELF)  # next to the machine's: the scan above is in both or neither
        return LoadBreakdown(time.perf_counter(), machine_busy_seconds(), own.ru_utime + own.ru_stime, server)

    def breakdown(self) -> LoadBreakdown | None:
        """What each part spent since this OtherLoad was made; None when the server is not on this machine."""
        if self.postmaster is None:
            return None
        now, then = self.reading(), self.started
        return LoadBreakdown(now.wall - then.wall, now.busy - then.busy, now.own - then.own, now.server - then.server)

    def cores(self) -> float | None:
        breakdown = self.breakdown()
        return None if breakdown is None else breakdown.cores


def run_read_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """COPY into nothing (text and binary) and the pipeline's Arrow read of the same rows, interleaved."""
    from datetime import datetime

    from pipeline.contract.config import load_config
    from pipeline.data import ingest
    from pipeline.store import db

    contract = load_config(Path(spec["config_path"])).dataset
    engine = db.create_engine(spec["database_url"])
    query = ingest.labelled_rows_query(contract, datetime.fromisoformat(spec["watermark"]))
    sql = ingest.query_sql(query)
    copy_into_nothing(engine, sql, binary=True)  # warm the cache: every run reads from memory
    times: dict[str, list[float]] = {"copy_text": [], "copy_binary": [], "arrow_read": []}
    rows = 0
    other_load = OtherLoad(engine)
    for _ in range(spec["repeats"]):
        times["copy_text"].append(timed(copy_into_nothing, engine, sql, False)[1])
        times["copy_binary"].append(timed(copy_into_nothing, engine, sql, True)[1])
        table, seconds = timed(ingest.read_arrow_rows, engine, contract, query)
        times["arrow_read"].append(seconds)
        rows = table.num_rows
        del table
    other_cores = other_load.cores()
    engine.dispose()
    return {"times": times, "rows": rows, "peak_mb": peak_mb(), "other_cores": other_cores}


def run_search_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """Training's floor: the search train_candidate does, by bare scikit-learn on preprocessed float arrays,
    on the threads a stage gets."""
    from pipeline.runtime import threads

    with threads.for_task(Path(spec["config_path"])):
        return _search_floor(spec)


def bare_search(families: dict[str, Any], policy: Any, A: Any, y: Any, folds: list[Any], X: Any, y_all: Any) -> str:
    """Each family's bare estimator cross-validated on the folds of (A, y), then the best one fitted on (X,
    y_all); each fit on the threads its rows get (threads.for_fit), as train's own. Returns the best family."""
    import numpy as np
    from sklearn.metrics import root_mean_squared_error

    from pipeline.model import train
    from pipeline.runtime import threads

    scores = {}
    for family, params in families.items():
        errors = []
        for fit_rows, test_rows in folds:
            with threads.for_fit(len(fit_rows), policy.n_jobs):
                model = train.make_estimator(family, params, policy.seed, policy.n_jobs).fit(A[fit_rows], y[fit_rows])
                errors.append(root_mean_squared_error(y[test_rows], model.predict(A[test_rows])))
        scores[family] = float(np.mean(errors))
    best = min(scores, key=lambda family: scores[family])
    with threads.for_fit(len(X), policy.n_jobs):
        train.make_estimator(best, families[best], policy.seed, policy.n_jobs).fit(X, y_all)
    return best


def _search_floor(spec: dict[str, Any]) -> dict[str, Any]:
    from pipeline.model import train
    from pipeline.model.features import build_preprocessor, model_inputs

    ws = workspace(spec)
    contract, policy = ws.config.dataset, ws.config.training
    frame = ws.load_snapshot(spec["clean_snapshot_hash"])
    train_rows, _ = train.split_holdout(frame, contract, policy.holdout_fraction)
    selected, y, folds = train.search_data(train_rows, contract, policy)  # the search's own rows and folds
    A = build_preprocessor(contract).fit_transform(selected)
    X = build_preprocessor(contract).fit_transform(model_inputs(train_rows, contract))
    y_all = train_rows[contract.target_column].to_numpy(dtype="float64")
    del frame, train_rows, selected
    ready = rss_mb()
    runs = [timed(bare_search, policy.families, policy, A, y, folds, X, y_all) for _ in range(min(spec["repeats"], 3))]
    return {"seconds": min(seconds for _, seconds in runs), "best": runs[0][0], "ready_mb": ready,
            "peak_mb": peak_mb(), "shape": list(X.shape), "search_rows": len(A), "folds": len(folds)}


GX_FLOOR_FORMAT = "COMPLETE"  # the result format that lists every unexpected row (by id), as the stage needs


def run_validation_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """Great Expectations alone: the suite the stage validates with, on the snapshot's rows as typed frames cut
    into the stage's chunks, in the stage's own context and batch definition, made once (neither they nor the
    read are timed), listing every unexpected row by id; best of up to three."""
    from pipeline.data import chunked_quality, validate

    batches = validate.whole_frame_batches()  # GX imported, its logging and progress bars quieted
    import great_expectations as gx

    ws = workspace(spec)
    frame = ws.load_snapshot(spec["snapshot_hash"])
    suite = validate.load_suite(ws.config.dataset.expectation_suite)
    size = chunked_quality.CHUNK_ROWS
    chunks = [frame.iloc[start:start + size] for start in range(0, len(frame), size)]
    expectations = gx.ExpectationSuite(**suite)
    options = {"result_format": GX_FLOOR_FORMAT, "unexpected_index_column_names": [ws.config.dataset.id_column],
               "return_unexpected_index_query": False}

    def validate_chunks() -> None:
        for chunk in chunks:
            batches.get_batch(batch_parameters={"dataframe": chunk}).validate(expectations, result_format=options)

    seconds = min(timed(validate_chunks)[1] for _ in range(min(spec["repeats"], 3)))
    return {"seconds": seconds, "rows": len(frame), "chunks": len(chunks), "expectations": len(suite["expectations"]),
            "result_format": f"{GX_FLOOR_FORMAT}, rows by id", "peak_mb": peak_mb()}


def run_predict_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """The candidate's bare `predict` on its holdout's model inputs, already in memory, on the threads a stage
    gets; best of up to three."""
    from pipeline.model import train
    from pipeline.model.features import model_inputs
    from pipeline.registry import records
    from pipeline.runtime import threads

    with threads.for_task(Path(spec["config_path"])):
        ws = workspace(spec)
        with ws.engine.connect() as conn:
            model = records.get_model(conn, spec["version"], ws.model)
        _, holdout = train.holdout_rows(ws, model["snapshot_hash"], ws.config.training.holdout_fraction)
        inputs, fitted = model_inputs(holdout, ws.config.dataset), ws.load_model(model["artifact_hash"])
        seconds = min(timed(fitted.predict, inputs)[1] for _ in range(min(spec["repeats"], 3)))
    return {"seconds": seconds, "rows": len(inputs), "peak_mb": peak_mb()}


LIGHT_PIPELINE_MODULES = {"pipeline", "pipeline.contract", "pipeline.contract.config", "pipeline.contract.settings"}  # what a DAG file may import: model names


def run_dag_import(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds to import airflow.sdk, then the DAG file on top of it, as the DAG processor parses it."""
    import importlib
    import importlib.util

    _, sdk_seconds = timed(importlib.import_module, "airflow.sdk")
    before = set(sys.modules)
    module_spec = importlib.util.spec_from_file_location(f"bench_dag_{Path(spec['path']).stem}", spec["path"])
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    _, dag_seconds = timed(module_spec.loader.exec_module, module)
    loaded = set(sys.modules) - before
    heavy = sorted({name.split(".")[0] for name in loaded}
                   & {"pandas", "numpy", "sklearn", "great_expectations", "pyarrow", "scipy"}
                   | {name for name in loaded if name.split(".")[0] == "pipeline"} - LIGHT_PIPELINE_MODULES)
    return {"sdk_seconds": sdk_seconds, "dag_seconds": dag_seconds, "heavy_imports": heavy}


PROBES = {"stage": run_stage, "retrain": run_retrain, "read_floor": run_read_floor, "search_floor": run_search_floor,
          "validation_floor": run_validation_floor, "predict_floor": run_predict_floor, "dag_import": run_dag_import}


def main() -> None:
    from bench import peer, scoring

    spec = json.loads(Path(sys.argv[1]).read_text())
    result = {**PROBES, **scoring.PROBES, **peer.PROBES}[spec["probe"]](spec)
    Path(spec["out"]).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
