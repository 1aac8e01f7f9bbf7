"""Demo outcomes: the 12-month progression of records the champion forecast, filled in a year later.

In the CRM an outcome arrives as an UPDATE of the visit's row; the table's trigger (sql/009) stamps
`label_recorded_at` with the time of the UPDATE. `fill_outcomes` does the same for the demo table.

Which records: those with a forecast of the model in `pipeline.predictions` (any source) whose outcome
is still NULL and whose visit was at least `months` months before today (the database's date): with the
default 12, exactly the visits whose 12-month outcome is due. `months=0` fills every such record.

The outcome: the study's own relation (a least-squares fit of progression on age, sex and the eight
measurements over its 442 patients), plus normal noise with the spread of that fit's residuals, clipped
to the study's range [25, 346] and rounded to 0.1 as `demo.arrival_records` does. The noise is seeded and
drawn in id order: the same records and seed give the same outcomes. A `shift` {column: x} computes each
outcome as if the column were x higher, while the stored value stays as it is: a concept shift (the
relation between feature and outcome changes, the features do not drift). The outcome moves by the
column's coefficient times x (glucose: about 0.28 per mg/dL, bmi 5.6 per kg/m², ltg 68 per unit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.contract.ages import age_in_years
from pipeline.data import demo

# The relation's inputs: the demo table's column for each study column (age comes from the two dates).
STUDY_INPUTS = {"age": "age", "sex": "sex", **{k: v for k, v in demo.STUDY_COLUMNS.items() if k != "target"}}
OUTCOME_RANGE = (25.0, 346.0)  # the study's lowest and highest progression


@dataclass(frozen=True)
class Relation:
    """Progression as the study relates it to the features: intercept + coefficients, plus noise."""

    intercept: float
    coefficients: dict[str, float]  # by demo column name (age, sex coded F=1 / M=2, bmi, ..., glucose)
    means: dict[str, float]  # the study's means, for a value the record lacks
    noise: float  # the residuals' standard deviation


def study_relation() -> Relation:
    """The least-squares fit of progression on the study's ten features."""
    study = demo.study_frame()
    names = list(STUDY_INPUTS)
    X = np.column_stack([np.ones(len(study)), study[names].to_numpy(float)])
    y = study["target"].to_numpy(float)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    residuals = y - X @ beta
    columns = [STUDY_INPUTS[n] for n in names]
    return Relation(float(beta[0]), dict(zip(columns, map(float, beta[1:]), strict=True)),
                    dict(zip(columns, map(float, study[names].mean()), strict=True)),
                    float(np.sqrt(residuals @ residuals / (len(y) - X.shape[1]))))


def relation_inputs(records: pd.DataFrame) -> pd.DataFrame:
    """The relation's inputs from demo records: age at the visit from the two dates, sex as the study codes it."""
    codes = {letter: code for code, letter in demo.SEX_CODES.items()}
    inputs = records[[c for c in STUDY_INPUTS.values() if c not in ("age", "sex")]].astype(float)
    inputs["age"] = age_in_years(pd.to_datetime(records["birth_date"]), pd.to_datetime(records["visit_date"]))
    inputs["sex"] = records["sex"].astype("string").str.strip().str.upper().map(codes).astype(float)
    return inputs


def check_shift(shift: dict[str, float], relation: Relation) -> None:
    unknown = sorted(set(shift) - set(relation.coefficients) - {"sex"})
    if unknown or "sex" in shift:
        allowed = sorted(set(relation.coefficients) - {"sex"})
        raise ValueError(f"cannot shift {sorted(shift)}: shift one of {allowed} (e.g. glucose=+30)")


def generate_outcomes(records: pd.DataFrame, seed: int, shift: dict[str, float] | None = None,
                      relation: Relation | None = None) -> np.ndarray:
    """Each record's outcome, in the records' order: the relation (on inputs shifted by `shift`), plus seeded
    noise, clipped to the study's range and rounded to 0.1."""
    relation = relation or study_relation()
    shift = shift or {}
    check_shift(shift, relation)
    inputs = relation_inputs(records)
    expected = np.full(len(records), relation.intercept)
    for column, coefficient in relation.coefficients.items():
        values = inputs[column].fillna(relation.means[column]).to_numpy(float) + shift.get(column, 0.0)
        expected += coefficient * values
    noise = np.random.default_rng(seed).normal(0.0, relation.noise, len(records))
    return np.asarray(np.clip(expected + noise, *OUTCOME_RANGE).round(1))


AWAITING_SCORED = sa.text(f"""
    SELECT r.patient_id, r.birth_date, r.visit_date, r.sex, r.bmi, r.bp_mean, r.tc, r.ldl, r.hdl, r.tch, r.ltg,
           r.glucose
      FROM {demo.DEMO_TABLE} r
     WHERE r.progression_12m IS NULL
       AND r.visit_date <= CAST(now() - make_interval(months => :months) AS date)
       AND EXISTS (SELECT 1 FROM pipeline.predictions p
                    WHERE p.model = :model AND p.source_id = CAST(r.patient_id AS text))
     ORDER BY r.patient_id
""")


def fill_outcomes(engine: Engine, model: str, months: int = 12, seed: int = 0,
                  shift: dict[str, float] | None = None) -> dict[str, Any]:
    """Fill in the outcomes of the scored records whose outcome is due (see the module's docstring), by UPDATE,
    so the table's trigger stamps when each became known. Returns what was filled."""
    if months < 0:
        raise ValueError(f"--months must be 0 or more, got {months}")
    shift = shift or {}
    relation = study_relation()
    check_shift(shift, relation)
    with engine.begin() as conn:
        records = pd.DataFrame(conn.execute(AWAITING_SCORED, {"months": months, "model": model}).mappings().all(),
                               columns=["patient_id", "birth_date", "visit_date", "sex", "bmi", "bp_mean", "tc",
                                        "ldl", "hdl", "tch", "ltg", "glucose"])
        filled = pd.DataFrame({"patient_id": records["patient_id"].astype("int64"),
                               "progression_12m": generate_outcomes(records, seed, shift, relation)})
        conn.execute(sa.text("CREATE TEMP TABLE outcome_fill (patient_id bigint PRIMARY KEY, "
                             "progression_12m double precision) ON COMMIT DROP"))
        demo.copy_into(conn, "outcome_fill", filled)
        updated = conn.execute(sa.text(f"""
            UPDATE {demo.DEMO_TABLE} r SET progression_12m = f.progression_12m
              FROM outcome_fill f WHERE r.patient_id = f.patient_id AND r.progression_12m IS NULL
        """)).rowcount
        due = conn.scalar(sa.text("SELECT CAST(now() - make_interval(months => :months) AS date)"), {"months": months})
    ids = [int(i) for i in filled["patient_id"]]
    return {"filled": int(updated), "visits_up_to": str(due), "months": months, "seed": seed, "shift": shift,
            "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None,
            "mean_outcome": float(filled["progression_12m"].mean()) if len(filled) else None}
