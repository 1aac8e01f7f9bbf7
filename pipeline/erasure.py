"""A patient's erasure, honoured in every copy the pipeline holds, with lineage kept honest (issue 30).

A request (`python -m pipeline erase --id ID --reason TEXT`, or a row a CRM inserts into
`pipeline.erasure_requests`, worked off by the `process_erasures` DAG) is processed under the erasure lock
(`runs.erasure_lock`: the stages at work end first, none starts meanwhile), in this order:

1. the tombstone (a keyed hash of the id, `pipeline.data.tombstones`) is recorded, so no later ingest takes
   the row again;
2. every snapshot holding the id (raw, clean, awaiting-outcome) is rewritten without its rows, under a new
   content hash; `pipeline.snapshot_redactions` records old -> new with the request, and the old file is
   shredded (`shred_old_copy`). Every stage then reads the redacted copy (`Workspace.live_snapshot`);
3. versions trained on a rewritten clean snapshot are flagged in `pipeline.erased_lineage` (the view
   `pipeline.trained_on_erased`); the versions, their evaluations and the promotion history stay;
4. the id's rows go from the quarantine, the forecasts (batch and the REST prediction log, one table), the
   scoring refusals; sample ids naming it go from the registry's JSON (validation results, evaluations, the
   versions' holdout start, the performance reports' refused outcomes);
5. every report and card page listing the id is rewritten without it (new hash, pointers moved, old file
   shredded).

With encryption at rest (`pipeline.store.crypto`) every file is read through its data key, and shredding a file
also destroys its data keys (crypto-shredding: a backup of the old bytes is unreadable too). Sealed quarantine rows
are found by opening them; the rest of their run's rows are re-sealed under a new key and the old key destroyed.
A sealed validation result naming the id is scrubbed and re-sealed under a new key, the old key destroyed.

Processing the same id again finds nothing and changes nothing. `erasure_report` searches every place again
and says what it found in each: nothing, after an erasure.
"""

from __future__ import annotations

import ast
import html
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.data import ingest, tombstones
from pipeline.registry import records, runs
from pipeline.store import artifacts, crypto
from pipeline.store.keys import DataKeyDestroyed
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

PAGE_KINDS = ("reports", "cards")
# (table, column): registry JSON that can name a patient by id (sample ids, GX's unexpected rows, a holdout's
# first row); each is scrubbed of the erased id, and searched by the report.
JSON_PLACES = (("validation_results", "failures"), ("validation_results", "result"),
               ("validation_results", "normalisations"), ("evaluations", "evidence"),
               ("model_versions", "holdout_start"), ("performance_reports", "refused_outcomes"))
ROW_PLACES = ("quarantine", "predictions", "scoring_refusals")  # tables whose rows carry the id as source_id
# pointers to report and card pages: (table, column)
PAGE_POINTERS = (("validation_results", "report_path"), ("model_cards", "path"), ("drift_reports", "report_path"),
                 ("performance_reports", "report_path"))
ID_HEADERS = {"source id", "source_id", "id", "patient id"}


class ErasureRefused(ValueError):
    """An erasure request that cannot be processed as given (no id, no reason)."""


def shred_old_copy(path: Path, keyring: crypto.Keyring | None = None) -> bool:
    """Destroy the old copy of a rewritten file: the file is deleted, and with `keyring` every data key it was
    sealed under (its header's, and each the registry lists for its digest: another machine's copy, the team
    store's) is destroyed, so backups of the old bytes are unreadable too. True when a file was there."""
    refs = set()
    if keyring is not None:
        if path.is_file():
            refs.add(crypto.key_ref_of(path))
        with keyring.engine.connect() as conn:
            refs |= set(conn.scalars(sa.text("SELECT key_ref FROM pipeline.sealed_files WHERE digest = :d"),
                                     {"d": path.stem}).all())
    for ref in sorted(r for r in refs if r):
        keyring.destroy(ref)  # type: ignore[union-attr]
    try:
        path.chmod(0o644)
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# --- requests ---------------------------------------------------------------------------------------


