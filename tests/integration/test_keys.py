"""Keys of encryption at rest: master keys (a local key file, a SoftHSM2 token) and pipeline.data_keys."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pipeline.contract.config import SecurityPolicy
from pipeline.contract.settings import Settings
from pipeline.store import db, keys


@pytest.fixture
def engine(settings: Settings) -> sa.Engine:
    engine = db.create_engine(settings.database_url)
    yield engine
    engine.dispose()


def local(settings: Settings) -> keys.KeyManager:
    return keys.open_key_manager(settings, SecurityPolicy())


def test_data_keys_round_trip_under_the_local_key_file(settings: Settings, engine: sa.Engine) -> None:
    km = local(settings)
    assert km.source == f"local:{settings.key_file}"
    ref, key = keys.new_data_key(engine, km)
    assert ref.startswith("dk-") and len(key) == 32
    assert keys.data_key(engine, km, ref) == key
    assert settings.key_file is not None and settings.key_file.stat().st_mode & 0o777 == 0o600
    assert not settings.key_file.is_relative_to(settings.artifact_dir)


def test_rotate_rewraps_every_data_key_and_keeps_the_plaintext(settings: Settings, engine: sa.Engine) -> None:
    km = local(settings)
    made = dict(keys.new_data_key(engine, km) for _ in range(5))
    old = km.current_key_id()
    new = km.rotate()
    assert new != old and km.current_key_id() == new
    assert keys.rewrap_all(engine, km) == 5
    with engine.connect() as conn:
        assert set(conn.scalars(sa.text("SELECT master_key_id FROM pipeline.data_keys")).all()) == {new}
    assert {ref: keys.data_key(engine, km, ref) for ref in made} == made
    assert keys.rewrap_all(engine, km) == 0


def test_destroyed_data_key_is_a_clear_error_and_its_row_stays(settings: Settings, engine: sa.Engine) -> None:
    km = local(settings)
    ref, _ = keys.new_data_key(engine, km)
    keys.destroy_data_key(engine, ref)
    with pytest.raises(keys.DataKeyDestroyed, match=rf"data key {ref} was destroyed on .*\(crypto-shredded\)"):
        keys.data_key(engine, km, ref)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM pipeline.data_keys WHERE key_ref = :r"), {"r": ref}) == 1
    with pytest.raises(sa.exc.DBAPIError, match="cannot be deleted"), engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM pipeline.data_keys"))
