"""Demo data: the diabetes study scikit-learn ships, as a CRM's patient table, plus new arrivals."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sklearn.datasets import load_diabetes
from sqlalchemy.engine import Connection, Engine

from pipeline.contract.settings import PROJECT_ROOT

DEMO_TABLE = "public.patient_records"
FIRST_VISIT = pd.Timestamp("2023-01-02")
ARRIVAL_VISITS_FROM = pd.Timestamp("2025-06-01")
# The study codes sex as 1/2 without saying which is which; the demo maps 1 -> F, 2 -> M.
SEX_CODES = {1.0: "F", 2.0: "M"}
STUDY_COLUMNS = {"bmi": "bmi", "bp": "bp_mean", "s1": "tc", "s2": "ldl", "s3": "hdl",
                 "s4": "tch", "s5": "ltg", "s6": "glucose", "target": "progression_12m"}
SOURCE_COLUMNS = ["patient_id", "birth_date", "visit_date", "sex", "bmi", "bp_mean", "tc", "ldl",
                  "hdl", "tch", "ltg", "glucose", "progression_12m"]


def study_frame() -> pd.DataFrame:
    """The 442 patients of the diabetes study, raw units, as scikit-learn ships them."""
    return load_diabetes(scaled=False, as_frame=True).frame


def _birth_dates(visits: pd.Series, ages: np.ndarray, extra_days: np.ndarray) -> pd.Series:
    """Birth dates that make each patient exactly `ages` whole years old at the visit."""
    days = np.round(ages * 365.25).astype(int) + extra_days
    return visits - pd.to_timedelta(days, unit="D")


def as_patient_records(study: pd.DataFrame, visits: pd.Series, extra_days: np.ndarray) -> pd.DataFrame:
    """Study rows in the CRM's shape: dates instead of age, named columns, sex as F/M."""
    records = study.rename(columns=STUDY_COLUMNS)
    records["visit_date"] = visits.dt.date.to_numpy()
    records["birth_date"] = _birth_dates(visits, study["age"].to_numpy(), extra_days).dt.date.to_numpy()
    records["sex"] = study["sex"].map(SEX_CODES).to_numpy()
    return records


def demo_records() -> pd.DataFrame:
    """The study as labelled baseline visits every two days from 2023-01-02, deterministic."""
    study = study_frame()
    index = np.arange(len(study))
    visits = pd.Series(FIRST_VISIT + pd.to_timedelta(index * 2, unit="D"))
    records = as_patient_records(study, visits, extra_days=(index * 37) % 300 + 1)
    records["patient_id"] = index + 1
    # The label is known one year after the visit; that is when the CRM records the row.
    records["recorded_at"] = (visits + pd.Timedelta(days=365, hours=9)).dt.tz_localize("UTC").to_numpy()
    return records[[*SOURCE_COLUMNS, "recorded_at"]]


