"""Static checks of docker-compose.yaml against the repository it is built from.

No Docker engine is needed: the file is parsed and cross-checked against pipeline.contract.settings,
requirements.txt and the files the bind mount exposes inside the containers.
"""

from __future__ import annotations

import re
from importlib.machinery import PathFinder
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from pipeline.contract.settings import (
    ARTIFACT_STORES,
    ENV_ARTIFACT_DIR,
    ENV_ARTIFACT_STORE,
    ENV_CONFIG,
    ENV_DATABASE_URL,
    ENV_KEY_FILE,
    ENV_MODELS_DIR,
)
from pipeline.serving.rest import ENV_API_TOKEN_FILE

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
REQUIREMENTS = ROOT / "requirements.txt"

COMMON_KEY = "x-airflow-common"
AIRFLOW_COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
AIRFLOW_SERVICES = ["airflow-init", *AIRFLOW_COMMANDS]
PIPELINE_ENV_NAMES = {ENV_DATABASE_URL, ENV_CONFIG, ENV_ARTIFACT_DIR, ENV_ARTIFACT_STORE, ENV_MODELS_DIR,
                      ENV_API_TOKEN_FILE, ENV_KEY_FILE}
WORKER = "airflow-worker"
SCORING = "scoring"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def common_env(compose: dict) -> dict[str, str]:
    return environment(compose[COMMON_KEY])


# --- helpers -------------------------------------------------------------------------------------


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a dict, whether written as a mapping or as KEY=VALUE items."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def command_words(service: dict) -> list[str]:
    command = service.get("command")
    return command.split() if isinstance(command, str) else list(command or [])


def init_script(compose: dict) -> str:
    return " ".join(command_words(compose["services"]["airflow-init"]))


def mounts(service: dict) -> list[tuple[str, PurePosixPath]]:
    """(source, container target) of each volume entry, short or long syntax."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            source, target = entry.get("source", ""), entry["target"]
        else:
            parts = entry.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        result.append((source, PurePosixPath(target)))
    return result


def is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def mount_for(service: dict, container_path: str) -> tuple[str, PurePosixPath, PurePosixPath]:
    """The innermost mount holding `container_path`: (source, target, path relative to target)."""
    path = PurePosixPath(container_path)
    holding = [(src, tgt) for src, tgt in mounts(service) if path.is_relative_to(tgt)]
    assert holding, f"{container_path} is on no volume of the service"
    source, target = max(holding, key=lambda m: len(m[1].parts))
    return source, target, path.relative_to(target)


def repo_path(service: dict, container_path: str) -> Path:
    """Where `container_path` lives on the host, through the service's bind mounts."""
    source, _, relative = mount_for(service, container_path)
    assert is_host_path(source), f"{container_path} is on volume {source!r}, not a bind mount"
    return (COMPOSE_FILE.parent / source).resolve() / relative


def dockerfile(compose: dict) -> str:
    build = compose[COMMON_KEY]["build"]
    assert isinstance(build, dict) and "dockerfile_inline" in build, (
        "expected build.dockerfile_inline"
    )
    return build["dockerfile_inline"]


# --- shape ---------------------------------------------------------------------------------------


def test_parses_to_services_mapping(compose: dict) -> None:
    assert isinstance(compose, dict)
    assert isinstance(compose.get("services"), dict)
    assert isinstance(compose.get(COMMON_KEY), dict)


def test_expected_services_exist(compose: dict) -> None:
    missing = {"postgres", *AIRFLOW_SERVICES} - set(compose["services"])
    assert not missing, f"services missing: {sorted(missing)}"


@pytest.mark.parametrize(("name", "subcommand"), sorted(AIRFLOW_COMMANDS.items()))
def test_long_running_services_run_their_airflow_component(
    compose: dict, name: str, subcommand: str
) -> None:
    assert command_words(compose["services"][name]) == [subcommand]


def test_init_migrates_airflow_and_initialises_pipeline_schema(compose: dict) -> None:
    script = init_script(compose)
    assert "airflow db migrate" in script
    assert "python -m pipeline init-db" in script


