"""The binary COPY writer against a real PostgreSQL: every value read back exactly as written (NULLs, the
float extremes, NaN and the infinities, integer bounds, text of any length and script), on many rows."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipeline.serving.scoring import FORECAST_TYPES, PREDICTION_COLUMNS, copy_forecasts
from pipeline.store import binary_copy, db
from pipeline.store.binary_copy import Column

pytestmark = pytest.mark.timeout(120)

FLOATS = [0.0, -0.0, 1.5, -2.25, math.pi, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
          -1.7976931348623157e308, math.inf, -math.inf, math.nan, 1e-300, 123456789.123456789]
INT4 = [0, 1, -1, 2**31 - 1, -(2**31), 17]
INT8 = [0, 2**63 - 1, -(2**63), 42, -7, 10**15]
TEXTS = ["", "a", "patient-0001", "é", "Zürich ∞ 東京", "x" * 1000, "tab\there", "quote\"'\\", "😀", "0"]


@pytest.fixture
def cursor(server_url: str) -> Iterator[Any]:
    """A cursor on one transaction, rolled back after the test (temporary tables only)."""
    engine = db.create_engine(server_url)
    raw = engine.raw_connection()
    try:
        yield raw.cursor()
    finally:
        raw.rollback()
        raw.close()
        engine.dispose()


def same_float(a: float | None, b: float | None) -> bool:
    """Equal bit for bit (NaN to NaN, -0.0 to -0.0), or both NULL."""
    if a is None or b is None:
        return a is None and b is None
    return struct.pack("!d", a) == struct.pack("!d", b)


def test_values_round_trip_exactly_nulls_and_extremes_included(cursor: Any) -> None:
    cursor.execute("CREATE TEMP TABLE t (k int4, f float8, g float8, i int4, j int8, s text, u text)")
    n = len(FLOATS) * 4
    floats = np.array(FLOATS * 4, dtype="float64")
    null_g = np.arange(n) % 3 == 0  # an interval bound NULL on some rows
    ints4 = np.array((INT4 * n)[:n], dtype="int64")
    ints8 = np.array((INT8 * n)[:n], dtype="int64")
    texts: list[str | None] = [(TEXTS * n)[k] if k % 5 else None for k in range(n)]
    columns = [Column("k", "int4", np.arange(n)), Column("f", "float8", floats),
               Column("g", "float8", floats[::-1].copy(), null=null_g), Column("i", "int4", ints4),
               Column("j", "int8", ints8), Column("s", "text", texts), Column("u", "text", "same on every row")]
    assert binary_copy.copy_in(cursor, "t", columns, n) == n

    cursor.execute("SELECT k, f, g, i, j, s, u FROM t ORDER BY k")
    back = cursor.fetchall()
    assert len(back) == n
    for k, f, g, i, j, s, u in back:
        assert same_float(f, float(floats[k]))
        assert same_float(g, None if null_g[k] else float(floats[::-1][k]))
        assert (i, j, s, u) == (int(ints4[k]), int(ints8[k]), texts[k], "same on every row")


def test_many_rows_of_several_id_lengths_keep_their_order_and_values(cursor: Any) -> None:
    n = 25_000
    cursor.execute("CREATE TEMP TABLE t (n bigserial, id text, v float8, h text)")
    values = np.random.default_rng(0).normal(150, 40, n)
    ids = [str(k * 37) for k in range(n)]  # 1 to 6 characters
    hashes = [f"{k:064x}" for k in range(n)]  # one width: laid out by numpy
    binary_copy.copy_in(cursor, "t", [Column("id", "text", ids), Column("v", "float8", values),
                                      Column("h", "text", hashes)], n)
    cursor.execute("SELECT id, v, h FROM t ORDER BY n")
    assert cursor.fetchall() == [(i, float(v), h) for i, v, h in zip(ids, values, hashes, strict=True)]


def test_numpy_bytes_and_arrow_text_are_written_as_they_are(cursor: Any) -> None:
    """What batch scoring hands the writer: hex digests as one numpy S64 array, ids as an Arrow string array;
    a NULL in either is NULL, and a numpy value shorter than its width is refused (its padding would be written)."""
    import pyarrow as pa

    n = 1_000
    cursor.execute("CREATE TEMP TABLE t (n bigserial, h text, id text)")
    digests = np.frombuffer("".join(f"{k:064x}" for k in range(n)).encode(), dtype="S64")
    ids = pa.array([None if k % 7 == 0 else str(k) for k in range(n)], pa.string())
    null = np.arange(n) % 11 == 0
    binary_copy.copy_in(cursor, "t", [Column("h", "text", digests, null=null), Column("id", "text", ids)], n)
    cursor.execute("SELECT h, id FROM t ORDER BY n")
    assert cursor.fetchall() == [(None if k % 11 == 0 else f"{k:064x}", None if k % 7 == 0 else str(k))
                                 for k in range(n)]
    with pytest.raises(ValueError, match="'h': a numpy bytes value shorter than its width 3"):
        binary_copy.encode([Column("h", "text", np.array([b"abc", b"ab"], dtype="S3"))], 2)


def test_no_rows_and_wrong_input_are_refused_before_the_server(cursor: Any) -> None:
    cursor.execute("CREATE TEMP TABLE t (i int4, s text)")
    assert binary_copy.copy_in(cursor, "t", [Column("i", "int4", []), Column("s", "text", [])], 0) == 0
    cursor.execute("SELECT count(*) FROM t")
    assert cursor.fetchone() == (0,)
    with pytest.raises(ValueError, match="'i' .*int4.* not integers"):
        binary_copy.encode([Column("i", "int4", [2**31])], 1)
    with pytest.raises(ValueError, match="'s' has 2 values for 3 rows"):
        binary_copy.encode([Column("s", "text", ["a", "b"])], 3)
    with pytest.raises(ValueError, match="not 'jsonb'"):
        binary_copy.encode([Column("j", "jsonb", ["{}"])], 1)


def test_the_forecast_writer_fills_every_prediction_column(database_url: str) -> None:
    assert set(FORECAST_TYPES) == set(PREDICTION_COLUMNS)
    engine = db.create_engine(database_url)
    raw = engine.raw_connection()
    try:
        _write_forecasts(raw.cursor())
    finally:
        raw.rollback()
        raw.close()
        engine.dispose()


def _write_forecasts(cursor: Any) -> None:
    cursor.execute("CREATE TEMP TABLE p (LIKE pipeline.predictions INCLUDING DEFAULTS)")
    predicted = np.array([151.25, 0.1 + 0.2, 1e-9])
    copy_forecasts(cursor, "p", {"model": "m", "version": 3, "source_id": ["7", "1234567", "x-1"],
                                 "prediction": predicted, "lower": predicted - 12.5, "upper": predicted + 12.5,
                                 "coverage": 0.9, "run_id": "run-1", "source": "batch", "input_hash": ["a" * 64] * 3}, 3)
    cursor.execute(f"SELECT {', '.join(PREDICTION_COLUMNS)} FROM p ORDER BY prediction_id")
    assert cursor.fetchall() == [("m", 3, sid, float(v), float(v) - 12.5, float(v) + 12.5, 0.9, "run-1", "batch", "a" * 64)
                                 for sid, v in zip(["7", "1234567", "x-1"], predicted, strict=True)]