def request_erasure(ws: Workspace, source_id: str, reason: str, requested_by: str) -> int:
    """Queue an erasure of the patient `source_id`, as a CRM does by inserting the row; its request id."""
    if not str(source_id).strip():
        raise ErasureRefused("an erasure needs the patient's id (--id)")
    if not reason.strip():
        raise ErasureRefused("an erasure needs a reason (--reason): it is recorded with the request")
    with ws.engine.begin() as conn:
        return int(conn.scalar(sa.text("""
            INSERT INTO pipeline.erasure_requests (source_id, reason, requested_by) VALUES (:id, :reason, :by)
            RETURNING request_id
        """), {"id": str(source_id).strip(), "reason": reason.strip(), "by": requested_by}))


def erase(ws: Workspace, source_id: str, reason: str, requested_by: str) -> dict[str, Any]:
    """Queue and process one erasure now (the CLI's `erase`)."""
    return process_request(ws, request_erasure(ws, source_id, reason, requested_by))


def process_pending(ws: Workspace) -> list[dict[str, Any]]:
    """Process every pending request, oldest first (the `process_erasures` DAG); each one's outcome."""
    with ws.engine.connect() as conn:
        pending = conn.scalars(sa.text(
            "SELECT request_id FROM pipeline.erasure_requests WHERE status = 'pending' ORDER BY request_id")).all()
    return [process_request(ws, int(r)) for r in pending]


def process_request(ws: Workspace, request_id: int) -> dict[str, Any]:
    """Erase the request's patient from every copy, under the erasure lock; a request already processed
    gives its recorded outcome again. A second request for an id already erased finds nothing to change and
    is recorded as 'duplicate'."""
    key = tombstones.load_key(ws.settings.erasure_key_file)
    with runs.erasure_lock(ws.engine, ws.config.erasure.wait_seconds):
        with ws.engine.connect() as conn:
            request = conn.execute(sa.text("SELECT * FROM pipeline.erasure_requests WHERE request_id = :r"),
                                   {"r": request_id}).mappings().first()
        if request is None:
            raise LookupError(f"erasure request {request_id} does not exist (pipeline.erasure_requests)")
        if request["status"] != "pending":
            return {"request_id": request_id, "status": request["status"], **(request["outcome"] or {})}
        source_id = tombstones.id_text(request["source_id"])
        stone = tombstones.tombstone(key, source_id)
        started = datetime.now(UTC)
        try:
            earlier = _record_tombstone(ws, request_id, stone)
            outcome = Sweep(ws, request_id, source_id).run()
        except Exception as exc:  # the request stays pending: the DAG tries it again; the error is recorded
            _finish(ws, request_id, "pending", stone, {"last_error": f"{type(exc).__name__}: {exc}"[:500]},
                    keep_id=True)
            raise
    outcome = {**outcome, "seconds": round((datetime.now(UTC) - started).total_seconds(), 3)}
    status = "duplicate" if earlier is not None and not outcome["changed"] else "done"
    if earlier is not None:
        outcome["first_request"] = earlier
    _finish(ws, request_id, status, stone, outcome)
    log.info("erasure request %s: %s; %s", request_id, status, json.dumps(outcome, default=str))
    return {"request_id": request_id, "status": status, **outcome}


def _record_tombstone(ws: Workspace, request_id: int, stone: str) -> int | None:
    """Record the tombstone (first, so no ingest takes the row again); the request that first recorded it, when
    an earlier one did."""
    with ws.engine.begin() as conn:
        earlier = conn.scalar(sa.text("SELECT request_id FROM pipeline.erasure_tombstones WHERE tombstone = :t"),
                              {"t": stone})
        if earlier is None:
            conn.execute(sa.text("INSERT INTO pipeline.erasure_tombstones (tombstone, request_id) VALUES (:t, :r)"),
                         {"t": stone, "r": request_id})
    return None if earlier is None or int(earlier) == request_id else int(earlier)  # itself: an earlier try


def _finish(ws: Workspace, request_id: int, status: str, stone: str, outcome: dict[str, Any],
            keep_id: bool = False) -> None:
    """Record the request's outcome; the id itself is dropped from the request (only its tombstone stays)."""
    with ws.engine.begin() as conn:
        conn.execute(sa.text(f"""
            UPDATE pipeline.erasure_requests
               SET status = :status, tombstone = :t, outcome = CAST(:outcome AS jsonb)
                   {'' if keep_id else ', source_id = NULL, processed_at = now()'}
             WHERE request_id = :r
        """), {"status": status, "t": stone, "outcome": json.dumps(outcome, default=str), "r": request_id})


