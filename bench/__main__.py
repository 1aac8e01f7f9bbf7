"""`python -m bench`: time and memory of every retrain stage at 10^4..10^6 rows, beside its floor."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import busy, peer, report, rest, scoring, threads, workload
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.store import db

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
DAG_PARSE_LIMIT = 0.5  # seconds a DAG file may add on top of airflow.sdk
VALIDATION_FLOOR = "GX listing unexpected rows, by chunk"
TRAINING_FLOOR = "bare search (same folds + final fit)"
EVALUATION_FLOOR = "bare predict on the holdout"
READ_TARGET = 0.8  # the Arrow read's share of COPY-into-nothing throughput
MEMORY_LIMIT_MB = 2048
VALIDATION_TARGET = 2.0  # validation within this many times GX listing unexpected rows on the same chunks, at 10^6
EVALUATION_SECONDS = 1.5  # evaluation at 10^6
TRAINING_TARGET = 0.7  # train's share of its floor, the same search by bare scikit-learn
RETRAIN_TARGET = 0.6  # the whole retrain's share of its floor: COPY + bare search + GX listing rows + bare predict
METHOD = """\
retrain     a steady-state retrain: a first retrain (all stages in one process, as `python -m pipeline
            retrain` runs them; its row) makes a champion, 1 % more labelled rows arrive, then each stage
            of the measured retrain runs in a fresh process, as Airflow runs a task.
seconds     the stage function alone (pipeline.stages), one run; interpreter start, imports (those a
            stage makes only when it runs, Great Expectations, scikit-learn and matplotlib, too:
            bench.probe.LATE_IMPORTS)
            and opening the workspace are not counted (`python -m bench.orchestration` shows them).
rows/s      labelled rows in the snapshot over seconds, for every step.
peer        'peer: hand-wired retrain' (bench/peer.py), in a fresh process after the measured retrain, on the
            same rows and config, as a user writes it from the libraries' tutorials: pandas.read_sql of the
            labelled rows, a GX checkpoint with the same suite listing unexpected rows by id (result format
            COMPLETE), GridSearchCV over the same families and parameters on the same number of shuffled
            folds (refit on every training row), joblib.dump, predict on the newest 20 % and RMSE; its
            steps are the 'peer:' rows. On its row, 'floor s' is OUR whole retrain's seconds, so 'vs floor'
            is our retrain / the peer's (target <= {peer_target:g}): ours quarantines, records lineage,
            bootstraps, writes cards and promotes besides. Its peak MB is its one process's.
floors      COPY (the snapshot's SQL) TO STDOUT into a sink that drops every byte (psycopg2, text and
            binary), best of {repeats}, interleaved with {repeats} Arrow reads of the same rows (the 'read
            rows -> Arrow' row, best of {repeats}); 'bare search': the search train_candidate does, by bare
            scikit-learn on the preprocessed rows held as float64 arrays (no pipeline): each family's
            estimator cross-validated on the search's own rows and folds, then the best one fitted on every
            training row, each fit on the threads its rows get (threads.for_fit), best of {fits};
            'GX listing unexpected rows': the suite validated by GX on the snapshot's rows already in a
            frame, cut into the validation stage's chunks, result format COMPLETE with rows named by id,
            best of {fits}; 'bare predict': the candidate's predict on its holdout's inputs already in
            memory, best of {fits}.
vs floor    floor seconds / step seconds (1.00 = as fast as the floor); reading rows is compared with
            the faster COPY, validation with GX listing rows, training with the bare search, evaluation
            with the bare predict, the whole DAG with COPY + bare search + GX listing rows + bare predict.
peak MB     getrusage high-water mark of the step's own process (interpreter and imports included;
            the JSON also has ready_mb, resident memory just before the call). The whole DAG's peak is
            its largest stage's, since each task runs in its own process.
scoring     score_batch over every row of the table (serving.score_records: all), best of {fits}
            runs, each a new run in a fresh process on vacuumed tables, after the measured retrain and
            a first scoring run of its own (which compiles the champion's ONNX graph into the machine's
            cache, once per champion: shown, not compared); its floor: COPY of the same rows
            TO STDOUT into nothing (binary), the champion's bare predict on them already typed in memory, and
            binary COPY of one forecast a row into the table the CRM reads, pipeline.predictions itself (its
            primary key, the indexes its readers need and its foreign key kept up; rolled back), best of
            {repeats} each (the same COPY into an unindexed temporary table is shown beside it, not counted).
