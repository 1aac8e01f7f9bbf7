"""Age at an event from two typed dates: the one formula the saved model (features.AgeFromDates) and the
quality checks share, in a module of its own so the checks need no scikit-learn."""

from __future__ import annotations

import pandas as pd

DAYS_PER_YEAR = 365.25


def age_in_years(birth: pd.Series, event: pd.Series) -> pd.Series:
    """Age in years at the event (missing where either date is)."""
    return (_naive(event) - _naive(birth)).dt.days.astype("float64") / DAYS_PER_YEAR


def _naive(dates: pd.Series) -> pd.Series:
    """Dates with a time zone as UTC wall-clock times, so a date and a timestamp can be subtracted."""
    return dates.dt.tz_convert(None) if isinstance(dates.dtype, pd.DatetimeTZDtype) else dates