def arrival_records(rows: int, seed: int, drift: dict[str, float] | None = None, labelled: bool = True) -> pd.DataFrame:
    """`rows` new plausible patients: resampled study rows with measurement noise, deterministic.

    Unlabelled records (outcome not yet known) have no progression_12m.
    """
    rng = np.random.default_rng(seed)
    study = study_frame().sample(n=rows, replace=True, random_state=seed).reset_index(drop=True)
    numeric = ["bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    noise = rng.normal(0.0, 0.05, size=(rows, len(numeric))) * study_frame()[numeric].std().to_numpy()
    noisy = study[numeric] + noise
    # Values the study records as whole numbers stay whole, so the noise adds no artificial drift.
    study[numeric] = noisy.round(0).where(study[numeric] == study[numeric].round(0), noisy.round(4))
    study["target"] = (study["target"] + rng.normal(0.0, 8.0, rows)).clip(25, 346).round(1)
    visits = pd.Series(ARRIVAL_VISITS_FROM + pd.to_timedelta(rng.integers(0, 365, rows), unit="D"))
    records = as_patient_records(study, visits, extra_days=rng.integers(1, 300, rows))
    driftable = [c for c in SOURCE_COLUMNS if c not in ("patient_id", "sex", "birth_date", "visit_date")]
    for column, shift in (drift or {}).items():
        if column not in driftable:
            raise ValueError(f"cannot drift column '{column}': give one of {driftable}")
        records[column] = records[column] + shift
    if not labelled:
        records["progression_12m"] = np.nan
    return records[SOURCE_COLUMNS[1:]]


# Realistic faults of a CRM export, each with the reason validation should give it.
Fault = Callable[[dict[str, Any]], None]
BAD_ROW_KINDS: tuple[tuple[str, Fault], ...] = (
    ("unknown_category", lambda r: r.update(sex="Male")),            # ambiguous: quarantine, never guess
    ("out_of_range", lambda r: r.update(bp_mean=round(r["bp_mean"] / 7.5, 1))),  # typed in kPa
    ("impossible_dates", lambda r: r.update(birth_date=r["visit_date"] + pd.Timedelta(days=30))),
    ("missing_required", lambda r: r.update(visit_date=None)),
    ("out_of_range", lambda r: r.update(glucose=round(r["glucose"] / 18.0, 1))),  # mmol/L, not mg/dL
    ("unknown_category", lambda r: r.update(sex="U")),
)
# Messy but with one obvious meaning: normalised, not quarantined.
FIXABLE_KINDS: tuple[Fault, ...] = (lambda r: r.update(sex=f" {r['sex'].lower()} "), lambda r: r.update(sex=r["sex"].lower()))


def add_faults(records: pd.DataFrame, bad_rows: int, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Make `bad_rows` rows faulty and as many others merely messy; returns the expected reason per row."""
    if bad_rows > len(records):
        raise ValueError(f"--bad-rows {bad_rows} is more than the {len(records)} rows in the batch")
    rng = np.random.default_rng(seed + 1)
    rows = records.to_dict("records")
    order = rng.permutation(len(rows))
    expected = ["valid"] * len(rows)
    for n, position in enumerate(order[:bad_rows]):
        reason, fault = BAD_ROW_KINDS[n % len(BAD_ROW_KINDS)]
        fault(rows[position])
        expected[position] = reason
    for n, position in enumerate(order[bad_rows: 2 * bad_rows]):
        FIXABLE_KINDS[n % len(FIXABLE_KINDS)](rows[position])
    return pd.DataFrame(rows, columns=records.columns), expected


def copy_into(conn: Connection, table: str, frame: pd.DataFrame) -> None:
    """Bulk-load a DataFrame into `table` with PostgreSQL's COPY."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="\\N")
    buffer.seek(0)
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer)


def seed_demo(engine: Engine) -> int:
    """Load the study into the source table; rows already there are left as they are."""
    records = demo_records()
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE demo_seed (LIKE public.patient_records) ON COMMIT DROP"))
        copy_into(conn, "demo_seed", records)
        inserted = conn.execute(sa.text(
            "INSERT INTO public.patient_records SELECT * FROM demo_seed ON CONFLICT (patient_id) DO NOTHING"
        )).rowcount
    return int(inserted)


def simulate_arrivals(engine: Engine, rows: int, seed: int, drift: dict[str, float] | None = None,
                      labelled: bool = True, bad_rows: int = 0) -> list[int]:
    """Append `rows` new records, recorded now, `bad_rows` of them faulty; returns their patient ids."""
    records = arrival_records(rows, seed, drift, labelled)
    if bad_rows:
        records, _ = add_faults(records, bad_rows, seed)
    with engine.begin() as conn:
        conn.execute(sa.text("LOCK TABLE public.patient_records IN SHARE ROW EXCLUSIVE MODE"))
        first = int(conn.scalar(sa.text("SELECT coalesce(max(patient_id), 0) + 1 FROM public.patient_records")))
        records.insert(0, "patient_id", np.arange(first, first + rows))
        copy_into(conn, DEMO_TABLE, records)
    return [int(i) for i in records["patient_id"]]


# The worked example of a second source table (examples/clinic/): the same study as a clinic's own
# export, with its own column names, dates as d/m/Y text, and a few faults a real export has.
CLINIC_TABLE = "clinic.visits"
CLINIC_SQL = PROJECT_ROOT / "examples" / "clinic" / "visits.sql"
CLINIC_FIRST_ID = 10_001
CLINIC_COLUMNS = {"patient_id": "visit_id", "birth_date": "dob", "visit_date": "seen_on", "sex": "gender",
                  "bmi": "body_mass", "bp_mean": "bp", "tc": "chol_total", "ldl": "ldl_c", "hdl": "hdl_c",
                  "tch": "chol_ratio", "ltg": "log_trig", "glucose": "fasting_glucose",
                  "progression_12m": "outcome_score", "recorded_at": "entered_at"}
CLINIC_KEPT_DATE = pd.Timestamp("2024-01-03")  # its row stays clean: '3/01/2024' must read as 3 January
CLINIC_DUPLICATES = 3  # visits entered a second time under a new id, three days later
CLINIC_IMPOSSIBLE_DATE = "31/02/2024"


def clinic_date_text(dates: pd.Series) -> pd.Series:
    """Dates as the clinic's system writes them: day/month/year, the day not zero-padded ('3/01/2024')."""
    stamps = pd.to_datetime(dates)
    return stamps.dt.day.astype(str) + stamps.dt.strftime("/%m/%Y")


def clinic_export(seed: int = 11) -> pd.DataFrame:
    """The study as a clinic's export, with its faults: 3 visits entered twice under new ids, one
    unknown gender ('X'), one outcome not known yet (NULL), one impossible date. Deterministic."""
    records = demo_records()
    visits = pd.to_datetime(records["visit_date"])
    rng = np.random.default_rng(seed)
    picks = rng.choice(np.flatnonzero(visits != CLINIC_KEPT_DATE), CLINIC_DUPLICATES + 3, replace=False)
    copies = records.iloc[picks[:CLINIC_DUPLICATES]].copy()
    copies["recorded_at"] = copies["recorded_at"] + pd.Timedelta(days=3)
    records = pd.concat([records, copies], ignore_index=True)
    records["patient_id"] = np.arange(CLINIC_FIRST_ID, CLINIC_FIRST_ID + len(records))
    unknown_gender, unlabelled, impossible = picks[CLINIC_DUPLICATES:]
    records.loc[unknown_gender, "sex"] = "X"
    records.loc[unlabelled, "progression_12m"] = np.nan
    for column in ("birth_date", "visit_date"):
        records[column] = clinic_date_text(records[column])
    records.loc[impossible, "visit_date"] = CLINIC_IMPOSSIBLE_DATE
    return records.rename(columns=CLINIC_COLUMNS)[list(CLINIC_COLUMNS.values())]


def seed_clinic_export(engine: Engine) -> int:
    """Create clinic.visits (examples/clinic/visits.sql) and load the export; rows already there are left as they are."""
    records = clinic_export()
    with engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(CLINIC_SQL.read_text())  # no parameters: '%' in the SQL stays literal
        conn.execute(sa.text(f"CREATE TEMP TABLE clinic_seed (LIKE {CLINIC_TABLE}) ON COMMIT DROP"))
        copy_into(conn, "clinic_seed", records)
        inserted = conn.execute(sa.text(
            f"INSERT INTO {CLINIC_TABLE} SELECT * FROM clinic_seed ON CONFLICT (visit_id) DO NOTHING"
        )).rowcount
    return int(inserted)
