"""Age at an event from two typed dates: the one formula the saved model (features.AgeFromDates), the
quality checks and the drift and evaluation views share, in a module of its own so they need no scikit-learn."""

from __future__ import annotations

import pandas as pd

from pipeline.contract.config import AGE_COLUMN, DatasetContract

DAYS_PER_YEAR = 365.25


def age_in_years(birth: pd.Series, event: pd.Series) -> pd.Series:
    """Age in years at the event (missing where either date is)."""
    return (_naive(event) - _naive(birth)).dt.days.astype("float64") / DAYS_PER_YEAR


def _naive(dates: pd.Series) -> pd.Series:
    """Dates with a time zone as UTC wall-clock times, so a date and a timestamp can be subtracted."""
    return dates.dt.tz_convert(None) if isinstance(dates.dtype, pd.DatetimeTZDtype) else dates


def monitored_columns(frame: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """The features as the model sees them: numerics, categoricals, and age instead of two dates."""
    out = frame[contract.names_with_role("numeric") + contract.names_with_role("categorical")].copy()
    if contract.derived_columns():
        birth, event = contract.names_with_role("birth_date")[0], contract.names_with_role("event_date")[0]
        days = (pd.to_datetime(frame[event]) - pd.to_datetime(frame[birth])).dt.days
        out[AGE_COLUMN] = days / DAYS_PER_YEAR
    return out
