"""Shared fixtures: a real PostgreSQL (embedded unless PIPELINE_DATABASE_URL names one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.contract.config import PipelineConfig, Pkcs11Policy, load_config
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.runtime import threads
from pipeline.store import db
from pipeline.workspace import Workspace

# The test processes' idle OpenMP threads wait passively, as every pipeline process's do (`python -m pipeline`,
# Airflow's tasks): set before any test imports scikit-learn, which loads OpenMP once. With OpenMP's default spin,
# the suite beside two busy processes ran five to six times slower than quiet.
threads.prepare_environment()

# A test that starts a whole Airflow (scheduler, API server, triggerer, workers) requests `starts_airflow`, through
# the fixture that starts it: such tests are marked `live_airflow`, and `make test` runs them in one process after
# the rest, which runs on two (pytest-xdist, --dist loadgroup). Under xdist the live scheduler's module-scoped
# Airflow was set up twice, and its last test, which builds on the earlier ones, then waited on a paused DAG.
# `tests.standalone.scratch_airflow` refuses to start one for a test that did not request it.
STARTS_AIRFLOW = "PIPELINE_TEST_STARTS_AIRFLOW"
LIVE_AIRFLOW_TIMEOUT = 2400  # seconds a test that starts a whole Airflow may take; every other test: pyproject's


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start Airflow (with a longer timeout); under xdist, keep every other file in one
    process, in file order."""
    for item in items:
        if "starts_airflow" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.live_airflow)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(LIVE_AIRFLOW_TIMEOUT))
        else:
            item.add_marker(pytest.mark.xdist_group(item.path.relative_to(PROJECT_ROOT).as_posix()))


@pytest.fixture(scope="session")
def starts_airflow() -> Iterator[None]:
    """Requested by every fixture that starts a whole Airflow: its tests run as `live_airflow`."""
    os.environ[STARTS_AIRFLOW] = "1"
    yield
    os.environ.pop(STARTS_AIRFLOW, None)


def missing_tool(reason: str) -> None:
    """Skip the module whose tool is missing; on CI (CI=true) fail instead: a green CI never hides a test that
    did not run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing tool fails the run instead of skipping)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                   "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")
SOFTHSM_PIN = "pipeline-test-pin"


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SoftHSM2 (Debian's softhsm2) with its token folder in a temporary SOFTHSM2_CONF, for this test process; the
    module's path. The module reads SOFTHSM2_CONF when it is first loaded, so every PKCS#11 test of a process
    shares this folder, each on a token of its own (`pkcs11_token`)."""
    module = next((Path(p) for p in SOFTHSM_MODULES if Path(p).is_file()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        missing_tool("softhsm2 is not installed (Debian: apt-get install softhsm2; .ci/require-tools installs it): "
                     "the PKCS#11 key manager is tested on a real token")
    assert module is not None
    folder = tmp_path_factory.mktemp("softhsm")
    (folder / "tokens").mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return module


@pytest.fixture
def pkcs11_token(softhsm: Path, tmp_path: Path) -> Pkcs11Policy:
    """A freshly initialised SoftHSM2 token for one test, its user PIN in a mode-0600 file."""
    label = f"t-{uuid.uuid4().hex[:12]}"
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "so-" + SOFTHSM_PIN,
                    "--pin", SOFTHSM_PIN], check=True, capture_output=True, timeout=60)
    pin_file = tmp_path / "hsm-pin"
    pin_file.touch(mode=0o600)
    pin_file.write_text(SOFTHSM_PIN)
    return Pkcs11Policy(module=softhsm, token_label=label, pin_file=pin_file)


@pytest.fixture(scope="session")
def server_url() -> str:
    """The PostgreSQL server under test: PIPELINE_DATABASE_URL, or the embedded one."""
    return db.database_url(Settings.from_env())


@pytest.fixture(scope="session")
def config() -> PipelineConfig:
    return load_config(PROJECT_ROOT / "pipeline.yaml")


def create_scratch_database(server_url: str) -> str:
    """A new, empty database on the server under test, with the schema applied."""
    url = db.with_database(server_url, f"pipeline_test_{uuid.uuid4().hex[:10]}")
    db.ensure_database(url)
    engine = db.create_engine(url)
    db.apply_schema(engine)
    engine.dispose()
    return url


@contextmanager
def shared_workspace(server_url: str, folder: Path, config_path: Path = PROJECT_ROOT / "pipeline.yaml"
                     ) -> Iterator[Workspace]:
    """A Workspace on a database of its own and an artifact folder (and master keys) under `folder`, for the tests of
    one module to share what is costly to build (a trained, scored registry) and only read; the database is
    dropped afterwards."""
    url = create_scratch_database(server_url)
    ws = Workspace.open(Settings(database_url=url, config_path=config_path, artifact_dir=folder / "artifacts", pgdata_dir=PROJECT_ROOT / ".pgdata",
                                 key_file=folder / "secrets" / "master.key"))
    try:
        yield ws
    finally:
        ws.engine.dispose()
        db.drop_database(url)


def copy_workspace(template: Workspace, target: Workspace) -> None:
    """Make `target`'s database, artifact folder and master keys a copy of `template`'s (a `shared_workspace`):
    CREATE DATABASE ... TEMPLATE copies the files on the server, far faster than building the registry again, and
    each test then changes its own copy. `target` must not have used its keys yet (a fresh `ws`)."""
    template.engine.dispose()  # a template database must have no sessions
    target.engine.dispose()
    source, copy = template.engine.url.database, target.engine.url.database
    admin = db.create_engine(db.with_database(target.engine.url.render_as_string(hide_password=False), "postgres"))
    try:
        with admin.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{copy}" TEMPLATE "{source}"'))
    finally:
        admin.dispose()
    shutil.rmtree(target.settings.artifact_dir, ignore_errors=True)
    shutil.copytree(template.settings.artifact_dir, target.settings.artifact_dir)
    for name in ("key_file", "erasure_key_file"):
        given, wanted = getattr(template.settings, name), getattr(target.settings, name)
        if given is not None and wanted is not None and given != wanted and Path(given).exists():
            Path(wanted).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(given, wanted)


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    url = create_scratch_database(server_url)
    yield url
    db.drop_database(url)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings pointing at the test's own database and artifact folder."""
    return Settings(
        database_url=database_url,
        config_path=PROJECT_ROOT / "pipeline.yaml",
        artifact_dir=tmp_path / "artifacts",
        pgdata_dir=PROJECT_ROOT / ".pgdata",
        key_file=tmp_path / "secrets" / "master.key",  # the test's own master keys, outside its artifact store
    )


class Broker:
    """A redis-server on a free port that a test stops and starts again on the same port (the stack's broker)."""

    def __init__(self, folder: Path) -> None:
        from pipeline.cli.cluster import free_port

        self.port, self.folder, self.stack = free_port(), folder, ExitStack()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from pipeline.cli.cluster import redis_server

        self.stack.enter_context(redis_server(self.port, self.folder))

    def stop(self) -> None:
        self.stack.close()