busy        'retrain with a busy process beside it': the measured retrain's stages again, each in a fresh
            process, for a run of their own on the same rows, while `python -c 'while 1: pass'` keeps a
            core busy; its floor is the quiet retrain (vs floor = quiet s / busy s; target >= 0.5).
threads     each stage's BLAS, OpenMP and joblib pools are sized as a task's (pipeline.runtime.threads);
            'train_candidate, threads chosen by size': the train stage again, a run of its own in a fresh
            process each time, with training.n_jobs 1 and 2 (every fit on that many threads), quiet and
            beside a busy process; its seconds are the measured train stage's (threads chosen by each fit's
            size), its floor the better of 1 and 2 threads quiet (target: within 1.2x).
training    {config}."""


class BenchError(RuntimeError):
    """A measurement process failed; its error output is in the message."""


def say(text: str, end: str = "\n") -> None:
    print(text, end=end, flush=True)


def probe(spec: dict[str, Any], env: dict[str, str] | None = None, tick: float = 5.0) -> dict[str, Any]:
    """Run one measurement (bench/probe.py) in a fresh Python process, printing a dot every `tick` seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as folder:
        spec_path, out_path, log_path = (Path(folder) / name for name in ("spec.json", "out.json", "stderr.log"))
        spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
        environ = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})}
        with log_path.open("w") as log:
            child = subprocess.Popen([sys.executable, "-m", "bench.probe", str(spec_path)], cwd=PROJECT_ROOT,
                                     env=environ, stdout=subprocess.DEVNULL, stderr=log)
            try:
                while True:
                    try:
                        child.wait(timeout=tick)
                        break
                    except subprocess.TimeoutExpired:
                        say(".", end="")
            except BaseException:  # Ctrl-C or an error here: the measurement must not outlive the bench
                child.kill()
                child.wait()
                raise
        if child.returncode != 0:
            killed = f" (killed by signal {-child.returncode}; out of memory?)" if child.returncode < 0 else ""
            raise BenchError(f"{spec['probe']} {spec.get('stage', '')} failed{killed}:\n"
                             f"{log_path.read_text()[-3000:]}")
        return json.loads(out_path.read_text())  # type: ignore[no-any-return]


def measure_dag_parsing(repeats: int = 3) -> list[dict[str, Any]]:
    """Seconds each DAG file adds on top of airflow.sdk, best of `repeats` fresh processes (after one warm-up)."""
    home = tempfile.mkdtemp(prefix="bench-airflow-home-")
    env = {"AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
           "PYTHONPATH": os.pathsep.join(str(PROJECT_ROOT / d) for d in ("dags", "plugins", ""))}
    results = []
    try:
        for path in sorted((PROJECT_ROOT / "dags").glob("*.py")):
            say(f"DAG parse: {path.name} ...", end=" ")
            runs = [probe({"probe": "dag_import", "path": str(path)}, env) for _ in range(repeats + 1)][1:]
            best = min(runs, key=lambda r: r["dag_seconds"])
            results.append({"file": path.name, "dag_seconds": best["dag_seconds"],
                            "sdk_seconds": min(r["sdk_seconds"] for r in runs), "heavy_imports": best["heavy_imports"],
                            "ok": best["dag_seconds"] < DAG_PARSE_LIMIT})
            say(f"{best['dag_seconds']:.3f} s on top of airflow.sdk ({results[-1]['sdk_seconds']:.2f} s)")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return results


def run_stage(base: dict[str, Any], label: str, name: str, **arguments: Any) -> dict[str, Any]:
    say(f"{label} {name} ...", end=" ")
    measured = probe({**base, "probe": "stage", "stage": name, "arguments": arguments})
    say(f"{measured['seconds']:.2f} s, peak {measured['peak_mb']:,.0f} MB")
    return measured


