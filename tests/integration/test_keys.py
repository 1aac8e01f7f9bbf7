"""Keys of encryption at rest: master keys (a local key file, a real SoftHSM2 token) and pipeline.data_keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from pipeline.contract.config import Pkcs11Policy, SecurityPolicy, load_config
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.registry.runs import failure_kind
from pipeline.store import db, keys


@pytest.fixture
def engine(settings: Settings) -> Iterator[sa.Engine]:
    engine = db.create_engine(settings.database_url)
    yield engine
    engine.dispose()


def local(settings: Settings) -> keys.KeyManager:
    return keys.open_key_manager(settings, SecurityPolicy())


def pkcs11(token: Pkcs11Policy) -> keys.KeyManager:
    return keys.open_key_manager(Settings.from_env({}), SecurityPolicy(key_manager="pkcs11", pkcs11=token))


def live_master_ids(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(sa.text("SELECT master_key_id FROM pipeline.data_keys WHERE wrapped IS NOT NULL")))


# --- the local key file ------------------------------------------------------------------------------------


def test_data_keys_round_trip_under_the_local_key_file(settings: Settings, engine: sa.Engine) -> None:
    km = local(settings)
    assert settings.key_file is not None and not settings.key_file.exists()  # made on first use
    assert km.source == f"local:{settings.key_file}"
    ref, key = keys.new_data_key(engine, km)
    assert ref.startswith("dk-") and len(key) == 32
    assert keys.data_key(engine, km, ref) == key
    assert settings.key_file.stat().st_mode & 0o777 == 0o600
    assert not settings.key_file.is_relative_to(settings.artifact_dir)
    assert key not in settings.key_file.read_bytes()  # the key file holds master keys, never a data key
    with engine.connect() as conn:
        wrapped = conn.scalar(sa.text("SELECT wrapped FROM pipeline.data_keys WHERE key_ref = :r"), {"r": ref})
    assert key not in bytes(wrapped)


def test_rotate_rewraps_every_data_key_and_keeps_the_plaintext(settings: Settings, engine: sa.Engine) -> None:
    km = local(settings)
    made = dict(keys.new_data_key(engine, km) for _ in range(5))
    old = km.current_key_id()
    new = km.rotate()
    assert new != old and km.current_key_id() == new
    assert keys.rewrap_all(engine, km) == 5
    assert live_master_ids(engine) == {new}
    assert {ref: keys.data_key(engine, km, ref) for ref in made} == made
    assert keys.rewrap_all(engine, km) == 0
    assert len(json.loads(settings.key_file.read_text())["keys"]) == 2  # the old key stays, for backups


def test_rotate_keys_command_rewraps_and_reports(settings: Settings, engine: sa.Engine, tmp_path: Path) -> None:
    km = local(settings)
    made = dict(keys.new_data_key(engine, km) for _ in range(3))
    destroyed, _ = keys.new_data_key(engine, km)
    keys.destroy_data_key(engine, destroyed)
    before = km.current_key_id()
    env = {**os.environ, "PIPELINE_DATABASE_URL": settings.database_url, "PIPELINE_KEY_FILE": str(settings.key_file),
           "PIPELINE_ARTIFACT_DIR": str(settings.artifact_dir), "PIPELINE_CONFIG": str(PROJECT_ROOT / "pipeline.yaml"),
           "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "rotate-keys", "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["previous_key_id"] == before and result["current_key_id"] != before
    assert result["rewrapped"] == 3 and result["source"] == f"local:{settings.key_file}"
    assert live_master_ids(engine) == {result["current_key_id"]}
    assert {ref: keys.data_key(engine, local(settings), ref) for ref in made} == made
    with pytest.raises(keys.DataKeyDestroyed):
        keys.data_key(engine, km, destroyed)


def test_destroyed_data_key_is_a_clear_error_and_its_row_stays(settings: Settings, engine: sa.Engine) -> None:
    km = local(settings)
    ref, _ = keys.new_data_key(engine, km)
    keys.destroy_data_key(engine, ref)
    with pytest.raises(keys.DataKeyDestroyed, match=rf"data key {ref} was destroyed on .*\(crypto-shredded\)"):
        keys.data_key(engine, km, ref)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT wrapped, destroyed_at FROM pipeline.data_keys WHERE key_ref = :r"),
                           {"r": ref}).one()
    assert row.wrapped is None and row.destroyed_at is not None
    with pytest.raises(sa.exc.DBAPIError, match="cannot be deleted"), engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM pipeline.data_keys"))
    with pytest.raises(sa.exc.DBAPIError, match="cannot be restored"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE pipeline.data_keys SET wrapped = '\\x00', destroyed_at = NULL"))
    with pytest.raises(keys.KeyUnavailable, match="data key dk-00 is not in pipeline.data_keys"):
        keys.data_key(engine, km, "dk-00")


def test_a_wrong_key_file_names_the_file_and_the_master_key(settings: Settings, engine: sa.Engine,
                                                             tmp_path: Path) -> None:
    ref, _ = keys.new_data_key(engine, local(settings))
    master = local(settings).current_key_id()
    other = keys.LocalKeyManager(tmp_path / "elsewhere" / "master.key")
    other.rotate()
    with pytest.raises(keys.KeyUnavailable) as raised:
        keys.data_key(engine, other, ref)
    message = str(raised.value)
    assert ref in message and master in message and str(other.path) in message, message
    assert raised.value.key_id == master and failure_kind(raised.value) == "infrastructure"


def test_a_damaged_key_file_is_refused_not_read_as_another_key(settings: Settings, engine: sa.Engine) -> None:
    km = local(settings)
    ref, _ = keys.new_data_key(engine, km)
    assert settings.key_file is not None
    content = json.loads(settings.key_file.read_text())
    only = content["current"]
    content["keys"][only] = keys.base64.b64encode(os.urandom(32)).decode()  # same id, another key
    settings.key_file.write_text(json.dumps(content))
    with pytest.raises(keys.KeyUnavailable, match=rf"key file {settings.key_file}: master key {only} does not match"):
        keys.data_key(engine, local(settings), ref)


def test_a_missing_key_file_is_an_error_while_data_keys_exist_and_none_is_made(settings: Settings,
                                                                               engine: sa.Engine) -> None:
    ref, _ = keys.new_data_key(engine, local(settings))
    assert settings.key_file is not None
    master = local(settings).current_key_id()
    settings.key_file.unlink()
    for attempt in (lambda: keys.new_data_key(engine, local(settings)),
                    lambda: keys.data_key(engine, local(settings), ref),
                    lambda: keys.rotate_keys(engine, local(settings))):
        with pytest.raises(keys.KeyUnavailable) as raised:
            attempt()
        assert str(settings.key_file) in str(raised.value) and "missing" in str(raised.value), raised.value
        assert not settings.key_file.exists(), "a new key file was made while data keys need the old one"
    with pytest.raises(keys.KeyUnavailable, match=master):
        keys.new_data_key(engine, local(settings))


def test_a_key_file_readable_by_others_is_refused(settings: Settings, engine: sa.Engine) -> None:
    km = local(settings)
    ref, _ = keys.new_data_key(engine, km)
    assert settings.key_file is not None
    settings.key_file.chmod(0o644)
    with pytest.raises(keys.KeyUnavailable, match=rf"key file {settings.key_file} has mode 0644.*chmod 600"):
        keys.data_key(engine, local(settings), ref)


def test_a_key_file_inside_the_artifact_store_is_refused(settings: Settings) -> None:
    inside = replace(settings, key_file=settings.artifact_dir / "keys" / "master.key")
    with pytest.raises(keys.KeyUnavailable, match="lies inside the artifact store"):
        keys.open_key_manager(inside, SecurityPolicy())
    assert not (settings.artifact_dir / "keys").exists()


def test_the_default_key_file_is_one_for_every_artifact_cache(tmp_path: Path) -> None:
    """Two workers with their own caches and no key setting read the same file, never one beside the cache."""
    paths = {keys.key_file_path(Settings.from_env({"PIPELINE_ARTIFACT_DIR": str(tmp_path / f"worker-{n}")}),
                                SecurityPolicy()) for n in (1, 2)}
    assert paths == {PROJECT_ROOT / ".secrets" / "master.key"}
    configured = SecurityPolicy(key_file=tmp_path / "shared" / "master.key")
    assert keys.key_file_path(Settings.from_env({}), configured) == tmp_path / "shared" / "master.key"
    assert keys.key_file_path(Settings.from_env({"PIPELINE_KEY_FILE": str(tmp_path / "env.key")}),
                              configured) == tmp_path / "env.key"  # the environment wins over the config


TWO_PROCESSES = """
import sys
from pipeline.contract.settings import Settings
from pipeline.store import db, keys
settings = Settings.from_env()
engine = db.create_engine(settings.database_url)
km = keys.open_key_manager(settings)
if sys.argv[1] == "new":
    ref, key = keys.new_data_key(engine, km)
    print(ref, key.hex(), km.source)