# --- the sweep ---------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """One request's pass over every copy; `run` returns what it changed where."""

    ws: Workspace
    request_id: int
    source_id: str
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    pages: list[dict[str, Any]] = field(default_factory=list)
    old_keys: list[str] = field(default_factory=list)  # data keys of sealed rows re-sealed: destroyed at the end

    def delete_sealed_quarantine(self, conn: Connection) -> int:
        """Delete the id's sealed quarantine rows (found by opening them); the rest of each such run's rows are
        re-sealed under a new data key, and the run's old key is destroyed after the commit."""
        keys = self.ws.keyring
        rows = [records.opened(dict(r), keys) for r in conn.execute(sa.text(
            "SELECT * FROM pipeline.quarantine WHERE sealed IS NOT NULL ORDER BY run_id, row_number")).mappings()]
        hit_runs = {r["run_id"] for r in rows if tombstones.id_text(r["source_id"] or "") == self.source_id}
        deleted = 0
        for run_id in sorted(hit_runs):
            run_rows = [r for r in rows if r["run_id"] == run_id]
            kept = [r for r in run_rows if tombstones.id_text(r["source_id"] or "") != self.source_id]
            deleted += len(run_rows) - len(kept)
            conn.execute(sa.text("DELETE FROM pipeline.quarantine WHERE run_id = :r AND sealed IS NOT NULL"),
                         {"r": run_id})
            if kept:
                _insert_resealed_quarantine(conn, run_id, kept, keys.sealer())
            self.old_keys += sorted({r["key_ref"] for r in run_rows})
        return deleted

    def scrub_sealed_validations(self, conn: Connection) -> int:
        """Scrub the id from sealed validation results (opened to be searched); each one changed is re-sealed
        under a new data key, its old key destroyed after the commit."""
        keys, id_column, changed = self.ws.keyring, self.ws.config.dataset.id_column, 0
        for row in conn.execute(sa.text(
                "SELECT * FROM pipeline.validation_results WHERE sealed IS NOT NULL")).mappings().all():
            opened = records.opened(dict(row), keys)
            scrubbed, found = scrub_json({k: opened[k] for k in records.SEALED_VALIDATION}, id_column, self.source_id)
            if not found:
                continue
            resealed = records.seal_validation(scrubbed, row["run_id"], row["snapshot_hash"], keys.sealer())
            conn.execute(sa.text("""
                UPDATE pipeline.validation_results
                   SET failures = CAST(:failures AS jsonb), result = CAST(:result AS jsonb),
                       normalisations = CAST(:normalisations AS jsonb), key_ref = :key_ref, sealed = :sealed
                 WHERE run_id = :run_id AND snapshot_hash = :snapshot_hash
            """), {**{k: json.dumps(resealed[k], default=str) for k in records.SEALED_VALIDATION},
                   "key_ref": resealed["key_ref"], "sealed": resealed["sealed"], "run_id": row["run_id"],
                   "snapshot_hash": row["snapshot_hash"]})
            self.old_keys.append(row["key_ref"])
            changed += 1
        return changed

    def reseal_refusals(self, conn: Connection) -> int:
        """Re-seal, under a new data key, the other sealed refusals of each scoring run that refused the id (its own
        rows go with ROW_PLACES); the run's old key is destroyed after the commit, so a backup's copy of the id's
        sealed values no longer opens. The runs re-sealed."""
        keys, runs = self.ws.keyring, conn.execute(sa.text("""
            SELECT DISTINCT run_id, key_ref FROM pipeline.scoring_refusals
             WHERE source_id = :id AND sealed IS NOT NULL ORDER BY run_id
        """), {"id": self.source_id}).all()
        for run_id, ref in runs:
            others = [records.opened(dict(r), keys) for r in conn.execute(sa.text("""
                SELECT * FROM pipeline.scoring_refusals WHERE run_id = :r AND key_ref = :k AND source_id <> :id
            """), {"r": run_id, "k": ref, "id": self.source_id}).mappings()]
            if others:
                records.reseal_refusals(conn, run_id, others, keys.sealer())
            self.old_keys.append(ref)
        return len(runs)

    def run(self) -> dict[str, Any]:
        self.rewrite_snapshots()
        flagged = self.flag_lineage()
        with self.ws.engine.begin() as conn:
            conn.execute(sa.text("SELECT set_config('pipeline.erasure_request', :r, true)"),
                         {"r": str(self.request_id)})
            resealed = self.reseal_refusals(conn)
            rows = {table: _delete_rows(conn, table, self.source_id) for table in ROW_PLACES}
            rows["quarantine"] += self.delete_sealed_quarantine(conn)
            scrubbed = {f"{t}.{c}": _scrub_json_column(conn, t, c, self.ws.config.dataset.id_column, self.source_id)
                        for t, c in JSON_PLACES}
            scrubbed["validation_results.sealed"] = self.scrub_sealed_validations(conn)
        for ref in self.old_keys:  # after the commit: the rows they sealed are gone or sealed anew
            self.ws.keyring.destroy(ref)
        self.rewrite_pages()
        changed = bool(self.snapshots or self.pages or any(rows.values()) or any(scrubbed.values()))
        return {"changed": changed, "snapshots": self.snapshots, "versions_trained_on_erased": flagged,
                "rows_deleted": rows, "json_scrubbed": scrubbed, "refusal_runs_resealed": resealed, "pages": self.pages,
                "bytes_rewritten": sum(s["bytes_written"] for s in self.snapshots + self.pages)}

    def rewrite_snapshots(self) -> None:
        """Every live snapshot holding the id, rewritten without it: raw ones first, so a derived snapshot's
        redacted copy names its redacted parent."""
        with self.ws.engine.connect() as conn:
            live = conn.execute(sa.text("""
                SELECT s.* FROM pipeline.snapshots s
                 WHERE NOT EXISTS (SELECT 1 FROM pipeline.snapshot_redactions r WHERE r.old_hash = s.snapshot_hash)
                 ORDER BY (s.kind <> 'raw'), s.created_at
            """)).mappings().all()
        id_column = self.ws.config.dataset.id_column
        for snapshot in live:
            path = artifacts.local_copy(self.ws.store, "snapshots", snapshot["snapshot_hash"])
            if not path.is_file():
                continue  # shredded already, or never on this store: nothing to read the id from
            ids = _read_verified_table(path, snapshot["snapshot_hash"], [id_column], self.ws.keyring)
            if id_column not in ids.column_names or not pc.any(_id_mask(ids.column(id_column), self.source_id)).as_py():
                continue
            table = _read_verified_table(path, snapshot["snapshot_hash"], None, self.ws.keyring)
            hits = _id_mask(table.column(id_column), self.source_id)
            self.snapshots.append(self._rewrite(dict(snapshot), table, hits, int(pc.sum(hits).as_py()), path))

    def _rewrite(self, snapshot: dict[str, Any], table: pa.Table, hits: pa.ChunkedArray, removed: int,
                 path: Path) -> dict[str, Any]:
        """Store the snapshot without the id's rows (with the bytes its own writer gives), register it, record
        old -> new, and shred the old file."""
        kept = table.filter(pc.invert(hits))
        if snapshot["kind"] == "clean":  # written from a frame (`ingest.snapshot_bytes`): the same path again
            data: bytes | memoryview = ingest.snapshot_bytes(kept.to_pandas().reset_index(drop=True))
        else:  # raw or awaiting outcome: written from Arrow as ingest writes them
            data = ingest.snapshot_table_bytes(kept.replace_schema_metadata(table.schema.metadata))
        new_hash, new_path = artifacts.store_bytes(self.ws.store, "snapshots", data, ".parquet")
        old_hash = snapshot["snapshot_hash"]
        with self.ws.engine.begin() as conn:
            parent = snapshot["parent_hash"]
            if parent is not None:
                parent = _live(conn, parent)
            conn.execute(sa.text("""
                INSERT INTO pipeline.snapshots (snapshot_hash, source_table, query, watermark, row_count, path,
                       first_run_id, kind, parent_hash, unlabelled_rows, erased_rows)
                VALUES (:h, :source_table, :query, :watermark, :rows, :path, :first_run_id, :kind, :parent,
                        :unlabelled_rows, :erased_rows)
                ON CONFLICT (snapshot_hash) DO NOTHING
            """), {**snapshot, "h": new_hash, "rows": kept.num_rows, "path": self.ws.relative(new_path),
                   "parent": parent, "erased_rows": (snapshot.get("erased_rows") or 0) + removed})
            conn.execute(sa.text("""
                INSERT INTO pipeline.snapshot_redactions (old_hash, new_hash, request_id, rows_removed, bytes_written)
                VALUES (:old, :new, :r, :removed, :bytes)
            """), {"old": old_hash, "new": new_hash, "r": self.request_id, "removed": removed, "bytes": len(data)})
        shred_old_copy(path, self.ws.keyring)
        _drop_shared_copy(self.ws, old_hash)
        log.info("erasure %s: snapshot %s (%s) rewritten as %s without %d row(s); the old file shredded",
                 self.request_id, old_hash[:12], snapshot["kind"], new_hash[:12], removed)
        return {"kind": snapshot["kind"], "old_hash": old_hash, "new_hash": new_hash, "rows_removed": removed,
                "bytes_written": len(data)}

    def flag_lineage(self) -> list[int]:
        """Flag every version whose training snapshot (through earlier redactions) was rewritten by this request."""
        rewritten = {s["old_hash"] for s in self.snapshots if s["kind"] == "clean"}
        if not rewritten:
            return []
        flagged = []
        with self.ws.engine.begin() as conn:
            for version, snapshot_hash in conn.execute(sa.text(
                    "SELECT version, snapshot_hash FROM pipeline.model_versions ORDER BY version")).all():
                if rewritten & set(_chain(conn, snapshot_hash)):
                    conn.execute(sa.text("""
                        INSERT INTO pipeline.erased_lineage (version, request_id) VALUES (:v, :r)
                        ON CONFLICT DO NOTHING
                    """), {"v": version, "r": self.request_id})
                    flagged.append(int(version))
        return flagged

    def rewrite_pages(self) -> None:
        """Every report and card page listing the id, rewritten without it; the registry's pointers follow."""
        for kind in PAGE_KINDS:
            folder = artifacts.store_root(self.ws.store) / kind
            for path in sorted(folder.glob("*.html")) if folder.is_dir() else []:
                page = crypto.read_plain(path, self.ws.keyring).decode(errors="replace")
                scrubbed, found = scrub_page(page, self.ws.config.dataset.id_column, self.source_id)
                if not found:
                    continue
                data = scrubbed.encode()
                new_hash, new_path = artifacts.store_bytes(self.ws.store, kind, data, ".html")
                with self.ws.engine.begin() as conn:
                    conn.execute(sa.text("SELECT set_config('pipeline.erasure_request', :r, true)"),
                                 {"r": str(self.request_id)})
                    for table, column in PAGE_POINTERS:
                        conn.execute(sa.text(f"""
                            UPDATE pipeline.{table} SET {column} = replace({column}, :old, :new)
                             WHERE {column} LIKE '%' || :old || '%'
                        """), {"old": path.stem, "new": new_hash})
                    conn.execute(sa.text("""
                        UPDATE pipeline.performance_reports SET report_sha256 = :new WHERE report_sha256 = :old
                    """), {"old": path.stem, "new": new_hash})
                shred_old_copy(path, self.ws.keyring)
                _drop_shared_copy(self.ws, path.stem)
                self.pages.append({"kind": kind, "old_hash": path.stem, "new_hash": new_hash, "rows_removed": found,
                                   "bytes_written": len(data), "path": self.ws.relative(new_path)})