def generate(rows: int, server_url: str, config_path: Path, repeats: int) -> tuple[str, str, float, str, dict[str, Any]]:
    """`rows` generated rows in a scratch database, and what every probe on them is given: the size's label, the
    database URL, the seconds generating took, a scratch artifact folder, the probes' common spec."""
    label = f"[{report.fmt(rows, 'rows')}]"
    url = workload.scratch_url(server_url, rows)
    say(f"{label} generating {rows:,} rows in database {url.rsplit('/', 1)[-1].split('?')[0]} ...", end=" ")
    generated = workload.create_table(url, rows, progress=lambda n: say(f"{n:,}", end=" ") if rows > 10**6 else None)
    say(f"{generated:.1f} s")
    artifacts = tempfile.mkdtemp(prefix=f"bench-artifacts-{rows}-")
    base = {"database_url": url, "config_path": str(config_path), "artifact_dir": artifacts,
            "pgdata_dir": str(Settings.from_env().pgdata_dir), "watermark": workload.WATERMARK.isoformat(),
            "repeats": repeats}
    return label, url, generated, artifacts, base


def measure_size(rows: int, server_url: str, config_path: Path, repeats: int, keep: bool) -> dict[str, Any]:
    """Generate `rows` rows, retrain once for a champion, add 1 % arrivals, then measure floors and each stage."""
    label, url, generated, artifacts, base = generate(rows, server_url, config_path, repeats)
    try:
        say(f"{label} first retrain, all stages in one process (it makes the champion) ...", end=" ")
        first = probe({**base, "probe": "retrain", "run_id": f"bench-{rows}-first"})
        say(f"{first['seconds']:.1f} s, peak {first['peak_mb']:,.0f} MB, {first['result'].get('status')}")
        added = workload.arrivals(rows)
        say(f"{label} {added:,} more labelled rows arrive ...", end=" ")
        started = time.perf_counter()
        workload.insert_rows(url, rows + 1, rows + added, seed=0.43)
        say(f"{time.perf_counter() - started:.1f} s")

        say(f"{label} floors: COPY into nothing (text, binary) and the Arrow read, {repeats} times each ...", end=" ")
        reads = probe({**base, "probe": "read_floor"})
        best = {name: min(times) for name, times in reads["times"].items()}
        say(", ".join(f"{name} {seconds:.2f} s" for name, seconds in best.items())
            + ("" if reads["other_cores"] is None else f"; other processes kept {reads['other_cores']:.2f} cores busy"))
        copy_floor = min(best["copy_text"], best["copy_binary"])

        base["run_id"] = f"bench-{rows}"
        ingest = run_stage(base, label, "ingest_snapshot")
        snapshot = ingest["result"]
        n = int(snapshot["row_count"])
        checked = run_stage(base, label, "validate_snapshot", snapshot_hash=snapshot["snapshot_hash"])
        say(f"{label} floor: Great Expectations listing unexpected rows on the same chunks and suite ...", end=" ")
        gx_floor = probe({**base, "probe": "validation_floor", "snapshot_hash": snapshot["snapshot_hash"]})
        say(f"{gx_floor['seconds']:.2f} s ({gx_floor['expectations']} expectations, {gx_floor['chunks']} chunks, "
            f"{gx_floor['result_format']})")
        clean = checked["result"]["clean_snapshot_hash"]
        trained = run_stage(base, label, "train_candidate", clean_snapshot_hash=clean)
        say(f"{label} floor: the same search by bare scikit-learn ...", end=" ")
        fit = probe({**base, "probe": "search_floor", "clean_snapshot_hash": clean})
        say(f"{fit['seconds']:.2f} s ({fit['folds']} folds on {fit['search_rows']:,} rows, best {fit['best']} "
            f"fitted on {fit['shape'][0]:,} x {fit['shape'][1]})")
        evaluated = run_stage(base, label, "evaluate_candidate", version=trained["result"]["version"])
        say(f"{label} floor: the candidate's bare predict on its holdout ...", end=" ")
        predict_floor = probe({**base, "probe": "predict_floor", "version": trained["result"]["version"]})
        say(f"{predict_floor['seconds']:.2f} s on {predict_floor['rows']:,} rows")
        promoted = run_stage(base, label, "promote_candidate")
        say(f"{label} peer: the hand-wired retrain (read_sql, GX checkpoint, GridSearchCV, dump, predict) ...", end=" ")
        hand_wired = probe({**base, "probe": "peer"})
        say(", ".join(f"{name} {hand_wired['steps'][name]:.2f} s" for name in peer.STEPS)
            + f"; peak {hand_wired['peak_mb']:,.0f} MB, best {hand_wired['best']}")
        score_step, score_floor = scoring.measure(probe, say, base, label)
        quiet = sum(m["seconds"] for m in (ingest, checked, trained, evaluated, promoted))
        busy_step = busy.measure(run_stage, base, label, n, quiet)
        threads_step = threads.measure(run_stage, base, label, n, clean, trained["seconds"],
                                       busy_step["stages"]["train_candidate"])
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
        if not keep:
            db.drop_database(url)

    measured = {"ingest_snapshot": ingest, "validate_snapshot": checked, "train_candidate": trained,
                "evaluate_candidate": evaluated, "promote_candidate": promoted}
    floors = {"COPY into nothing": copy_floor, TRAINING_FLOOR: fit["seconds"],
              VALIDATION_FLOOR: gx_floor["seconds"], EVALUATION_FLOOR: predict_floor["seconds"]}
    steps = []
    for name, m in measured.items():
        floor = {"ingest_snapshot": copy_floor, "train_candidate": fit["seconds"],
                 "validate_snapshot": gx_floor["seconds"], "evaluate_candidate": predict_floor["seconds"]}.get(name)
        steps.append(report.step(name, m["seconds"], n, floor, m["peak_mb"], ready_mb=m["ready_mb"], result=m["result"]))
        if name == "ingest_snapshot":
            steps.append(report.step(report.READ_ROW, best["arrow_read"], n, copy_floor, None,
                                     all_seconds=reads["times"]["arrow_read"], other_cores=reads["other_cores"]))
    floor_details = {"COPY into nothing": {"all_seconds": reads["times"]},
                     TRAINING_FLOOR: {k: fit[k] for k in ("peak_mb", "shape", "search_rows", "folds", "best")},
                     VALIDATION_FLOOR: {k: gx_floor[k] for k in ("peak_mb", "rows", "chunks", "expectations",
                                                                 "result_format")},
                     EVALUATION_FLOOR: {k: predict_floor[k] for k in ("peak_mb", "rows")}}
    steps.append(report.whole_dag(steps, n, copy_floor + fit["seconds"] + gx_floor["seconds"] + predict_floor["seconds"]))
    steps += peer.rows(hand_wired, steps[-1], n)
    steps.append(busy_step)
    steps.append(threads_step)
    steps.append(score_step)
    steps.append(report.step(report.FIRST_ROW, first["seconds"], rows, None, first["peak_mb"],
                             ready_mb=first["ready_mb"], stages=first["stages"], result=first["result"]))
    return {"rows": rows, "snapshot_rows": n, "arrivals": added, "generate_seconds": generated, "steps": steps,
            "floors": {name: {"seconds": s, **floor_details[name]} for name, s in floors.items()}
            | {scoring.FLOOR: score_floor}}


