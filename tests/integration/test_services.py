"""Many services in one registry: the service name, `status --all`, `history --service`,
and `/api/status?all=1`."""

from __future__ import annotations

import json

import httpx
import pytest

from bgdeploy.config import load_config
from bgdeploy.registry.store import Registry
from tests.conftest import write_config


def config_in(folder, url: str, service: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    top = f'service = "{service}"\n' if service else ""
    path = write_config(folder, f'\n[registry]\nurl = "{url}"\n')
    path.write_text(top + path.read_text())
    return path


def test_service_name_defaults_and_checks(tmp_path, cli):
    sqlite = f"sqlite:///{tmp_path / 'r.db'}"
    pg = "postgresql+psycopg://u:p@127.0.0.1:1/db"
    # A SQLite registry keeps "default", which every registry before services used.
    assert load_config(config_in(tmp_path / "web-1", sqlite)).service == "default"
    # A PostgreSQL one is shared: each config folder is its own service.
    assert load_config(config_in(tmp_path / "web-2", pg)).service == "web-2"
    assert load_config(config_in(tmp_path / "odd name!", pg)).service == "odd-name"
    assert load_config(config_in(tmp_path / "x", pg, "api")).service == "api"
    bad = config_in(tmp_path / "bad", sqlite, "a b")
    res = cli("--config", bad, "status")
    assert res.code == 2 and "`service`" in res.err and "Traceback" not in res.err


def test_status_all_lists_every_service_and_history_filters(tmp_path, cli, registry_url):
    a = config_in(tmp_path / "a", registry_url, "alpha")
    config_in(tmp_path / "b", registry_url, "beta")
    reg = Registry(registry_url)
    reg.transition("alpha", "begin", generation=0, state="idle", version="1.0", reason="for alpha")
    for ev in ("begin", "abort", "begin"):
        row = reg.deployment("beta")
        reg.transition("beta", ev, generation=row.generation, version="2.0", reason="for beta")
    reg.close()

    res = cli("--config", a, "status", "--all", "--json")
    assert res.code == 0, res.err
    got = {s["service"]: (s["generation"], s["state"]) for s in json.loads(res.out)}
    assert got == {"alpha": (1, "starting"), "beta": (2, "starting")}
    table = cli("--config", a, "status", "--all")
    assert table.code == 0 and "alpha" in table.out and "beta" in table.out
    assert "alpha-blue-1" in table.out and "beta-green-2" in table.out

    beta = json.loads(cli("--config", a, "history", "--service", "beta", "--json").out)
    assert [e["event"] for e in beta] == ["begin", "abort", "begin"]
    assert {e["reason"] for e in beta} == {"for beta"}
    own = json.loads(cli("--config", a, "history", "--json").out)
    assert [e["reason"] for e in own] == ["for alpha"]


@pytest.mark.slow
def test_admin_api_status_all(stack):
    app, router = stack()
    reg = app.registry
    reg.transition("other", "begin", generation=0, state="idle", version="9.0")
    one = httpx.get(f"{router.admin_url}/api/status", timeout=5).json()
    assert one["service"] == app.service
    every = httpx.get(f"{router.admin_url}/api/status?all=1", timeout=5).json()
    assert [s["service"] for s in every] == sorted([app.service, "other"])
    assert every[[s["service"] for s in every].index("other")]["state"] == "starting"
