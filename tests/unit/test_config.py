"""bgdeploy.toml: defaults, path resolution, and errors that name the key (exit 2)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict

import pytest

from bgdeploy.config import (
    SCHEMA,
    STARTER_CONFIG,
    DaemonConfig,
    HealthConfig,
    RouterConfig,
    default,
    load_config,
    parse_config,
    starter_config,
)
from bgdeploy.config_kinds import ARGV, COUNT, STR, STR_LIST, STR_TABLE, literal, one_of
from bgdeploy.errors import ConfigError
from bgdeploy.router.client import Limits
from tests.conftest import run_bgdeploy, write_config


def test_defaults_and_relative_paths(tmp_path):
    path = write_config(tmp_path)
    cfg = load_config(path)
    assert cfg.router.host == "127.0.0.1" and cfg.router.port == 47777
    assert cfg.router.admin_port == 47778
    assert cfg.state_dir == tmp_path / ".bgdeploy"
    assert cfg.registry_url == f"sqlite:///{tmp_path / '.bgdeploy' / 'registry.db'}"
    assert cfg.health.failure_threshold == 3
    assert cfg.daemon.health_path == "/healthz"


def test_relative_state_dir_version_file_and_registry_resolve_against_config_folder(tmp_path):
    raw = {
        "state_dir": "run/state",
        "registry": {"url": "sqlite:///db/reg.db"},
        "daemon": {"command": ["d"], "version_file": "VERSION"},
    }
    cfg = parse_config(raw, tmp_path / "bgdeploy.toml")
    assert cfg.state_dir == tmp_path / "run" / "state"
    assert cfg.registry_url == f"sqlite:///{tmp_path / 'db' / 'reg.db'}"
    assert cfg.daemon.version_file == tmp_path / "VERSION"


def test_health_expectations_parse_to_ranges(tmp_path):
    raw = {
        "daemon": {"command": ["d"]},
        "health": {"expect_status": [204, "300-302"], "expect_body": "re:ok$"},
    }
    cfg = parse_config(raw, tmp_path / "bgdeploy.toml")
    assert cfg.health.expect_status == ((204, 204), (300, 302))
    assert cfg.health.expect_body == "re:ok$"
    assert load_config(write_config(tmp_path)).health.expect_status == ((200, 299),)


def test_router_workers_is_a_count_or_auto(tmp_path):
    base = {"daemon": {"command": ["d"]}}
    assert parse_config(base, tmp_path / "b.toml").router.workers == 1
    for value in (3, "auto"):
        cfg = parse_config({**base, "router": {"workers": value}}, tmp_path / "b.toml")
        assert cfg.router.workers == value


def test_starter_config_is_valid(tmp_path):
    path = tmp_path / "bgdeploy.toml"
    path.write_text(STARTER_CONFIG)
    cfg = load_config(path)
    assert cfg.daemon.command == ["./mydaemon", "--port", "{port}"]  # a placeholder to replace


def test_starter_config_takes_init_choices_and_refuses_unknown_keys(tmp_path):
    path = tmp_path / "bgdeploy.toml"
    path.write_text(starter_config({"router.port": 20001, "daemon.command": ["d", "{port}"]}))
    cfg = load_config(path)
    assert cfg.router.port == 20001 and cfg.daemon.command == ["d", "{port}"]
    with pytest.raises(KeyError, match="router.prot"):
        starter_config({"router.prot": 1})


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"daemon": {"command": ["d"], "comand": ["x"]}}, "`daemon.comand`"),
        ({"daemon": {"command": ["d"]}, "routr": {}}, "`routr`"),
        ({"daemon": {"command": ["d"]}, "health": {"interval": "fast"}}, "`health.interval`"),
        (
            {"daemon": {"command": ["d"]}, "health": {"failure_threshold": 0}},
            "`health.failure_threshold`",
        ),
        ({"daemon": {"command": ["d"]}, "router": {"port": 70000}}, "`router.port`"),
        ({"daemon": {"command": "d --port 1"}}, "`daemon.command`"),
        ({"daemon": {"command": ["d"], "port_range": [9000, 8000]}}, "`daemon.port_range`"),
        ({"daemon": {"command": ["d"], "health_path": "healthz"}}, "`daemon.health_path`"),
        ({"daemon": {}}, "`daemon.command` is missing"),
        (
            {"daemon": {"command": ["d"]}, "health": {"stable_checks": True}},
            "`health.stable_checks`",
        ),
        (
            {"daemon": {"command": ["d"]}, "health": {"expect_status": "2xx"}},
            "`health.expect_status`",
        ),
        (
            {"daemon": {"command": ["d"]}, "health": {"expect_status": [200, 700]}},
            "`health.expect_status`",
        ),
        (
            {"daemon": {"command": ["d"]}, "health": {"expect_body": "re:(ok"}},
            "`health.expect_body`",
        ),
        ({"daemon": {"command": ["d"]}, "health": {"method": "get"}}, "`health.method`"),
        ({"daemon": {"command": ["d"]}, "health": {"headers": {"X Bad": "1"}}}, "`health.headers`"),
        ({"daemon": {"command": ["d"]}, "deploy": {"auto_promote": "no"}}, "`deploy.auto_promote`"),
        ({"daemon": {"command": ["d"]}, "hooks": {"pre_switch": "./smoke"}}, "`hooks.pre_switch`"),
        ({"daemon": {"command": ["d"]}, "router": {"max_body": 0}}, "`router.max_body`"),
        ({"daemon": {"command": ["d"]}, "router": {"workers": 0}}, "`router.workers`"),
        ({"daemon": {"command": ["d"]}, "router": {"workers": "two"}}, "`router.workers`"),
        ({"daemon": {"command": ["d"]}, "router": {"workers": 1.5}}, "`router.workers`"),
    ],
)
def test_bad_config_names_the_key(tmp_path, raw, needle):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, tmp_path / "bgdeploy.toml")
    assert needle in info.value.message
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[daemon]\ncommand = ["d"]\nbogus = 1\n', "Unknown key `daemon.bogus`"),
        ('[daemon]\ncommand = ["d"]\n[health]\ninterval = "soon"\n', "`health.interval` in"),
        ("[router]\nport = 1\n", "`daemon.command` is missing"),
        ("[daemon\ncommand = 1\n", "is not valid TOML"),
    ],
)
def test_bad_config_exits_2_with_one_sentence_and_no_traceback(tmp_path, toml, needle):
    (tmp_path / "bgdeploy.toml").write_text(toml)
    proc = run_bgdeploy("status", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: ") and needle in proc.stderr
    assert "Hint:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".bgdeploy").exists()  # nothing created from a bad config


def test_missing_config_says_how_to_make_one(tmp_path):
    proc = run_bgdeploy("status", cwd=tmp_path)
    assert proc.returncode == 2
    assert "No config file at" in proc.stderr and "bgdeploy init" in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "bgdeploy.toml").write_text("[daemon]\nbogus = 1\n")
    proc = run_bgdeploy("--debug", "status", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_config_env_variable_is_used(tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    write_config(folder)
    proc = run_bgdeploy(
        "status", "--json", cwd=tmp_path, env={"BGDEPLOY_CONFIG": str(folder / "bgdeploy.toml")}
    )
    assert proc.returncode == 0, proc.stderr
    assert (folder / ".bgdeploy" / "registry.db").exists()


def test_readme_and_docs_config_tables_are_the_schema():
    from tools.config_table import BLOCKS, readme_block

    for path, block in BLOCKS:
        assert readme_block(path.read_text()) == block(), (
            f"{path.name}'s configuration table differs from bgdeploy.config.SCHEMA: "
            "run `python tools/config_table.py --write`"
        )
    for section, keys in SCHEMA.items():  # the README's list names every key
        for key in keys:
            assert f"`{key}`" in readme_block(BLOCKS[0][0].read_text()), (section, key)


def test_starter_config_shows_every_key_and_loads_to_the_defaults(tmp_path):
    text = starter_config()
    for section, keys in SCHEMA.items():
        for key in keys:
            assert re.search(rf"^(# )?{key} = ", text, re.M), f"{section}.{key} not in starter"
    path = tmp_path / "bgdeploy.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.router == RouterConfig() and cfg.health == HealthConfig()
    assert cfg.state_dir == tmp_path / ".bgdeploy"
    # init's example: a daemon to replace and a VERSION file; the rest are the defaults
    assert cfg.daemon == DaemonConfig(
        command=SCHEMA["daemon"]["command"].starter, version_file=tmp_path / "VERSION"
    )


def test_section_defaults_and_router_limits_come_from_the_schema():
    for section, cls in (("router", RouterConfig), ("health", HealthConfig)):
        assert asdict(cls()) == {k: default(section, k) for k in SCHEMA[section]}
    daemon = DaemonConfig(command=["d"])
    assert daemon.port_range == (17800, 17999) and daemon.drain_timeout == 30.0
    limits = Limits()
    assert limits.header_timeout == RouterConfig().header_timeout
    assert limits.idle_timeout == RouterConfig().idle_timeout


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (one_of(literal("auto"), COUNT), ["auto", 1, 4], ["Auto", 0, 2.5, True]),
        (STR_LIST, [[], ["a", "b"]], ["a", [1]]),
        (STR_TABLE, [{}, {"X-A": "1"}], [{"X-A": 1}, ["X-A"]]),
        (one_of(STR, ARGV), ["GET", ["a", "b"]], ["", [], [1]]),
    ],
)
def test_schema_kinds_for_upcoming_keys(kind, good, bad):
    assert all(kind.accepts(v) for v in good)
    assert not any(kind.accepts(v) for v in bad)
    assert " or " in kind.what or kind.what.startswith("a ")


def test_router_workers_auto_is_one_per_cpu(tmp_path):
    from bgdeploy.router.workers import worker_count

    base = {"daemon": {"command": ["d"]}}
    auto = parse_config({**base, "router": {"workers": "auto"}}, tmp_path / "b.toml")
    three = parse_config({**base, "router": {"workers": 3}}, tmp_path / "b.toml")
    assert worker_count(auto) == os.cpu_count()
    assert worker_count(three) == 3