else:
    print(sys.argv[2], keys.data_key(engine, km, sys.argv[2]).hex(), km.source)
"""


def test_two_processes_with_their_own_caches_unwrap_each_others_keys(settings: Settings, tmp_path: Path) -> None:
    """As two Celery workers: each its artifact cache and working directory, the same settings otherwise (the
    config's security.key_file); each unwraps the data key the other made."""
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["security"] = {"key_manager": "local", "key_file": "shared-secrets/master.key"}  # beside the config
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(raw))

    def run(worker: str, *args: str) -> list[str]:
        workdir = tmp_path / worker
        workdir.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PIPELINE_KEY_FILE"}
        env.update({"PIPELINE_DATABASE_URL": settings.database_url, "PIPELINE_CONFIG": str(config),
                    "PIPELINE_ARTIFACT_DIR": str(workdir / "artifacts"), "PYTHONPATH": str(PROJECT_ROOT)})
        done = subprocess.run([sys.executable, "-c", TWO_PROCESSES, *args], env=env, cwd=workdir,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    ref1, key1, source1 = run("worker-1", "new")
    ref2, key2, source2 = run("worker-2", "new")
    assert run("worker-2", "read", ref1) == [ref1, key1, source1]
    assert run("worker-1", "read", ref2) == [ref2, key2, source2]
    assert source1 == source2 == f"local:{tmp_path / 'shared-secrets' / 'master.key'}"
    assert not list(tmp_path.glob("worker-*/**/*.key"))


def test_check_config_reports_the_key_manager_without_making_a_key(settings: Settings, engine: sa.Engine) -> None:
    config = load_config(settings.config_path)
    before = keys.describe(settings, config)
    assert before["manager"] == "local" and before["encrypt_at_rest"] is True and before["opened"] is True
    assert before["current_key_id"] is None and "no master key yet" in before["why"]
    assert settings.key_file is not None and not settings.key_file.exists()
    keys.new_data_key(engine, local(settings))
    after = keys.describe(settings, config)
    assert after["current_key_id"] == local(settings).current_key_id()
    assert after["source"] == f"local:{settings.key_file}"


# --- PKCS#11: a real SoftHSM2 token ------------------------------------------------------------------------


def test_pkcs11_round_trip_rotation_and_rewrap_on_a_softhsm_token(pkcs11_token: Pkcs11Policy,
                                                                   engine: sa.Engine) -> None:
    km = pkcs11(pkcs11_token)
    assert km.source == f"pkcs11:{pkcs11_token.token_label}@{pkcs11_token.module}"
    made = dict(keys.new_data_key(engine, km) for _ in range(3))
    first = km.current_key_id()
    assert {ref: keys.data_key(engine, km, ref) for ref in made} == made
    second = km.rotate()
    assert second != first and km.current_key_id() == second
    assert keys.rewrap_all(engine, km) == 3
    assert live_master_ids(engine) == {second}
    assert {ref: keys.data_key(engine, pkcs11(pkcs11_token), ref) for ref in made} == made


def test_pkcs11_master_keys_never_leave_the_token(pkcs11_token: Pkcs11Policy) -> None:
    from pkcs11 import Attribute

    km = pkcs11(pkcs11_token)
    km.rotate()
    with km._session() as session:  # type: ignore[attr-defined]
        stored = list(km._keys(session).values())  # type: ignore[attr-defined]
        assert stored and all(k[Attribute.SENSITIVE] and not k[Attribute.EXTRACTABLE] for k in stored)


def test_pkcs11_another_token_or_damaged_bytes_are_clear_errors(pkcs11_token: Pkcs11Policy, softhsm: Path,
                                                                 tmp_path: Path) -> None:
    km = pkcs11(pkcs11_token)
    master = km.rotate()
    key_id, wrapped = km.wrap(b"k" * 32)
    assert key_id == master
    damaged = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(keys.KeyUnavailable, match=rf"master key {master} on token .* does not unwrap"):
        km.unwrap(master, damaged)
    with pytest.raises(keys.KeyUnavailable, match=rf"master key mk-other is not on token '{pkcs11_token.token_label}'"):
        km.unwrap("mk-other", wrapped)


def test_pkcs11_token_or_module_unavailable_is_an_infrastructure_error(pkcs11_token: Pkcs11Policy,
                                                                       engine: sa.Engine) -> None:
    km = pkcs11(pkcs11_token)
    ref, _ = keys.new_data_key(engine, km)
    for down in (replace(pkcs11_token, token_label="no-such-token"),
                 replace(pkcs11_token, module=Path("/usr/lib/softhsm/no-such-module.so"))):
        with pytest.raises(keys.KeyManagerUnreachable) as raised:
            keys.data_key(engine, pkcs11(down), ref)
        message = str(raised.value)
        assert str(down.module) in message and repr(down.token_label) in message and ref in message, message
        assert failure_kind(raised.value) == "infrastructure"
    wrong_pin = replace(pkcs11_token, pin_file=pkcs11_token.pin_file.with_name("wrong-pin"))  # type: ignore[union-attr]
    assert wrong_pin.pin_file is not None
    wrong_pin.pin_file.touch(mode=0o600)
    wrong_pin.pin_file.write_text("not-the-pin")
    with pytest.raises(keys.KeyManagerUnreachable, match="PinIncorrect"):
        pkcs11(wrong_pin).current_key_id()


def test_pkcs11_pin_comes_from_a_private_file_or_the_environment(pkcs11_token: Pkcs11Policy,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert pkcs11_token.pin_file is not None
    pkcs11_token.pin_file.chmod(0o640)
    with pytest.raises(keys.KeyUnavailable, match=rf"PIN file {pkcs11_token.pin_file} has mode 0640"):
        pkcs11(pkcs11_token).rotate()
    from_env = replace(pkcs11_token, pin_file=None, pin_env="TEST_HSM_PIN")
    monkeypatch.delenv("TEST_HSM_PIN", raising=False)
    with pytest.raises(keys.KeyUnavailable, match="no PIN; set TEST_HSM_PIN"):
        pkcs11(from_env).rotate()
    monkeypatch.setenv("TEST_HSM_PIN", pkcs11_token.pin_file.read_text())
    assert pkcs11(from_env).rotate().startswith("mk-")