def _read_verified_table(path: Path, digest: str, columns: list[str] | None = None,
                         keys: crypto.Keyring | None = None) -> pa.Table:
    """A snapshot file read after checking its bytes against its name: every column, or those of `columns` it has."""
    verified = artifacts.open_verified(path, digest, keys)
    try:
        parquet = pq.ParquetFile(verified.handle)
        wanted = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
        return parquet.read(columns=wanted)
    finally:
        verified.close()


def _id_mask(column: pa.ChunkedArray, source_id: str) -> pa.ChunkedArray:
    """Which cells of an id column are the id (compared as text: 17 and '17' alike)."""
    if pa.types.is_floating(column.type):
        column = pc.cast(pc.cast(column, pa.int64(), safe=False), pa.string())
    elif not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    return pc.fill_null(pc.equal(column, source_id), False)


def _live(conn: Connection, snapshot_hash: str) -> str:
    return _chain(conn, snapshot_hash)[-1]


def _chain(conn: Connection, snapshot_hash: str) -> list[str]:
    """A snapshot's hash and every redacted copy after it, oldest first."""
    chain = [snapshot_hash]
    while (newer := conn.scalar(sa.text("SELECT new_hash FROM pipeline.snapshot_redactions WHERE old_hash = :h"),
                                {"h": chain[-1]})) is not None and newer not in chain:
        chain.append(str(newer))
    return chain