BUSY_CORES = 0.2  # other processes' load during the read measurement that makes its ratio unreliable


def measure_scoring(rows: int, server_url: str, config_path: Path, repeats: int, keep: bool) -> dict[str, Any]:
    """Generate `rows` rows, retrain once for a champion, then only batch scoring beside its floor."""
    label, url, generated, artifacts, base = generate(rows, server_url, config_path, repeats)
    base["run_id"] = f"bench-{rows}"
    try:
        say(f"{label} first retrain, all stages in one process (it makes the champion) ...", end=" ")
        first = probe({**base, "probe": "retrain", "run_id": f"bench-{rows}-first"})
        say(f"{first['seconds']:.1f} s, {first['result'].get('status')}")
        score_step, score_floor = scoring.measure(probe, say, base, label)
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
        if not keep:
            db.drop_database(url)
    return {"rows": rows, "snapshot_rows": rows, "generate_seconds": generated, "steps": [score_step],
            "floors": {scoring.FLOOR: score_floor}}


def busy_machine_note(other_cores: float | None) -> str:
    """A warning when other work competed with the read and its floor (the read needs more CPU)."""
    if other_cores is None:
        return "; the load of other processes is unknown (the server is on another machine)"
    if other_cores > BUSY_CORES:
        return (f"; other processes kept {other_cores:.2f} cores busy meanwhile, which slows the read more "
                "than COPY (its client needs more CPU): measure on a quiet machine")
    return f"; other processes: {other_cores:.2f} cores"


