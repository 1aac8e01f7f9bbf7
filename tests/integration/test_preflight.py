"""Refuse before writing: what a run can know is wrong before it starts (its config, a model family's parameters,
the source table's columns and types, a watermark that selects no row) is refused before any run row, snapshot
file, registry row or event is written, in one line naming the key or the column; `check-config` says the same."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from pipeline.contract.settings import ENV_DATABASE_URL, PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.workspace import Workspace
from tests.commands import Cli, cli_in_process

pytestmark = pytest.mark.timeout(300)


def write_config(folder: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """The shipped config with `change` applied, as a file of its own (ridge only: the checks are what is tested)."""
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["training"]["families"] = {"ridge": {"alpha": 1.0}}
    change(raw)
    path = folder / "variant.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def registry_state(engine: sa.engine.Engine, artifact_dir: Path) -> dict[str, Any]:
    """The row count of every table in the pipeline schema, and every file under the artifact store."""
    with engine.connect() as conn:
        tables = conn.scalars(sa.text("SELECT table_name FROM information_schema.tables "
                                      "WHERE table_schema = 'pipeline' AND table_type = 'BASE TABLE'")).all()
        counts = {t: conn.scalar(sa.text(f'SELECT count(*) FROM pipeline."{t}"')) for t in tables}
    files = sorted(str(p.relative_to(artifact_dir)) for p in artifact_dir.rglob("*") if p.is_file()) \
        if artifact_dir.exists() else []
    assert len(counts) >= 10  # the registry's tables are all there to be counted
    return {"rows": counts, "files": files}


@pytest.fixture
def seeded(settings: Settings) -> Iterator[Workspace]:
    """The demo study loaded; the schema applied by opening a workspace, as any command does first."""
    ws = Workspace.open(settings)
    demo.seed_demo(ws.engine)
    yield ws
    ws.engine.dispose()


def set_seed(raw: dict[str, Any]) -> None:
    raw["training"]["seed"] = -1


def bogus_parameter(raw: dict[str, Any]) -> None:
    raw["training"]["families"]["ridge"]["bogus"] = 1


def drop_glucose(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE public.patient_records DROP COLUMN glucose"))


def bmi_as_boolean(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE public.patient_records ALTER COLUMN bmi TYPE boolean USING bmi > 25"))


CASES = {  # case: (config change, source change, extra arguments, the refusal's words)
    "seed": (set_seed, None, [], "training.seed must be from 0 to 4294967295"),
    "estimator_parameter": (bogus_parameter, None, [],
                            "training.families.ridge.bogus: ridge (Ridge) has no parameter 'bogus'"),
    "missing_column": (None, drop_glucose, [], "source table public.patient_records lacks contract column(s) "
                                                "['glucose']"),
    "column_type": (None, bmi_as_boolean, [], "column 'bmi' of public.patient_records is BOOLEAN, but the contract "
                                              "expects float"),
    "empty_selection": (None, None, ["--watermark", "2000-01-01T00:00:00+00:00"],
                        "no labelled rows of public.patient_records recorded up to 2000-01-01T00:00:00+00:00"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_run_that_cannot_succeed_is_refused_before_it_writes_anything(
        case: str, seeded: Workspace, settings: Settings, cli: Cli, tmp_path: Path) -> None:
    change_config, change_source, extra, words = CASES[case]
    config = write_config(tmp_path, change_config or (lambda raw: None))
    if change_source:
        with seeded.engine.begin() as conn:
            change_source(conn)
    before = registry_state(seeded.engine, settings.artifact_dir)

    refused = cli("--config", str(config), "retrain", "--run-id", "refused", *extra)

    assert refused.returncode == 1 and refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith("error: ") and words in line, line
    assert registry_state(seeded.engine, settings.artifact_dir) == before  # no run row, snapshot, file or event
    if case != "empty_selection":  # check-config checks as of now, and the demo rows are there by then
        checked = cli("--config", str(config), "check-config")
        assert checked.returncode == 1 and words in checked.stderr, checked.stderr
        assert registry_state(seeded.engine, settings.artifact_dir) == before


def test_check_config_checks_the_source_when_it_reaches_the_database(seeded: Workspace, cli: Cli) -> None:
    reached = cli("check-config")
    assert reached.returncode == 0, reached.stderr
    assert "source public.patient_records: columns, types and labelled rows up to now ok (checked on the database)" \
        in reached.stdout
    with seeded.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM public.patient_records"))
    empty = cli("check-config")
    assert empty.returncode == 1 and "no labelled rows of public.patient_records" in empty.stderr
    assert "the table has no rows" in empty.stderr
    unreached = cli_in_process({**os.environ, ENV_DATABASE_URL: "postgresql+psycopg2://x@127.0.0.1:1/none"})(
        "check-config")
    assert unreached.returncode == 0, unreached.stderr
    assert "source not checked: database postgresql+psycopg2://x@127.0.0.1:1/none" in unreached.stdout
