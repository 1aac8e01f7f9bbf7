"""The bench's data and configuration: a generated patient table in a scratch database, a bounded config."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pipeline.store import db

WATERMARK = datetime(2100, 1, 1, tzinfo=UTC)  # after every generated row
# Families the bench trains unless asked for every one (--every-family): the shipped random forest
# (200 trees) took 3 minutes to fit on 10^6 rows' training part; at 10^7 it was not measured.
BENCH_FAMILIES = ("ridge", "hist_gradient_boosting")

# A Gaussian from random(), so any PostgreSQL (not only 16+, which has random_normal) generates it.
NORMAL_SQL = """
CREATE FUNCTION pg_temp.normal(mean float8, sd float8, lo float8, hi float8) RETURNS float8
LANGUAGE sql VOLATILE AS
$$ SELECT greatest(lo, least(hi, mean + sd * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))) $$
"""

# Shaped like the diabetes study (means and spreads of its columns), with a learnable label (R^2 about
# 0.5; a linear model's predictions stay inside the promotion policy's plausible range), and
# the faults a CRM export has: 0.5 % unknown sex codes (quarantined), 0.5 % messy but fixable
# codes (normalised), 2 % rows whose label is not known yet (not ingested). The label time is given
# (as sql/009's trigger would set it), so the load never goes through the trigger function.
GENERATE_SQL = """
INSERT INTO public.patient_records
SELECT g,
       v.visit_date - (round(v.age * 365.25) + g % 300 + 1)::int,
       v.visit_date,
       CASE WHEN g % 200 = 7 THEN 'U' WHEN g % 200 = 8 THEN ' f ' WHEN random() < 0.5 THEN 'F' ELSE 'M' END,
       round(v.bmi::numeric, 1), round(v.bp::numeric, 2),
       round(pg_temp.normal(189, 34.6, 100, 320)::numeric), round(pg_temp.normal(115, 30, 40, 250)::numeric, 1),
       round(pg_temp.normal(49.8, 12.9, 20, 100)::numeric), round(pg_temp.normal(4.07, 1.29, 2, 9)::numeric, 2),
       round(v.ltg::numeric, 4), round(pg_temp.normal(91, 11.5, 58, 124)::numeric),
       CASE WHEN g % 50 = 0 THEN NULL ELSE round(greatest(25, least(346,
           152 + 5 * (v.bmi - 26.4) + 35 * (v.ltg - 4.64) + 0.3 * (v.bp - 94.6)
           + pg_temp.normal(0, 30, -1000, 1000)))::numeric, 1) END,
       v.recorded_at,
       CASE WHEN g % 50 = 0 THEN NULL ELSE v.recorded_at END  -- outcome known when recorded: no trigger call
  FROM generate_series({first:d}, {last:d}) AS g,
       LATERAL (SELECT timestamptz '2015-01-01 00:00:00+00' + g * interval '7 seconds' AS recorded_at,
                       (timestamptz '2015-01-01 00:00:00+00' + g * interval '7 seconds' - interval '365 days')::date
                           AS visit_date,
                       pg_temp.normal(48.5, 13.1, 19, 79) AS age, pg_temp.normal(26.4, 4.4, 15, 45) AS bmi,
                       pg_temp.normal(94.6, 13.8, 60, 140) AS bp, pg_temp.normal(4.64, 0.52, 3, 6.5) AS ltg) AS v
"""
CHUNK_ROWS = 1_000_000  # one INSERT per million rows: progress to show, and bounded transactions


def scratch_url(server_url: str, rows: int) -> str:
    """A database of this run's own (two benches on one server must not drop each other's tables)."""
    return db.with_database(server_url, f"bench_{rows}_{os.getpid()}")


def create_table(url: str, rows: int, progress: Any = None) -> float:
    """A fresh database with the schema and `rows` generated patient records; returns seconds taken."""
    started = time.perf_counter()
    db.drop_database(url)
    db.ensure_database(url)
    engine = db.create_engine(url)
    try:
        db.apply_schema(engine)
    finally:
        engine.dispose()
    insert_rows(url, 1, rows, seed=0.42, progress=progress)
    return time.perf_counter() - started


def arrivals(rows: int) -> int:
    """New labelled rows between the first retrain and the measured one: 1 % of the table."""
    return max(rows // 100, 100)


def insert_rows(url: str, first: int, last: int, seed: float, progress: Any = None) -> None:
    """Generate patients `first`..`last` (ids and recording order), then vacuum, analyse and checkpoint."""
    engine = db.create_engine(url)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT setseed(%s)", (seed,))
        cursor.execute(NORMAL_SQL)
        for start in range(first, last + 1, CHUNK_ROWS):
            end = min(last, start + CHUNK_ROWS - 1)
            cursor.execute(GENERATE_SQL.format(first=start, last=end))
            raw.commit()
            if progress:
                progress(end)
        raw.dbapi_connection.autocommit = True  # VACUUM runs outside a transaction
        cursor.execute("VACUUM (ANALYZE) public.patient_records")  # hint bits set: reads measure reading
        checkpoint(cursor)
    finally:
        raw.close()
        engine.dispose()


def settle(url: str, tables: tuple[str, ...]) -> None:
    """Vacuum and analyse `tables`, which the step before wrote: the work autovacuum would otherwise start on
    those writes while the next step is timed. No checkpoint: the first write to each page after one logs the
    whole page, which would slow the next step's writes instead."""
    engine = db.create_engine(url)
    raw = engine.raw_connection()
    try:
        raw.dbapi_connection.autocommit = True  # VACUUM runs outside a transaction
        cursor = raw.cursor()
        cursor.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")
    finally:
        raw.close()
        engine.dispose()


def checkpoint(cursor: Any) -> None:
    """Flush the load's dirty pages now, so the server does not do it while a step is timed."""
    try:
        cursor.execute("CHECKPOINT")
    except Exception:  # noqa: BLE001 - needs superuser or pg_checkpoint; without it the bench is noisier
        pass


def write_config(source: Path, target: Path, every_family: bool = False) -> Path:
    """The project's config with training limited to BENCH_FAMILIES (unless `every_family`); the rest as shipped."""
    raw = yaml.safe_load(source.read_text())
    dataset, training = raw["dataset"], raw["training"]
    dataset["expectation_suite"] = str((source.parent / dataset["expectation_suite"]).resolve())
    if not every_family:
        training["families"] = {name: params for name, params in training["families"].items()
                                if name in BENCH_FAMILIES}
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


def describe_config(path: Path) -> str:
    training = yaml.safe_load(path.read_text())["training"]
    families = ", ".join(f"{name} {params}" for name, params in training["families"].items())
    sample = training.get("search_max_rows")
    rows = f" on a sample of at most {sample:,} rows" if sample else ""
    shipped = "" if "random_forest" in training["families"] else " (pipeline.yaml also has random_forest)"
    return f"{training['cv_folds']}-fold CV{rows} over {families}{shipped}"