def verdicts(sizes: list[dict[str, Any]], dag_parse: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with the measured value."""
    sizes = [size for size in sizes if "error" not in size]
    lines = peer.verdicts(sizes)
    at = {size["rows"]: {s["step"]: s for s in size["steps"]} for size in sizes}
    if 10**6 in at and report.DAG_ROW in at[10**6]:
        read, dag, ingest = at[10**6][report.READ_ROW], at[10**6][report.DAG_ROW], at[10**6]["ingest_snapshot"]
        lines.append(f"read rows -> Arrow at 10^6: {read['vs_floor']:.2f} of COPY-into-nothing throughput "
                     f"(target >= {READ_TARGET}) {'OK' if read['vs_floor'] >= READ_TARGET else 'MISSED'}; "
                     f"whole ingest stage {ingest['vs_floor']:.2f}" + busy_machine_note(read.get("other_cores")))
        one_process = at[10**6].get(report.FIRST_ROW, dag)["peak_mb"]
        worst = max(dag["peak_mb"], one_process)
        largest = max((s for s in at[10**6].values() if s["step"] in report.STAGES), key=lambda s: s["peak_mb"])
        lines.append(f"peak memory of a retrain at 10^6: {dag['peak_mb']:,.0f} MB per task ({largest['step']}), "
                     f"{one_process:,.0f} MB all stages in one process (target < {MEMORY_LIMIT_MB}) "
                     f"{'OK' if worst < MEMORY_LIMIT_MB else 'MISSED'}")
        lines += stage_verdicts(at[10**6])
    for rows in sorted(r for r in set(at) - {10**6} if report.DAG_ROW in at[r]):  # not with --scoring-only
        lines += stage_verdicts(at[rows], rows)
    growth = [(size["rows"], max(s["peak_mb"] - s["ready_mb"] for s in size["steps"] if s["step"] in report.STAGES))
              for size in sizes if any(s["step"] in report.STAGES for s in size["steps"])]
    if len(growth) > 1:
        lines.append("memory above imports, largest stage: " + ", ".join(
            f"{report.fmt(r, 'rows')} {mb:,.0f} MB ({mb * 1024 / r:,.1f} KB per row)" for r, mb in growth))
    lines += busy.verdicts(sizes)
    lines += threads.verdicts(sizes)
    lines += scoring.verdicts(sizes)
    for d in dag_parse:
        lines.append(f"DAG parse {d['file']}: {d['dag_seconds']:.3f} s on top of airflow.sdk (target < "
                     f"{DAG_PARSE_LIMIT}) {'OK' if d['ok'] else 'MISSED'}"
                     + (f"; imports {', '.join(d['heavy_imports'])} at parse time" if d["heavy_imports"] else ""))
    return lines


def stage_verdicts(steps: dict[str, dict[str, Any]], rows: int = 10**6) -> list[str]:
    """The stages and the whole retrain against the targets set on their floors (issue 36): validation and
    evaluation at 10^6, training and the whole retrain at every size."""
    lines, at = [], report.fmt(rows, "rows")
    validate, train, dag = steps["validate_snapshot"], steps["train_candidate"], steps[report.DAG_ROW]
    if rows == 10**6 and validate["vs_floor"]:
        times = 1 / validate["vs_floor"]
        lines.append(f"validate_snapshot at {at}: {validate['seconds']:.2f} s, {times:.1f}x GX listing unexpected rows "
                     f"on the same chunks (target <= {VALIDATION_TARGET:g}x) {'OK' if times <= VALIDATION_TARGET else 'MISSED'}")
    if rows == 10**6:
        evaluate = steps["evaluate_candidate"]
        lines.append(f"evaluate_candidate at {at}: {evaluate['seconds']:.2f} s (target <= {EVALUATION_SECONDS:g} s) "
                     f"{'OK' if evaluate['seconds'] <= EVALUATION_SECONDS else 'MISSED'}")
    if train["vs_floor"]:
        lines.append(f"train_candidate at {at}: {train['vs_floor']:.2f} of its floor, the same search by bare "
                     f"scikit-learn (target >= {TRAINING_TARGET:g}) {'OK' if train['vs_floor'] >= TRAINING_TARGET else 'MISSED'}")
    lines.append(f"whole retrain at {at}: {dag['vs_floor']:.2f} of its floor, COPY + bare search + GX listing rows + "
                 f"bare predict (target >= {RETRAIN_TARGET:g}) {'OK' if dag['vs_floor'] >= RETRAIN_TARGET else 'MISSED'}")
    return lines


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--with-10m", action="store_true", help="also 10^7 rows (about 20 more minutes on 2 CPUs, peak 2.4 GB)")
    parser.add_argument("--every-family", action="store_true",
                        help="train every family pipeline.yaml ships (random forest too), not only ridge and HGB")
    parser.add_argument("--sizes", type=int, nargs="+", help="row counts to measure instead of 10^4 10^5 10^6")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each floor and of the Arrow read (best kept)")
    parser.add_argument("--scoring-only", action="store_true",
                        help="only batch scoring beside its floor (after the first retrain that makes the champion); "
                             "no DAG parse, REST API or retrain stages")
    parser.add_argument("--keep-databases", action="store_true", help="leave the generated bench_<rows>_<pid> databases")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = args.sizes or [10**4, 10**5, 10**6] + ([10**7] if args.with_10m else [])
    started = datetime.now(UTC)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    previous, previous_commit = report.previous_seconds(args.results_dir / "latest.json")
    previous_peak = report.previous_peaks(args.results_dir / "latest.json")
    previous_ratio = report.previous_ratios(args.results_dir / "latest.json")
    server_url = db.database_url(Settings.from_env())
    config_path = workload.write_config(Settings.from_env().config_path, args.results_dir / f"{stamp}-pipeline.yaml",
                                        every_family=args.every_family)
    load_before = os.getloadavg()
    say(f"bench: sizes {', '.join(f'{n:,}' for n in sizes)}; {os.cpu_count()} CPUs, load average "
        f"{load_before[0]:.1f} (other work on this machine slows every step); training: "
        f"{workload.describe_config(config_path)}")
    clock = time.perf_counter()
    dag_parse = [] if args.scoring_only else measure_dag_parsing()
    rest_api: dict[str, Any] = {"error": "skipped (--scoring-only)"}
    try:
        rest_api = rest_api if args.scoring_only else rest.measure(server_url, say)
    except Exception as exc:  # noqa: BLE001 - the stage measurements still run; say what broke
        rest_api = {"error": str(exc)}
    measure = measure_scoring if args.scoring_only else measure_size
    results = []
    for rows in sizes:
        try:
            results.append(measure(rows, server_url, config_path, args.repeats, args.keep_databases))
        except BenchError as exc:  # keep the sizes measured so far, and say what broke
            say(f"\n[{report.fmt(rows, 'rows')}] {exc}")
            results.append({"rows": rows, "error": str(exc), "steps": [], "floors": {}})
        say(f"[{report.fmt(rows, 'rows')}] done; {time.perf_counter() - clock:.0f} s so far")
    document = {
        "commit": git_commit(), "started_at": started.isoformat(), "seconds": time.perf_counter() - clock,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "training_config": workload.describe_config(config_path), "config_path": str(config_path),
        "method": METHOD.format(
            repeats=args.repeats, fits=min(args.repeats, 3), peer_target=peer.TARGET, config=workload.describe_config(config_path)),
        "dag_parse": dag_parse, "rest_api": rest_api, "sizes": results,
    }
    say("")
    say(report.table(results, previous, previous_peak, previous_ratio))
    for failed in (size for size in results if "error" in size):
        say(f"{report.fmt(failed['rows'], 'rows')}: not measured: {failed['error'].splitlines()[0]}")
    if previous_commit:
        say(f"(last run s, last vs floor, last run MB: bench/results/latest.json before this run, commit {previous_commit})")
    say(f"load average before {document['machine']['load_average_before'][0]:.1f}, "
        f"after {document['machine']['load_average_after'][0]:.1f} on {os.cpu_count()} CPUs")
    say("")
    for line in verdicts(results, dag_parse):
        say(line)
    say(rest.verdict(rest_api) if "error" not in rest_api else f"REST API: not measured: {rest_api['error']}")
    say("")
    say(document["method"])
    if args.scoring_only:  # a partial run: latest.json stays the last full one, the base of 'last run'
        (args.results_dir / f"{stamp}-scoring.json").write_text(json.dumps(document, indent=2, default=str))
        say(f"\nwritten: {args.results_dir / f'{stamp}-scoring.json'}")
        return 0
    for name in (f"{stamp}.json", "latest.json"):
        (args.results_dir / name).write_text(json.dumps(document, indent=2, default=str))
    report.plot([size for size in results if "error" not in size], args.results_dir / f"{stamp}.png")
    shutil.copyfile(args.results_dir / f"{stamp}.png", args.results_dir / "latest.png")
    say(f"\nwritten: {args.results_dir / f'{stamp}.json'}, latest.json, {stamp}.png, latest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
