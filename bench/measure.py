"""What every probe measures with: resident memory now and at its peak, a timed call, the workspace of a
bench database, and a COPY whose rows go nowhere. Shared by `bench.probe` and `bench.scoring`."""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (Linux), in MB."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def rss_mb() -> float:
    """Resident memory now."""
    now = _status_mb("VmRSS")
    return float("nan") if now is None else now


def peak_mb() -> float:
    """This process's own resident high-water mark (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    over from the parent through fork and exec, so a probe started by a bench process holding 394 MB
    reported 394 MB for a step that never used that much."""
    own = _status_mb("VmHWM")
    return own if own is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - started


def workspace(spec: dict[str, Any]) -> Any:
    from pipeline.contract.settings import Settings
    from pipeline.workspace import Workspace

    key_file = Path(spec["key_file"]) if spec.get("key_file") else None  # else the environment's, as every stage's
    return Workspace.open(Settings(database_url=spec["database_url"], config_path=Path(spec["config_path"]),
                                   artifact_dir=Path(spec["artifact_dir"]), pgdata_dir=Path(spec["pgdata_dir"]),
                                   key_file=key_file or Settings.from_env().key_file))


class Nothing:
    """A file that drops every write: COPY's bytes go nowhere."""

    def write(self, data: bytes) -> None:
        pass


def copy_into_nothing(engine: Any, sql: str, binary: bool) -> None:
    """COPY (the snapshot query) TO STDOUT, every row received and dropped."""
    raw = engine.raw_connection()
    try:
        options = " WITH (FORMAT binary)" if binary else ""
        raw.cursor().copy_expert(f"COPY ({sql}) TO STDOUT{options}", Nothing())
    finally:
        raw.close()


@contextmanager
def scratch(name: str, fill: Callable[[Any], None] | None = None) -> Iterator[tuple[Any, str, Path]]:
    """A database of its own on the configured server, the pipeline schema applied and `fill(engine)` run on it,
    and an empty scratch folder: (the environment's settings, the database URL, the folder). Both are removed
    afterwards, whatever happened."""
    from pipeline.contract.settings import Settings
    from pipeline.store import db

    base = Settings.from_env()
    url = db.with_database(db.database_url(base), f"bench_{name}_{uuid.uuid4().hex[:8]}")
    db.ensure_database(url)
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        engine = db.create_engine(url)
        try:
            db.apply_schema(engine)
            if fill is not None:
                fill(engine)
        finally:
            engine.dispose()
        yield base, url, folder
    finally:
        db.drop_database(url)
        shutil.rmtree(folder, ignore_errors=True)