def _drop_shared_copy(ws: Workspace, digest: str) -> None:
    """In a team store, the old bytes' large object is unlinked too (its index row is append-only and stays)."""
    if ws.store.engine is None:
        return
    with ws.engine.begin() as conn:
        oid = conn.scalar(sa.text(f"SELECT oid FROM {artifacts.TEAM_TABLE} WHERE digest = :d"), {"d": digest})
        if oid is not None and conn.scalar(sa.text(
                "SELECT 1 FROM pg_largeobject_metadata WHERE oid = :o"), {"o": oid}):
            conn.execute(sa.text("SELECT lo_unlink(:o)"), {"o": oid})


def _insert_resealed_quarantine(conn: Connection, run_id: str, rows: list[dict[str, Any]],
                                sealer: crypto.ValueSealer) -> None:
    """Put a run's opened quarantine rows back, sealed under `sealer`'s key."""
    for row in rows:
        sealed = records.seal_quarantined(row, run_id, sealer)
        conn.execute(sa.text("""
            INSERT INTO pipeline.quarantine (run_id, snapshot_hash, row_number, source_id, reasons, original, labelled,
                   created_at, key_ref, sealed)
            VALUES (:run_id, :snapshot_hash, :row_number, NULL, CAST(:reasons AS jsonb), NULL, :labelled, :created_at,
                    :key_ref, decode(:sealed, 'hex'))
        """), {**sealed, "run_id": run_id, "reasons": json.dumps(sealed["reasons"], default=str)})