def test_pipeline_cli_used_by_compose_has_those_commands() -> None:
    assert (ROOT / "pipeline" / "__main__.py").is_file(), "`python -m pipeline` has no __main__"
    sources = "\n".join(p.read_text() for p in (ROOT / "pipeline").rglob("*.py"))
    for command in ("init-db", "seed-demo"):
        assert command in sources, f"`python -m pipeline {command}` is used but not defined"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_share_image_build_and_environment(
    compose: dict, common_env: dict[str, str], name: str
) -> None:
    service = compose["services"][name]
    common = compose[COMMON_KEY]
    assert service.get("image") == common["image"]
    assert service.get("build") == common["build"]
    assert environment(service) == common_env


def test_environment_values_are_strings(compose: dict) -> None:
    # An unquoted `false` or `4` would reach YAML as bool/int; compose only promises strings.
    assert sum(len(environment(s)) for s in [compose[COMMON_KEY], *compose["services"].values()]) >= 20
    for name, service in [(COMMON_KEY, compose[COMMON_KEY]), *compose["services"].items()]:
        for key, value in environment(service).items():
            assert isinstance(value, str), f"{name}: {key}={value!r} is not a string"


def interpolated(value: str) -> str:
    """A compose value with each `${VAR:-default}` as compose reads it when VAR is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_airflow_core_settings(common_env: dict[str, str]) -> None:
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert common_env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    # The cap on running tasks leaves room for a scaled-out stack: 8 workers' slots at least.
    parallelism = int(interpolated(common_env["AIRFLOW__CORE__PARALLELISM"]))
    assert parallelism >= 8 * int(common_env["AIRFLOW__CELERY__WORKER_CONCURRENCY"])


def test_simple_auth_manager_users_are_user_role_pairs(common_env: dict[str, str]) -> None:
    users = common_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")
    assert users and users[0].strip()
    for user in users:
        username, _, role = user.strip().partition(":")
        assert username, f"empty user name in {user!r}"
        assert role.lower() in {"viewer", "user", "op", "admin"}, f"unknown role in {user!r}"
    assert PurePosixPath(
        common_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    ).is_absolute()


# --- pipeline settings ---------------------------------------------------------------------------


def test_pipeline_variables_are_the_ones_pipeline_settings_reads(compose: dict) -> None:
    set_anywhere = {k for s in [compose[COMMON_KEY], *compose["services"].values()] for k in environment(s)}
    assert {k for k in set_anywhere if k.startswith("PIPELINE_")} >= {ENV_DATABASE_URL, ENV_CONFIG}  # checks something
    for name, service in [(COMMON_KEY, compose[COMMON_KEY]), *compose["services"].items()]:
        unknown = {
            k for k in environment(service) if k.startswith("PIPELINE_")
        } - PIPELINE_ENV_NAMES
        assert not unknown, f"{name} sets {sorted(unknown)}, which pipeline.contract.settings never reads"


def test_pipeline_database_and_config_are_set(common_env: dict[str, str]) -> None:
    for name in (ENV_DATABASE_URL, ENV_CONFIG, ENV_ARTIFACT_DIR):
        assert common_env.get(name), f"{name} is not set for the Airflow services"


# --- container paths back to the repository ------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "kind"),
    [
        ("AIRFLOW__CORE__DAGS_FOLDER", "dir"),
        ("AIRFLOW__CORE__PLUGINS_FOLDER", "dir"),
        (ENV_CONFIG, "file"),
    ],
)
@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_container_paths_reach_repository_files(
    compose: dict, common_env: dict[str, str], name: str, variable: str, kind: str
) -> None:
    host = repo_path(compose["services"][name], common_env[variable])
    assert host.is_relative_to(ROOT), f"{variable} maps outside the repository: {host}"
    assert host.is_dir() if kind == "dir" else host.is_file(), f"{variable} -> {host} is no {kind}"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_pythonpath_makes_the_pipeline_package_importable(
    compose: dict, common_env: dict[str, str], name: str
) -> None:
    service = compose["services"][name]
    found = []
    for entry in filter(None, common_env.get("PYTHONPATH", "").split(":")):
        source, _, _ = mount_for(service, entry)
        if not is_host_path(source):
            continue
        spec = PathFinder.find_spec("pipeline", [str(repo_path(service, entry))])
        if spec is not None and spec.submodule_search_locations:
            found.extend(Path(p).resolve() for p in spec.submodule_search_locations)
    assert ROOT / "pipeline" in found, "no PYTHONPATH entry reaches the repository's pipeline/"
    assert PathFinder.find_spec("workspace", [str(ROOT / "pipeline")]) is not None


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_written_paths_live_on_named_volumes(
    compose: dict, common_env: dict[str, str], name: str
) -> None:
    # Artifacts and the UI password file must survive restarts and be shared across services.
    service = compose["services"][name]
    for path in (
        common_env[ENV_ARTIFACT_DIR],
        common_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"],
    ):
        source, _, _ = mount_for(service, path)
        assert not is_host_path(source), f"{path} is on bind mount {source!r}, not a named volume"


def test_named_volumes_and_configs_are_declared(compose: dict) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    declared_configs = set(compose.get("configs") or {})
    assert declared_volumes and any(mounts(service) for service in compose["services"].values())
    for name, service in compose["services"].items():
        for source, target in mounts(service):
            if source and not is_host_path(source):
                assert source in declared_volumes, (
                    f"{name}: volume {source!r} ({target}) undeclared"
                )
        for config in service.get("configs") or []:
            source = config["source"] if isinstance(config, dict) else config
            assert source in declared_configs, f"{name}: config {source!r} undeclared"


# --- databases -----------------------------------------------------------------------------------


def created_databases(compose: dict, common_env: dict[str, str]) -> set[str]:
    """POSTGRES_DB, plus the database of every URL variable airflow-init passes to
    pipeline.store.db.ensure_database before it runs `python -m pipeline init-db`."""
    postgres_env = environment(compose["services"]["postgres"])
    names = {postgres_env.get("POSTGRES_DB") or postgres_env["POSTGRES_USER"]}
    script = init_script(compose)
    init_db_at = script.find("python -m pipeline init-db")
    for match in re.finditer(r"ensure_database\(os\.environ\[[\"'](\w+)[\"']\]\)", script):
        if match.start() < init_db_at:
            names.add(make_url(common_env[match.group(1)]).database)
    return names


def test_ensure_database_used_by_init_exists() -> None:
    from pipeline.store import db

    assert callable(getattr(db, "ensure_database", None))


@pytest.mark.parametrize("variable", ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ENV_DATABASE_URL])
def test_database_urls_point_at_the_postgres_service(
    compose: dict, common_env: dict[str, str], variable: str
) -> None:
    url = make_url(common_env[variable])
    url.get_dialect()  # raises for an unknown driver name
    postgres_env = environment(compose["services"]["postgres"])
    assert url.get_backend_name() == "postgresql"
    assert url.host == "postgres"
    assert url.port in (None, 5432)
    assert url.username == postgres_env["POSTGRES_USER"]
    assert url.password == postgres_env["POSTGRES_PASSWORD"]
    created = created_databases(compose, common_env)
    assert url.database in created, f"{variable}: {url.database!r} is never created"


def test_airflow_metadata_and_pipeline_data_use_separate_databases(
    compose: dict, common_env: dict[str, str]
) -> None:
    airflow_db = make_url(common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).database
    pipeline_db = make_url(common_env[ENV_DATABASE_URL]).database
    assert airflow_db == environment(compose["services"]["postgres"])["POSTGRES_DB"]
    assert pipeline_db and pipeline_db != airflow_db


def test_postgres_service(compose: dict) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].split(":")[1].split(".")[0] == "16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    source, _, relative = mount_for(postgres, "/var/lib/postgresql/data")
    assert not is_host_path(source) and relative == PurePosixPath(".")


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_wait_for_postgres_and_init(compose: dict, name: str) -> None:
    depends_on = compose["services"][name]["depends_on"]
    assert depends_on["postgres"]["condition"] == "service_healthy"
    if name != "airflow-init":
        assert depends_on["airflow-init"]["condition"] == "service_completed_successfully"


# --- API server ----------------------------------------------------------------------------------


def published_container_ports(service: dict) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        target = port["target"] if isinstance(port, dict) else str(port).split(":")[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


def test_execution_api_url_reaches_the_api_server(
    compose: dict, common_env: dict[str, str]
) -> None:
    url = urlsplit(common_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert url.hostname == "airflow-apiserver"
    assert url.hostname in compose["services"]
    assert url.port in published_container_ports(compose["services"]["airflow-apiserver"])
    assert url.path.rstrip("/") == "/execution"


def test_api_server_healthcheck_is_the_stacks_readiness(compose: dict) -> None:
    """The API server is healthy when the databases, the broker and a worker answer (plugins/stack_health.py)."""
    service = compose["services"]["airflow-apiserver"]
    test = " ".join(service["healthcheck"]["test"])
    url = urlsplit(re.search(r"https?://\S+", test).group(0))
    assert url.port in published_container_ports(service)
    prefix = re.search(r'^URL_PREFIX = "(\S+)"$', (ROOT / "plugins" / "stack_health.py").read_text(), re.MULTILINE)
    assert prefix and url.path.rstrip("/") == prefix.group(1)
    # So a worker cannot wait for the API server to be healthy: it is healthy only once a worker answers.
    assert compose["services"][WORKER]["depends_on"]["airflow-apiserver"]["condition"] == "service_started"


def test_lost_work_settings_are_the_supervisors(common_env: dict[str, str]) -> None:
    """The heartbeat timeout and the broker retries are those `make airflow EXECUTOR=celery` runs with."""
    from pipeline.cli.cluster import LOST_WORK_SETTINGS

    assert {k: common_env.get(k) for k in LOST_WORK_SETTINGS} == LOST_WORK_SETTINGS


# --- image ---------------------------------------------------------------------------------------


def test_image_installs_requirements(compose: dict) -> None:
    text = dockerfile(compose)
    assert re.search(r"^COPY\s+\S*requirements\.txt\s", text, flags=re.MULTILINE)
    assert re.search(r"pip install .*-r\s+\S*requirements\.txt", text)


def test_airflow_image_version_matches_requirements_pin(compose: dict) -> None:
    base = re.search(
        r"^FROM\s+apache/airflow:(\d+\.\d+\.\d+)\S*", dockerfile(compose), re.MULTILINE
    )
    assert base, "Dockerfile is not based on a versioned apache/airflow image"
    if not REQUIREMENTS.exists():
        pytest.skip("requirements.txt does not exist: nothing to compare the image version with")
    pins = re.findall(
        r"^apache-airflow(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)", REQUIREMENTS.read_text(), re.MULTILINE
    )
    assert len(pins) == 1, f"expected one apache-airflow== pin in requirements.txt, found {pins}"
    assert base.group(1) == pins[0]


# --- REST API (scoring) --------------------------------------------------------------------------


def test_scoring_service_runs_the_rest_api_on_its_published_port(compose: dict) -> None:
    from pipeline.cli.main import build_parser

    service = compose["services"][SCORING]
    words = command_words(service)
    assert words[:4] == ["python", "-m", "pipeline", "serve"]
    args = build_parser().parse_args(words[3:])  # the CLI knows every flag compose passes
    assert args.host == "0.0.0.0" and not args.insecure_local
    assert args.port in published_container_ports(service)
    url = urlsplit(re.search(r"https?://\S+", " ".join(service["healthcheck"]["test"])).group(0))
    assert (url.port, url.path) == (args.port, "/healthz")


def test_scoring_service_shares_the_image_and_pipeline_environment(compose: dict, common_env: dict[str, str]) -> None:
    service = compose["services"][SCORING]
    assert service.get("image") == compose[COMMON_KEY]["image"]
    assert service.get("build") == compose[COMMON_KEY]["build"]
    env = environment(service)
    for name, value in common_env.items():
        if name.startswith("PIPELINE_") or name == "PYTHONPATH":
            assert env.get(name) == value, f"scoring: {name} differs from the other services"
    assert mount_for(service, common_env[ENV_ARTIFACT_DIR])[0] == "artifacts"  # the models the DAGs write


def test_scoring_tokens_come_from_a_declared_secret(compose: dict) -> None:
    service = compose["services"][SCORING]
    path = PurePosixPath(environment(service)[ENV_API_TOKEN_FILE])
    names = [s["source"] if isinstance(s, dict) else s for s in service.get("secrets") or []]
    targets = {PurePosixPath("/run/secrets") / (s.get("target", s["source"]) if isinstance(s, dict) else s)
               for s in service.get("secrets") or []}
    assert path in targets, f"{ENV_API_TOKEN_FILE}={path} is not where a secret of the service is mounted"
    declared = compose.get("secrets") or {}
    for name in names:
        assert name in declared and "file" in declared[name], f"secret {name!r} undeclared"
    assert all(ENV_API_TOKEN_FILE not in environment(compose["services"][n]) for n in AIRFLOW_SERVICES)


def test_scoring_service_waits_for_postgres_and_init(compose: dict) -> None:
    depends_on = compose["services"][SCORING]["depends_on"]
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["airflow-init"]["condition"] == "service_completed_successfully"


# --- CeleryExecutor ------------------------------------------------------------------------------


def test_celery_broker_is_the_redis_service(compose: dict, common_env: dict[str, str]) -> None:
    broker = urlsplit(common_env["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.scheme == "redis" and broker.hostname == "redis" and broker.port == 6379
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:") and "redis-cli" in " ".join(redis["healthcheck"]["test"])
    for name in [*AIRFLOW_SERVICES, WORKER]:
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_celery_results_go_to_the_airflow_metadata_database(common_env: dict[str, str]) -> None:
    backend = common_env["AIRFLOW__CELERY__RESULT_BACKEND"]
    assert backend.startswith("db+")
    url, metadata = make_url(backend.removeprefix("db+")), make_url(common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert (url.host, url.port, url.database, url.username) == (metadata.host, metadata.port, metadata.database,
                                                                metadata.username)


def test_worker_service_runs_celery_tasks_and_scales(compose: dict, common_env: dict[str, str]) -> None:
    worker = compose["services"][WORKER]
    assert command_words(worker) == ["celery", "worker"]
    assert "container_name" not in worker and not worker.get("ports"), "a fixed name or port stops --scale"
    assert {k: v for k, v in environment(worker).items() if k != "DUMB_INIT_SETSID"} == common_env
    assert worker["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_workers_share_artifacts_only_through_the_team_store(compose: dict, common_env: dict[str, str]) -> None:
    """No artifact folder is shared with a worker: what one task writes, another reads from PostgreSQL."""
    assert common_env[ENV_ARTIFACT_STORE] == "postgres" and "postgres" in ARTIFACT_STORES
    worker = compose["services"][WORKER]
    assert all(target != PurePosixPath(common_env[ENV_ARTIFACT_DIR]) for _, target in mounts(worker))


@pytest.mark.parametrize("name", [*AIRFLOW_SERVICES, WORKER, SCORING])
def test_every_service_reads_the_master_keys_from_one_shared_volume(compose: dict, name: str) -> None:
    """Encryption at rest: one key file for every service, on a named volume they all mount, outside the artifact
    cache (a worker whose key file sat beside its own cache could not unwrap another worker's data keys)."""
    service = compose["services"][name]
    env = {**environment(compose[COMMON_KEY]), **environment(service)}
    key_file = PurePosixPath(env[ENV_KEY_FILE])
    source, target, _ = mount_for(service, str(key_file))
    assert not is_host_path(source) and source in set(compose.get("volumes") or {}), (
        f"{name}: {key_file} is on {source!r}, not a declared named volume")
    assert not key_file.is_relative_to(PurePosixPath(env[ENV_ARTIFACT_DIR])), f"{name}: key file inside the cache"
    assert str(target) in dockerfile(compose), f"{target} is not made (group-writable) in the image"
