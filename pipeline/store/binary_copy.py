"""Rows written to PostgreSQL with COPY ... FROM STDIN (FORMAT binary), the buffer laid out by numpy and Arrow.

PostgreSQL's binary COPY format: a header, then per row a 16-bit field count and each field as a 32-bit
length (-1 for NULL) followed by its bytes in network order, then a trailer. The server parses no text, so a
float arrives exactly as computed, NaN and the infinities included.

A column is a `Column`: its values (numbers for float8, int4 and int8; str for text, or a numpy bytes array
whose values fill its width, such as hex digests; one value repeats on every row) and, optionally, where they
are NULL. Each row is laid out as segments: numpy writes the field lengths and every field whose width is the
same on every row (numbers, text of one length such as a model name or a SHA-256) as one structured array; a
field whose width varies (ids of several lengths, a NULL) follows as its own segment. Arrow then joins each
row's segments and the rows in one pass (`binary_join_element_wise`): no Python object per row or field.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # signature, flags, header extension length
TRAILER = struct.pack("!h", -1)
NUMBER_TYPES = {"float8": ">f8", "int4": ">i4", "int8": ">i8"}


@dataclass(frozen=True)
class Column:
    """One column to write: its name, PostgreSQL type ('float8', 'int4', 'int8' or 'text'), its values (a
    scalar repeats on every row), and `null`, a boolean mask of the rows where it is NULL."""

    name: str
    kind: str
    values: Any
    null: np.ndarray | None = None


@dataclass
class _Field:
    """A column encoded: each row's field length (-1: NULL), and its bytes as one fixed-width numpy array
    (`fixed`, same width on every row, no NULL) or as an Arrow binary array of each row's bytes (`varying`,
    empty where NULL)."""

    lengths: np.ndarray
    fixed: np.ndarray | None = None
    varying: pa.Array | None = None


def _null_mask(column: Column, rows: int, found: np.ndarray | None = None) -> np.ndarray:
    null = np.zeros(rows, dtype=bool) if column.null is None else np.asarray(column.null, dtype=bool)
    if null.shape != (rows,):
        raise ValueError(f"column {column.name!r}: its NULL mask has shape {null.shape}, not ({rows},)")
    return null | found if found is not None else null


def _number_field(column: Column, rows: int) -> _Field:
    dtype = np.dtype(NUMBER_TYPES[column.kind])
    values = np.asarray(column.values)
    if dtype.kind == "i":
        limits = np.iinfo(dtype)
        if values.size and (values.dtype.kind not in "iub" or values.min() < limits.min or values.max() > limits.max):
            raise ValueError(f"column {column.name!r} ({column.kind}) holds values that are not integers in "
                             f"[{limits.min}, {limits.max}]")
    values = values.astype(dtype.newbyteorder("="))
    if values.ndim == 0:
        values = np.broadcast_to(values, (rows,))
    if values.shape != (rows,):
        raise ValueError(f"column {column.name!r} has {values.shape} values for {rows} rows")
    null = _null_mask(column, rows)
    lengths = np.where(null, -1, dtype.itemsize).astype(">i4")
    if not null.any():
        return _Field(lengths, fixed=values.astype(dtype))
    return _Field(lengths, varying=_binary(np.ascontiguousarray(values.astype(dtype)), dtype.itemsize, rows, null))


def _text_field(column: Column, rows: int) -> _Field:
    if isinstance(column.values, str):
        encoded = column.values.encode()
        null = _null_mask(column, rows)
        lengths = np.where(null, -1, len(encoded)).astype(">i4")
        if not null.any():
            return _Field(lengths, fixed=np.full(rows, encoded, dtype=f"S{len(encoded)}") if encoded else
                          np.zeros(rows, dtype="V0"))
        return _Field(lengths, varying=_binary(np.full(rows, encoded, dtype=f"S{len(encoded)}"), len(encoded), rows,
                                               null))
    if isinstance(column.values, np.ndarray) and column.values.dtype.kind == "S":
        return _bytes_field(column, rows)
    text = column.values if isinstance(column.values, pa.Array) else pa.array(column.values, type=pa.string())
    if len(text) != rows:
        raise ValueError(f"column {column.name!r} has {len(text)} values for {rows} rows")
    binary = text.cast(pa.binary())
    null = _null_mask(column, rows, binary.is_null().to_numpy(zero_copy_only=False))
    widths = pc.binary_length(binary).fill_null(0).to_numpy(zero_copy_only=False)
    lengths = np.where(null, -1, widths).astype(">i4")
    if not null.any() and (rows == 0 or (widths == widths[0]).all()):
        width = int(widths[0]) if rows else 0
        offsets = np.frombuffer(binary.buffers()[1], dtype=np.int32)[binary.offset:binary.offset + rows + 1]
        start = int(offsets[0]) if rows else 0
        data = np.frombuffer(binary.buffers()[2] or b"", dtype=np.uint8)[start:start + rows * width]
        return _Field(lengths, fixed=data.view(f"S{width}") if width else np.zeros(rows, dtype="V0"))
    varying = pc.if_else(pa.array(null), pa.scalar(b"", pa.binary()), pc.fill_null(binary, b"")) if null.any() \
        else binary
    return _Field(lengths, varying=varying)


def _bytes_field(column: Column, rows: int) -> _Field:
    """A numpy bytes array ('S' dtype) whose every value fills its width (a hex digest, say): written as it is."""
    values = np.asarray(column.values)
    if values.shape != (rows,):
        raise ValueError(f"column {column.name!r} has {values.shape} values for {rows} rows")
    width = values.dtype.itemsize
    if rows and not (np.char.str_len(values) == width).all():
        raise ValueError(f"column {column.name!r}: a numpy bytes value shorter than its width {width} (they are "
                         "written whole, padding included): give str values instead")
    null = _null_mask(column, rows)
    lengths = np.where(null, -1, width).astype(">i4")
    if not null.any():
        return _Field(lengths, fixed=values)
    return _Field(lengths, varying=_binary(values, width, rows, null))


def _binary(values: np.ndarray, width: int, rows: int, null: np.ndarray) -> pa.Array:
    """Fixed-width values as an Arrow binary array, empty where `null`."""
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), rows, [None, pa.py_buffer(values)]) \
        if width else pa.array([b""] * rows, pa.binary(0))
    return pc.if_else(pa.array(null), pa.scalar(b"", pa.binary()), fixed.cast(pa.binary()))


def _field(column: Column, rows: int) -> _Field:
    if column.kind in NUMBER_TYPES:
        return _number_field(column, rows)
    if column.kind == "text":
        return _text_field(column, rows)
    raise ValueError(f"column {column.name!r}: binary COPY writes {sorted(NUMBER_TYPES)} or text, not {column.kind!r}")


def _segment(parts: list[tuple[str, np.ndarray]], rows: int) -> pa.Array:
    """Fields side by side as one structured array: an Arrow binary array of one value per row."""
    array = np.empty(rows, dtype=[(name, values.dtype) for name, values in parts])
    for name, values in parts:
        array[name] = values
    width = array.dtype.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), rows, [None, pa.py_buffer(array)]).cast(
        pa.large_binary())


def encode(columns: Sequence[Column], rows: int) -> bytes:
    """The rows of `columns` as one binary COPY stream (header, rows, trailer)."""
    if not columns:
        raise ValueError("a binary COPY needs at least one column")
    segments: list[pa.Array] = []
    parts: list[tuple[str, np.ndarray]] = [("count", np.full(rows, len(columns), dtype=">i2"))]
    for index, column in enumerate(columns):
        field = _field(column, rows)
        parts.append((f"length {index}", field.lengths))
        if field.fixed is not None:
            if field.fixed.dtype.itemsize:
                parts.append((f"value {index}", field.fixed))
            continue
        segments.append(_segment(parts, rows))
        assert field.varying is not None
        segments.append(field.varying.cast(pa.large_binary()))
        parts = []
    if parts:
        segments.append(_segment(parts, rows))
    joined = pc.binary_join_element_wise(*segments, pa.scalar(b"", pa.large_binary())) if len(segments) > 1 \
        else segments[0]
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset:joined.offset + rows + 1]
    body = memoryview(joined.buffers()[2] or b"")[int(offsets[0]):int(offsets[-1])] if rows else b""
    return b"".join((HEADER, body, TRAILER))


def copy_in(cursor: Any, table: str, columns: Sequence[Column], rows: int) -> int:
    """COPY `rows` rows of `columns` into `table` (FORMAT binary) on the cursor's transaction; the rows written."""
    send(cursor, statement(table, columns), encode(columns, rows))
    return rows


def send(cursor: Any, sql: str, payload: bytes) -> None:
    """Run a COPY ... FROM STDIN of `payload`, read by psycopg2 in one piece. Its default reads 8 KB at a time and
    takes the GIL for each: a COPY on a thread of its own then waits for the GIL hundreds of times while the main
    thread computes (Python hands the GIL over only every 5 ms), and the server sits idle between the pieces."""
    cursor.copy_expert(sql, io.BytesIO(payload), size=max(len(payload), 8192))


def statement(table: str, columns: Sequence[Column]) -> str:
    """The COPY statement that reads `encode`'s stream of `columns` into `table`."""
    return f"COPY {table} ({', '.join(column.name for column in columns)}) FROM STDIN WITH (FORMAT binary)"