def _delete_rows(conn: Connection, table: str, source_id: str) -> int:
    return int(conn.execute(sa.text(f"DELETE FROM pipeline.{table} WHERE source_id = :id"), {"id": source_id}).rowcount)


# --- JSON and pages ---------------------------------------------------------------------------------------


def _same_id(value: Any, source_id: str) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool) and \
        tombstones.id_text(value) == source_id


def scrub_json(value: Any, id_column: str, source_id: str, key: str = "") -> tuple[Any, int]:
    """`value` without the id: an object whose id column is the id goes from its list (or its id is blanked),
    and the id goes from every list of ids (a key ending in `ids`, as `sample_ids`); how many were removed."""
    if isinstance(value, dict):
        found = 0
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if k == id_column and _same_id(v, source_id):
                out[k], found = None, found + 1
                continue
            out[k], n = scrub_json(v, id_column, source_id, str(k))
            found += n
        return out, found
    if isinstance(value, list):
        found, kept = 0, []
        listing_ids = key.endswith("ids") or key.endswith("_list")
        for item in value:
            if (listing_ids and _same_id(item, source_id)) or (
                    isinstance(item, dict) and _same_id(item.get(id_column), source_id)):
                found += 1
                continue
            item, n = scrub_json(item, id_column, source_id, key)
            found += n
            kept.append(item)
        return kept, found
    return value, 0


def _scrub_json_column(conn: Connection, table: str, column: str, id_column: str, source_id: str) -> int:
    """Scrub the id from one JSON column of a registry table (only rows whose text mentions it); rows changed."""
    keys = _primary_key(conn, table)
    rows = conn.execute(sa.text(f"""
        SELECT {', '.join(keys)}, {column} AS doc FROM pipeline.{table}
         WHERE {column} IS NOT NULL AND strpos({column}::text, :id) > 0
    """), {"id": source_id}).mappings().all()
    changed = 0
    for row in rows:
        scrubbed, found = scrub_json(row["doc"], id_column, source_id)
        if found:
            where = " AND ".join(f"{k} = :k_{k}" for k in keys)
            conn.execute(sa.text(f"UPDATE pipeline.{table} SET {column} = CAST(:doc AS jsonb) WHERE {where}"),
                         {"doc": json.dumps(scrubbed, default=str), **{f"k_{k}": row[k] for k in keys}})
            changed += 1
    return changed


def _primary_key(conn: Connection, table: str) -> list[str]:
    return list(conn.scalars(sa.text("""
        SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = CAST(:t AS regclass) AND i.indisprimary ORDER BY a.attnum
    """), {"t": f"pipeline.{table}"}).all())


