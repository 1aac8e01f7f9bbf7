"""The Arrow (ADBC) read of a snapshot gives exactly what `pandas.read_sql` over SQLAlchemy gives.

One table holds every column type a contract can name (integers of each width, REAL, DOUBLE,
NUMERIC, TEXT, VARCHAR, CHAR, an enum, DATE, TIMESTAMP, TIMESTAMPTZ) and the values that break
readers: NULLs, NaN and infinities, REAL's short decimals, numbers beyond float64, empty and
padded text, quotes and newlines, dates outside pandas' nanosecond range, time-zone offsets and
daylight-saving edges, a column with no value at all, and a result with no rows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from pipeline.contract.config import DatasetContract, Feature
from pipeline.data import ingest
from pipeline.data.casting import NOT_FINITE, Unreadable
from pipeline.store import db

EDGE_TABLE_SQL = """
CREATE TYPE public.mood AS ENUM ('calm', 'tense');
CREATE TABLE public.every_type (
    id          bigint PRIMARY KEY,
    small       smallint,
    whole       integer,
    single      real,
    double      double precision,
    exact       numeric(12, 4),
    wide        numeric,
    note        text,
    code        varchar(10),
    padded      char(3),
    mood        public.mood,
    day         date,
    wall_clock  timestamp,
    never_set   double precision,
    label       double precision,
    recorded_at timestamptz NOT NULL
);
INSERT INTO public.every_type VALUES
 (1, 1, 1, 0.1, 0.1, 1.2345, 12345678901234567890.123456789, 'plain', 'x', 'ab', 'calm',
  '2024-02-29', '2024-02-29 12:34:56.789012', NULL, 10.5, '2024-01-01 00:00:00+00'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, 11, '2024-03-31 01:30:00+01'),
 (3, -32768, -2147483648, 'NaN', 'NaN', 'NaN', 'Infinity', '', '', '', 'tense',
  '0001-01-01', '0001-01-01 00:00:00', NULL, NULL, '2024-10-27 01:30:00.123456-05'),
 (4, 32767, 2147483647, 'Infinity', '-Infinity', -99999999.9999, '-Infinity', ' padded ', 'é', 'é', 'calm',
  '9999-12-31', '9999-12-31 23:59:59.999999', NULL, 12, '9999-12-31 23:59:59.999999+00'),
 (5, 0, 0, 3.4028235e38, 1.7976931348623157e308, 0, 1e300, 'quote " comma , tab 	 back \\ slash', 'NULL', 'a', 'tense',
  '1677-09-21', '2262-04-12 00:00:00', NULL, 13, '1900-01-01 00:00:00+00'),
 (6, 7, 7, -1.5e-38, '-0', -0.0001, 0.1, E'new\\nline and emoji 🙂', 'y', 'abc', 'calm',
  '1970-01-01', '1969-12-31 23:59:59.999999', NULL, 14, '1970-01-01 00:00:00+14'),
 (9223372036854775807, 1, 2, 1e-45, 5e-324, 99999999.9999, -0.5, 'last', 'z', 'z', 'tense',
  '2262-04-12', '1677-09-21 00:12:43.145224', NULL, 15, '2024-10-27 01:30:00+01');
