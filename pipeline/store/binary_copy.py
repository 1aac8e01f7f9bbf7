"""Rows written to PostgreSQL with COPY ... FROM STDIN (FORMAT binary), the buffer laid out by numpy and Arrow.

PostgreSQL's binary COPY format: a header, then per row a 16-bit field count and each field as a 32-bit
length (-1 for NULL) followed by its bytes in network order, then a trailer. The server parses no text, so a
float arrives exactly as computed, NaN and the infinities included.

A column is a `Column`: its values (numbers for float8, int4 and int8; str for text; one value repeats on
every row) and, optionally, where they are NULL. Each row is laid out as segments: numpy writes the field
lengths and every field whose width is the same on every row (numbers, text of one length such as a model
name or a SHA-256) as one structured array; a field whose width varies (ids of several lengths, a NULL)
follows as its own bytes. The segments of all rows are then joined once.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
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
    (`fixed`, same width on every row, no NULL) or as each row's bytes (`varying`)."""

    lengths: np.ndarray
    fixed: np.ndarray | None = None
    varying: list[bytes] | None = None


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
    data = values.astype(dtype).view(np.dtype((np.void, dtype.itemsize))).tolist()
    return _Field(lengths, varying=[b"" if n else d for d, n in zip(data, null.tolist(), strict=True)])


def _text_field(column: Column, rows: int) -> _Field:
    if isinstance(column.values, str):
        encoded = column.values.encode()
        null = _null_mask(column, rows)
        lengths = np.where(null, -1, len(encoded)).astype(">i4")
        if not null.any():
            return _Field(lengths, fixed=np.full(rows, encoded, dtype=f"S{len(encoded)}") if encoded else
                          np.zeros(rows, dtype="V0"))
        return _Field(lengths, varying=[b"" if n else encoded for n in null.tolist()])
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
    values = pc.fill_null(binary, b"").to_pylist()
    if null.any():
        values = [b"" if n else v for v, n in zip(values, null.tolist(), strict=True)]
    return _Field(lengths, varying=values)


def _field(column: Column, rows: int) -> _Field:
    if column.kind in NUMBER_TYPES:
        return _number_field(column, rows)
    if column.kind == "text":
        return _text_field(column, rows)
    raise ValueError(f"column {column.name!r}: binary COPY writes {sorted(NUMBER_TYPES)} or text, not {column.kind!r}")


def _segment(parts: list[tuple[str, np.ndarray]], rows: int) -> list[bytes]:
    """Fields side by side as one structured array: one bytes object per row."""
    array = np.empty(rows, dtype=[(name, values.dtype) for name, values in parts])
    for name, values in parts:
        array[name] = values
    segment = array.view(np.dtype((np.void, array.dtype.itemsize))).tolist()  # bytes, one per row
    return segment  # type: ignore[return-value]


def encode(columns: Sequence[Column], rows: int) -> bytes:
    """The rows of `columns` as one binary COPY stream (header, rows, trailer)."""
    if not columns:
        raise ValueError("a binary COPY needs at least one column")
    segments: list[list[bytes]] = []
    parts: list[tuple[str, np.ndarray]] = [("count", np.full(rows, len(columns), dtype=">i2"))]
    for index, column in enumerate(columns):
        field = _field(column, rows)
        parts.append((f"length {index}", field.lengths))
        if field.fixed is not None:
            if field.fixed.dtype.itemsize:
                parts.append((f"value {index}", field.fixed))
            continue
        segments.append(_segment(parts, rows))
        segments.append(field.varying or [])
        parts = []
    if parts:
        segments.append(_segment(parts, rows))
    return b"".join((HEADER, *chain.from_iterable(zip(*segments, strict=True)), TRAILER))


def copy_in(cursor: Any, table: str, columns: Sequence[Column], rows: int) -> int:
    """COPY `rows` rows of `columns` into `table` (FORMAT binary) on the cursor's transaction; the rows written."""
    names = ", ".join(column.name for column in columns)
    cursor.copy_expert(f"COPY {table} ({names}) FROM STDIN WITH (FORMAT binary)", io.BytesIO(encode(columns, rows)))
    return rows