_TABLE = re.compile(r"<table[^>]*>.*?</table>", re.S)
_ROW = re.compile(r"<tr[^>]*>.*?</tr>", re.S)
_CELL = re.compile(r"<t([hd])[^>]*>(.*?)</t[hd]>", re.S)


def scrub_page(page: str, id_column: str, source_id: str) -> tuple[str, int]:
    """A report or card page without the id: a table row whose id column (headed by the contract's id column or
    `source id`) is the id goes, and the id goes from each cell of a column of example ids. How many went."""
    found = 0

    def table(match: re.Match[str]) -> str:
        nonlocal found
        text = match.group(0)
        rows = _ROW.findall(text)
        if not rows:
            return text
        headers = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip().lower() for _, c in _CELL.findall(rows[0])]
        id_at = [i for i, h in enumerate(headers) if h in ID_HEADERS or h == id_column.lower()]
        ids_at = [i for i, h in enumerate(headers) if h.endswith(" ids") or h.endswith("_ids")]
        if not id_at and not ids_at:
            return text
        for row in rows[1:]:
            cells = _CELL.findall(row)
            plain = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for _, c in cells]
            if any(i < len(plain) and plain[i] == source_id for i in id_at):
                text, found = text.replace(row, "", 1), found + 1
                continue
            new_row = row
            for i in ids_at:
                if i < len(plain):
                    listed, n = _without_id(plain[i], source_id)
                    if n:
                        new_row = new_row.replace(cells[i][1], html.escape(listed), 1)
                        found += n
            text = text.replace(row, new_row, 1)
        return text

    return _TABLE.sub(table, page), found


def _without_id(cell: str, source_id: str) -> tuple[str, int]:
    """A cell listing ids (`['17', '23']` or `17, 23`) without the id; how many times it was there."""
    try:
        listed = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        listed = [part.strip() for part in cell.split(",")]
    if not isinstance(listed, list | tuple):
        return cell, 0
    kept = [i for i in listed if not _same_id(i, source_id)]
    return (str(kept) if cell.startswith("[") else ", ".join(map(str, kept))), len(listed) - len(kept)


# --- the proof --------------------------------------------------------------------------------------------


def erasure_report(ws: Workspace, source_id: str) -> dict[str, Any]:
    """Every place the pipeline keeps patient data, searched for the id: each with what was searched and what
    was found. After an erasure every `found` is 0."""
    source_id = tombstones.id_text(source_id).strip()
    key = tombstones.load_key(ws.settings.erasure_key_file)
    id_column = ws.config.dataset.id_column
    places = list(_search_files(ws, source_id))
    with ws.engine.connect() as conn:
        for table in ROW_PLACES:
            n = int(conn.scalar(sa.text(f"SELECT count(*) FROM pipeline.{table} WHERE source_id = :id"),
                                {"id": source_id}) or 0)
            total = int(conn.scalar(sa.text(f"SELECT count(*) FROM pipeline.{table}")) or 0)
            places.append({"place": f"table pipeline.{table} (source_id)", "searched": total, "found": n})
        places += list(_search_sealed_rows(conn, ws.keyring, id_column, source_id))
        for table, column in JSON_PLACES:
            rows = conn.execute(sa.text(f"""
                SELECT {column} AS doc FROM pipeline.{table}
                 WHERE {column} IS NOT NULL AND strpos({column}::text, :id) > 0
            """), {"id": source_id}).scalars().all()
            total = int(conn.scalar(sa.text(f"SELECT count(*) FROM pipeline.{table}")) or 0)
            places.append({"place": f"table pipeline.{table} ({column}: ids in JSON)", "searched": total,
                           "found": sum(scrub_json(doc, id_column, source_id)[1] for doc in rows)})
        pending = int(conn.scalar(sa.text("SELECT count(*) FROM pipeline.erasure_requests WHERE source_id = :id"),
                                  {"id": source_id}) or 0)
        places.append({"place": "table pipeline.erasure_requests (ids not yet processed)",
                       "searched": int(conn.scalar(sa.text("SELECT count(*) FROM pipeline.erasure_requests")) or 0),
                       "found": pending})
        stone = tombstones.tombstone(key, source_id)
        tombstoned = conn.execute(sa.text(
            "SELECT request_id, at FROM pipeline.erasure_tombstones WHERE tombstone = :t"), {"t": stone}).first()
        requests = conn.execute(sa.text("""
            SELECT request_id, status, reason, requested_by, requested_at, processed_at
              FROM pipeline.erasure_requests WHERE tombstone = :t ORDER BY request_id
        """), {"t": stone}).mappings().all()
        flagged = conn.scalars(sa.text("""
            SELECT DISTINCT l.version FROM pipeline.erased_lineage l
              JOIN pipeline.erasure_requests r USING (request_id) WHERE r.tombstone = :t ORDER BY 1
        """), {"t": stone}).all()
    found = sum(p["found"] for p in places)
    return {"source_id": source_id, "erased": tombstoned is not None and found == 0, "found": found,
            "tombstone_recorded": tombstoned is not None,
            "tombstone_request": tombstoned.request_id if tombstoned else None,
            "requests": [dict(r) for r in requests], "versions_trained_on_erased": [int(v) for v in flagged],
            "places": places}