"""

FEATURES = (("small", "integer"), ("whole", "integer"), ("single", "float"), ("double", "float"),
            ("exact", "float"), ("wide", "float"), ("note", "text"), ("code", "text"), ("padded", "text"),
            ("mood", "text"), ("day", "date"), ("wall_clock", "timestamp"), ("never_set", "float"))
LATER = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
EARLIER = datetime(1800, 1, 1, tzinfo=UTC)


@pytest.fixture
def contract() -> DatasetContract:
    return DatasetContract(
        table="public.every_type", id_column="id", timestamp_column="recorded_at", target_column="label",
        target_type="float", features=tuple(Feature(name, "numeric", kind) for name, kind in FEATURES),
        expectation_suite=Path("unused.json"),
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.create_engine(database_url)
    with engine.begin() as conn:
        conn.connection.dbapi_connection.cursor().execute(EDGE_TABLE_SQL)  # type: ignore[union-attr]
    yield engine
    engine.dispose()


NAN_CELLS = (("single", 3), ("double", 3), ("exact", 3))  # (column, id) the table holds as NaN, not NULL


def read_sql(engine: Engine, query: sa.Select) -> pd.DataFrame:  # type: ignore[type-arg]
    """The reference: what the pipeline read before the Arrow path."""
    with engine.connect() as conn:
        return pd.read_sql(query, conn)


def with_nan_kept(expected: pd.DataFrame) -> pd.DataFrame:
    """read_sql's frame as the pipeline reads it: NaN, which read_sql cannot tell from NULL, arrives as
    Unreadable('NaN') (a column holding one then holds objects); every other value is the same."""
    out = expected.copy()
    for column, row_id in NAN_CELLS:
        rows = out.index[out["id"] == row_id]
        if len(rows):
            out[column] = out[column].astype(object)
            out.loc[rows, column] = Unreadable(NOT_FINITE, "NaN")
    return out


def in_time_zone(url: str, zone: str) -> Engine:
    return db.create_engine(make_url(url).update_query_dict({"options": f"-c timezone={zone}"})
                            .render_as_string(hide_password=False))


@pytest.mark.parametrize("labelled_only", [False, True])
def test_arrow_read_equals_sqlalchemy_read(engine: Engine, contract: DatasetContract, labelled_only: bool) -> None:
    query = ingest.recorded_rows_query(contract, LATER, labelled_only=labelled_only)

    expected = with_nan_kept(read_sql(engine, query))
    actual = ingest.read_raw_rows(engine, contract, query)

    pd.testing.assert_frame_equal(actual, expected, check_exact=True)
    assert actual.isna().equals(expected.isna())
    assert len(actual) == (6 if labelled_only else 7)


def without_mood(contract: DatasetContract) -> DatasetContract:
    return replace(contract, features=tuple(f for f in contract.features if f.name != "mood"))


def test_driver_types_are_used_only_where_every_column_is_built_in(engine: Engine, contract: DatasetContract) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE DOMAIN public.positive AS integer CHECK (VALUE > 0)"))
        conn.execute(sa.text("CREATE DOMAIN public.enum_domain AS public.mood"))
        conn.execute(sa.text("ALTER TABLE public.every_type ADD COLUMN counted public.positive, "
                             "ADD COLUMN wrapped public.enum_domain"))
    counted = replace(without_mood(contract), features=(*without_mood(contract).features,
                                                         Feature("counted", "numeric", "integer")))
    wrapped = replace(counted, features=(*counted.features, Feature("wrapped", "categorical", "text")))

    assert ingest.built_in_types(engine, without_mood(contract))
    assert ingest.built_in_types(engine, counted)  # a domain is sent as its base type
    assert not ingest.built_in_types(engine, contract)  # the enum is the database's own type
    assert not ingest.built_in_types(engine, wrapped)  # a domain over it too
    assert ingest.built_in_types(engine, replace(without_mood(contract), table="every_type"))  # on the search path
    assert not ingest.built_in_types(engine, replace(without_mood(contract), table="public.no_such_table"))


def test_a_read_with_the_drivers_types_equals_one_with_the_catalogue(engine: Engine, contract: DatasetContract,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    built_in = without_mood(contract)
    query = ingest.recorded_rows_query(built_in, LATER)
    assert ingest.built_in_types(engine, built_in)

    fast = ingest.read_raw_rows(engine, built_in, query)
    monkeypatch.setattr(ingest, "built_in_types", lambda *_: False)  # the catalogue's types, as before
    catalogue = ingest.read_raw_rows(engine, built_in, query)

    pd.testing.assert_frame_equal(fast, catalogue, check_exact=True)
    pd.testing.assert_frame_equal(fast, with_nan_kept(read_sql(engine, query)), check_exact=True)
    assert len(fast) == 7


def test_edge_values_arrive_as_the_database_holds_them(engine: Engine, contract: DatasetContract) -> None:
    frame = ingest.read_raw_rows(engine, contract, ingest.recorded_rows_query(contract, LATER)).set_index("id")

    assert frame.loc[9223372036854775807, "whole"] == 2 and frame["whole"].dtype == "float64"  # NULL in row 2
    assert frame.loc[1, "single"] == 0.1  # REAL's shortest decimal, as PostgreSQL prints it
    assert frame.loc[5, "double"] == 1.7976931348623157e308 and frame.loc[3, "wide"] == float("inf")
    assert frame.loc[4, "exact"] == -99999999.9999 and pd.isna(frame.loc[2, "exact"])  # NULL: missing
    assert frame.loc[3, "exact"] == Unreadable(NOT_FINITE, "NaN")  # NaN: a value, never read as missing
    assert frame.loc[4, "note"] == " padded " and frame.loc[3, "note"] == "" and pd.isna(frame.loc[2, "note"])
    assert frame.loc[5, "code"] == "NULL" and frame.loc[1, "padded"] == "ab "
    assert frame.loc[6, "note"] == "new\nline and emoji 🙂"
    assert frame.loc[3, "day"] == datetime(1, 1, 1).date() and frame.loc[4, "day"] == datetime(9999, 12, 31).date()
    assert frame.loc[4, "wall_clock"] == pd.Timestamp("9999-12-31 23:59:59.999999")
    assert str(frame["recorded_at"].dtype) == "datetime64[us, UTC]"
    assert frame.loc[3, "recorded_at"] == pd.Timestamp("2024-10-27 06:30:00.123456", tz="UTC")
    assert frame.loc[6, "recorded_at"] == pd.Timestamp("1969-12-31 10:00:00", tz="UTC")
    assert frame["never_set"].dtype == object and frame["never_set"].isna().all()


def test_no_rows_read_like_sqlalchemy(engine: Engine, contract: DatasetContract) -> None:
    query = ingest.recorded_rows_query(contract, EARLIER)

    pd.testing.assert_frame_equal(ingest.read_raw_rows(engine, contract, query), read_sql(engine, query))


def test_session_time_zone_does_not_move_instants(engine: Engine, contract: DatasetContract, database_url: str) -> None:
    query = ingest.recorded_rows_query(contract, LATER)
    before_9999 = ingest.recorded_rows_query(contract, datetime(2100, 1, 1, tzinfo=UTC))
    expected = with_nan_kept(read_sql(engine, query))  # a UTC session, as the pipeline's server runs
    for zone in ("America/New_York", "Asia/Kolkata"):
        zoned = in_time_zone(database_url, zone)
        try:
            actual = ingest.read_raw_rows(zoned, contract, query)
            # psycopg2 cannot even read 9999-12-31 23:59 UTC east of UTC (year 10000); Arrow can.
            by_sqlalchemy = read_sql(zoned, before_9999)
        finally:
            zoned.dispose()
        pd.testing.assert_frame_equal(actual, expected, check_exact=True)
        # read_sql in a zone with daylight saving gives offsets, not UTC; the instants agree.
        pd.testing.assert_series_equal(pd.to_datetime(by_sqlalchemy["recorded_at"], utc=True).dt.as_unit("us"),
                                       actual["recorded_at"].iloc[:len(by_sqlalchemy)])


def test_snapshot_file_holds_the_rows_read(engine: Engine, contract: DatasetContract, tmp_path: Path) -> None:
    expected = read_sql(engine, ingest.labelled_rows_query(contract, LATER))

    snapshot, table = ingest.take_snapshot(engine, contract, LATER, tmp_path)
    frame = ingest.arrow_to_frame(table)

    path = Path(snapshot.path)
    assert path.name == f"{snapshot.snapshot_hash}.parquet"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == snapshot.snapshot_hash
    assert snapshot.row_count == len(frame) == 6
    pd.testing.assert_frame_equal(frame, expected, check_exact=True)
    pd.testing.assert_frame_equal(ingest.load_snapshot(path, snapshot.snapshot_hash), expected, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected, check_exact=True)


def test_empty_snapshot_is_stored(engine: Engine, contract: DatasetContract, tmp_path: Path) -> None:
    snapshot, table = ingest.take_snapshot(engine, contract, EARLIER, tmp_path)
    frame = ingest.arrow_to_frame(table)

    assert snapshot.row_count == 0
    pd.testing.assert_frame_equal(frame, read_sql(engine, ingest.labelled_rows_query(contract, EARLIER)))
    pd.testing.assert_frame_equal(pd.read_parquet(snapshot.path), frame)


def test_snapshot_bytes_do_not_depend_on_batching(engine: Engine, contract: DatasetContract, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 4)  # several row groups, cut across the driver's batches
    first, _ = ingest.take_snapshot(engine, contract, LATER, tmp_path / "a")
    second, _ = ingest.take_snapshot(engine, contract, LATER, tmp_path / "b")

    table = pq.read_table(first.path)
    rebuilt = ingest.snapshot_table_bytes(pa.Table.from_batches(table.to_batches(max_chunksize=1)))

    assert first.snapshot_hash == second.snapshot_hash
    assert hashlib.sha256(rebuilt).hexdigest() == first.snapshot_hash
    assert pq.ParquetFile(first.path).metadata.num_row_groups == 2


def test_recorded_query_is_the_one_that_ran(engine: Engine, contract: DatasetContract, tmp_path: Path) -> None:
    snapshot, table = ingest.take_snapshot(engine, contract, datetime(2024, 3, 31, 0, 30, tzinfo=UTC), tmp_path)
    frame = ingest.arrow_to_frame(table)

    with engine.connect() as conn:
        rerun = pd.read_sql(sa.text(snapshot.query), conn)
    pd.testing.assert_frame_equal(frame, rerun)
    assert sorted(frame["id"]) == [1, 2, 5, 6]  # the watermark instant itself is included


@pytest.mark.parametrize(("url", "uri"), [
    ("postgresql+psycopg2://postgres:@/pipeline?host=%2Fwork%2F.pgdata",
     "postgresql://postgres:@/pipeline?host=%2Fwork%2F.pgdata"),
    ("postgresql+psycopg2://ml:p%40ss%2Fw@db.internal:6543/crm?sslmode=require",
     "postgresql://ml:p%40ss%2Fw@db.internal:6543/crm?sslmode=require"),
    ("postgresql://ml@localhost/crm", "postgresql://ml@localhost/crm"),
])
def test_arrow_uri_is_derived_from_the_sqlalchemy_url(url: str, uri: str) -> None:
    engine = sa.create_engine(url)

    assert ingest.arrow_uri(engine) == uri


def test_arrow_uri_refuses_other_databases() -> None:
    with pytest.raises(ValueError, match="PostgreSQL only.*sqlite"):
        ingest.arrow_uri(sa.create_engine("sqlite://"))


def other_connections(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.text("SELECT count(*) FROM pg_stat_activity "
                                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")))


def wait_for_connections(engine: Engine, count: int) -> int:
    """The other connections to the database, once they are `count` (a closed one's server process ends a
    moment after the client lets go) or 30 s have passed."""
    deadline = time.monotonic() + 30
    while (now := other_connections(engine)) != count and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


@pytest.mark.timeout(60)
@pytest.mark.parametrize("held_rows", [1, 3, 100])
def test_an_early_read_hands_on_every_row_in_order(engine: Engine, contract: DatasetContract, held_rows: int) -> None:
    query = ingest.recorded_rows_query(without_mood(contract), LATER)
    with ingest.arrow_batches(engine, without_mood(contract), query) as (schema, batches):
        expected = pa.Table.from_batches(list(batches), schema)

    early = ingest.EarlyRead(engine, without_mood(contract), query, held_rows)
    try:
        early_schema, early_batches = early.batches()
        actual = pa.Table.from_batches(list(early_batches), early_schema)
    finally:
        early.close()

    assert actual.schema == expected.schema
    pd.testing.assert_frame_equal(actual.to_pandas(), expected.to_pandas(), check_exact=True)  # NaN equal to NaN
    assert actual.num_rows == 7


@pytest.mark.timeout(60)
def test_an_early_read_never_taken_closes_its_connection(engine: Engine, contract: DatasetContract) -> None:
    before = other_connections(engine)
    early = ingest.EarlyRead(engine, contract, ingest.recorded_rows_query(contract, LATER), 3)

    early.close()  # as when a scoring run fails before reading (no champion)

    assert wait_for_connections(engine, before) == before


@pytest.mark.timeout(60)
def test_an_early_read_that_cannot_start_says_why_when_read(engine: Engine, contract: DatasetContract) -> None:
    missing = replace(contract, features=(*contract.features, Feature("absent", "numeric", "float")))
    early = ingest.EarlyRead(engine, missing, ingest.recorded_rows_query(contract, LATER), 3)

    with pytest.raises(ingest.SchemaError, match=r"lacks contract column\(s\) \['absent'\]"):
        early.batches()
    early.close()  # nothing opened, nothing to close, no second error
