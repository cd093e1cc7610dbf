"""The registry file: migrations agree with the models; safe defaults; clear errors."""

from __future__ import annotations

import importlib.util
import json
import socket
import sqlite3
import stat

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pgserver import PASSWORD
from sqlalchemy import create_engine, text

from bgdeploy.errors import RegistryError
from bgdeploy.registry import migrate
from bgdeploy.registry.models import Base
from bgdeploy.registry.store import Registry
from tests.conftest import REGISTRIES, STATUS_KEYS, head_revision, run_bgdeploy, write_config


@pytest.mark.parametrize("db", REGISTRIES)
def test_empty_database_upgrades_to_head_and_models_agree(tmp_path, request, db):
    if db == "sqlite":
        url = f"sqlite:///{tmp_path / 'r.db'}"
    else:
        url = request.getfixturevalue("pg_server").new_database(migrated=False)
    engine = create_engine(url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        # The guarantees live in the partial unique indexes: both are partial here too.
        partial = conn.execute(
            text(
                "SELECT name, sql FROM sqlite_master WHERE name LIKE 'uq_%'"
                if db == "sqlite"
                else "SELECT indexname, indexdef FROM pg_indexes WHERE indexname LIKE 'uq_%'"
            )
        ).all()
    engine.dispose()
    assert diff == []
    assert sorted(name for name, sql in partial if "WHERE" in sql.upper()) == [
        "uq_boots_one_active_per_service",
        "uq_events_once_per_generation",
    ]


def test_registry_file_0600_folder_0700_and_wal(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'state' / 'registry.db'}")
    reg.deployment("default")
    reg.close()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "registry.db").stat().st_mode) == 0o600
    conn = sqlite3.connect(tmp_path / "state" / "registry.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_registry_from_a_newer_schema_is_refused_untouched(tmp_path):
    db = tmp_path / "registry.db"
    Registry(f"sqlite:///{db}").close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()
    with pytest.raises(RegistryError, match="revision 9999"):
        Registry(f"sqlite:///{db}")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "9999"
    conn.close()


def test_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    write_config(tmp_path)
    state = tmp_path / ".bgdeploy"
    state.mkdir()
    (state / "registry.db").write_bytes(b"this is not sqlite" * 100)
    proc = run_bgdeploy("status", cwd=tmp_path)
    assert proc.returncode == 1
    assert "not a usable SQLite database" in proc.stderr and "Traceback" not in proc.stderr
    assert (state / "registry.db").read_bytes() == b"this is not sqlite" * 100


def test_init_in_empty_folder_then_status_json(tmp_path):
    proc = run_bgdeploy("init", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Wrote config" in proc.stdout
    assert (tmp_path / "bgdeploy.toml").read_text().startswith("# bgdeploy.toml")
    engine = create_engine(f"sqlite:///{tmp_path / '.bgdeploy' / 'registry.db'}")
    assert migrate.current_revision(engine) == head_revision()
    proc = run_bgdeploy("status", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["generation"] == 0 and st["state"] == "idle"
    assert set(st) == STATUS_KEYS
    assert st["active"] is None and st["router"] is None and st["lock"] is None
    assert st["quarantined_versions"] == []
    again = run_bgdeploy("init", cwd=tmp_path)
    assert again.returncode == 0 and "Kept existing config" in again.stdout


def test_status_table_and_history(tmp_path, cli):
    write_config(tmp_path)
    cfg = str(tmp_path / "bgdeploy.toml")
    reg = Registry(f"sqlite:///{tmp_path / '.bgdeploy' / 'registry.db'}")
    row = reg.deployment("default")
    reg.transition("default", "begin", generation=row.generation, version="1.0")
    reg.close()
    res = cli("--config", cfg, "status")
    assert res.code == 0
    assert "generation 1" in res.out and "starting" in res.out and "blue-1" in res.out
    res = cli("--config", cfg, "history")
    assert res.code == 0 and "begin" in res.out and "idle -> starting" in res.out
    res = cli("--config", cfg, "history", "--json", "--limit", "5")
    events = json.loads(res.out)
    assert events[0]["event"] == "begin" and events[0]["to_state"] == "starting"
    assert {"generation", "event", "from_state", "to_state", "reason", "ts"} <= set(events[0])


@pytest.mark.parametrize("fault", ["wrong password", "nothing listening"])
def test_unreachable_postgres_is_one_sentence_without_the_password(tmp_path, pg_server, fault):
    if fault == "wrong password":
        url = pg_server.url(password="not-the-password")
    else:
        with socket.socket() as s:  # a free port: nothing answers there
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"postgresql+psycopg://postgres:not-the-password@127.0.0.1:{port}/postgres"
    write_config(tmp_path, f'\n[registry]\nurl = "{url}"\n')
    proc = run_bgdeploy("status", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith(
        "Error: Cannot reach the registry at postgresql+psycopg://postgres:***@"
    )
    assert lines[1].startswith("Hint: ") and "Traceback" not in proc.stderr
    assert "not-the-password" not in proc.stderr + proc.stdout


def test_postgres_registry_from_a_newer_schema_is_refused_untouched(pg_server):
    url = pg_server.clean_database()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    try:
        with pytest.raises(RegistryError, match="revision 9999") as info:
            Registry(url)
        assert "postgres:***@" in info.value.message and PASSWORD not in info.value.message
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "9999"
    finally:
        with engine.begin() as conn:  # the shared database goes back for the next tests
            conn.execute(
                text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()}
            )
        engine.dispose()


def test_postgres_url_without_its_driver_says_how_to_install_it(tmp_path):
    if importlib.util.find_spec("pg8000") is not None:
        pytest.skip("pg8000 is installed here; the test needs a driver that is not")
    write_config(tmp_path, '\n[registry]\nurl = "postgresql+pg8000://u:hunter2@127.0.0.1:1/x"\n')
    proc = run_bgdeploy("status", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: The registry at postgresql+pg8000://u:***@")
    assert "bgdeploy[postgres]" in proc.stderr
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr


def test_change_hint_moves_with_another_writers_commit_and_only_then(tmp_path):
    """The control loop's exit watcher rereads the active boot only when this hint moves
    (a read every 0.25 s was most of an idle router's CPU): a switch committed by another
    process must move it, or the watcher keeps watching a boot that is no longer active."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    reader, writer = Registry(url), Registry(url)
    try:
        writer.deployment("svc")
        before = reader.change_hint()
        assert before is not None
        for _ in range(3):  # reads change nothing
            reader.deployment("svc")
            assert reader.change_hint() == before
        writer.create_boot("svc", 1, "1.0")
        after = reader.change_hint()
        assert after != before
        writer.create_boot("svc", 2, "2.0")
        assert reader.change_hint() != after
    finally:
        reader.close()
        writer.close()