def _search_sealed_rows(conn: Connection, keys: crypto.Keyring, id_column: str,
                        source_id: str) -> Iterator[dict[str, Any]]:
    """The sealed quarantine rows and validation results (encryption at rest), each opened and searched."""
    quarantine = [records.opened(dict(r), keys) for r in conn.execute(sa.text(
        "SELECT * FROM pipeline.quarantine WHERE sealed IS NOT NULL")).mappings()]
    yield {"place": "table pipeline.quarantine (sealed rows, opened: source_id)", "searched": len(quarantine),
           "found": sum(tombstones.id_text(r["source_id"] or "") == source_id for r in quarantine)}
    validations = [records.opened(dict(r), keys) for r in conn.execute(sa.text(
        "SELECT * FROM pipeline.validation_results WHERE sealed IS NOT NULL")).mappings()]
    yield {"place": "table pipeline.validation_results (sealed values, opened: ids in JSON)",
           "searched": len(validations),
           "found": sum(scrub_json({k: r[k] for k in records.SEALED_VALIDATION}, id_column, source_id)[1]
                        for r in validations)}


def _search_files(ws: Workspace, source_id: str) -> Iterator[dict[str, Any]]:
    """Every snapshot file (its id column, read back, sealed files opened) and every report and card page (its
    id cells). A file whose key was destroyed (crypto-shredded) cannot hold anything readable: it counts as
    searched."""
    root, id_column, keys = artifacts.store_root(ws.store), ws.config.dataset.id_column, ws.keyring
    files = sorted((root / "snapshots").glob("*.parquet")) if (root / "snapshots").is_dir() else []
    found = 0
    for path in files:
        with _opened_or_none(path, keys) as handle:
            if handle is None:
                continue
            parquet = pq.ParquetFile(handle)
            if id_column in parquet.schema_arrow.names:
                column = parquet.read(columns=[id_column]).column(id_column)
                found += int(pc.sum(_id_mask(column, source_id)).as_py() or 0)
    yield {"place": f"snapshot files under {root / 'snapshots'} (the {id_column} column, read back)",
           "searched": len(files), "found": found}
    for kind in PAGE_KINDS:
        pages = sorted((root / kind).glob("*.html")) if (root / kind).is_dir() else []
        found = 0
        for page in pages:
            with _opened_or_none(page, keys) as handle:
                if handle is not None:
                    found += scrub_page(handle.read().decode(errors="replace"), id_column, source_id)[1]
        yield {"place": f"{kind} pages under {root / kind} (tables of ids, example ids)", "searched": len(pages),
               "found": found}


@contextmanager
def _opened_or_none(path: Path, keys: crypto.Keyring) -> Iterator[IO[bytes] | None]:
    """A stored file open as its plaintext, or None when its data key was destroyed (nothing readable is left)."""
    try:
        handle = crypto.open_plain(path, keys)
    except DataKeyDestroyed:
        yield None
        return
    with handle:
        yield handle


# --- a champion trained on erased rows --------------------------------------------------------------------


def retrain_deadline(ws: Workspace) -> dict[str, Any] | None:
    """When the champion was trained on rows erased since: the first such erasure, and the deadline by which
    `erasure.retrain_within_days` says it must be replaced; None otherwise."""
    with ws.engine.connect() as conn:
        return records.erasure_deadline(conn, ws.model, ws.config.erasure.retrain_within_days)
