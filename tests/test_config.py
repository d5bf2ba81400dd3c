"""Configuration: the example documents every key; errors name their key path and exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from agent.config import Config, LdifConfig, load_config, parse_config, resolve_password
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"


def _model_fields(model: type[BaseModel], seen=None) -> set[str]:
    seen = seen if seen is not None else set()
    names: set[str] = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        names.add(field.alias or name)
        for arg in _flatten(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                seen.add(arg)
                names |= _model_fields(arg, seen)
    return names


def _flatten(annotation):
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    out = []
    for a in args:
        out.extend(_flatten(a))
    return out


def test_example_config_is_valid_and_loads(monkeypatch):
    config = parse_config(yaml.safe_load(EXAMPLE.read_text()), base_dir=ROOT)
    assert config.directories[0].name == "corp"
    assert config.directories[0].tls.verify is True
    assert [r.name for r in config.requirements] == ["staff-windows", "kiosks"]


def test_example_config_documents_every_key():
    text = EXAMPLE.read_text()
    missing = sorted(name for name in _model_fields(Config) if f"{name}:" not in text)
    assert missing == [], f"config.example.yaml does not mention: {missing}"


def _write(tmp_path, data) -> Path:
    (tmp_path / "inventory.yaml").write_text("purchases: []\n")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _good(**overrides):
    data = {
        "database": {"url": "sqlite:///state.db"},
        "directories": [{"name": "corp", "type": "active_directory", "url": "ldaps://dc1.corp.example.com",
                         "base_dn": "DC=corp,DC=example,DC=com", "bind_dn": "svc@corp",
                         "password_env": "TEST_CAL_PASSWORD"}],
        "inventory": "inventory.yaml",
        "requirements": [{"name": "r", "product": "windows-server", "version": "2022", "cal_type": "user",
                          "users": {"group": "Domain Users"}}],
    }
    data.update(overrides)
    return data


BAD = [
    ({"directories": [{"name": "corp", "type": "active_directory", "url": "http://dc1", "base_dn": "DC=x",
                       "bind_dn": "a", "password_env": "X"}]}, "directories[0].url: must start with ldaps://"),
    ({"directories": [{"name": "corp", "type": "novell", "path": "x"}]}, "directories[0].type: unknown type 'novell'"),
    ({"directories": []}, "directories: List should have at least 1 item"),
    ({"inventory": None}, "inventory:"),
    ({"requirements": [{"name": "r", "product": "windows-server", "version": "latest", "cal_type": "user",
                        "users": {}}]}, "requirements[0].version: version must be a product year"),
    ({"requirements": [{"name": "r", "product": "windows-server", "version": 2022, "cal_type": "seat",
                        "users": {}}]}, "requirements[0].cal_type:"),
    ({"requirements": [{"name": "r", "product": "windows-server", "version": 2022, "cal_type": "device",
                        "users": {}}]}, "requirements[0]: a device CAL requirement selects principals with `computers:`"),
    ({"requirements": [{"name": "r", "product": "windows-server", "version": 2022, "cal_type": "user",
                        "users": {"grup": "x"}}]}, "requirements[0].users.grup: unknown key"),
    ({"database": {"url": "mysql://x/y"}}, "database.url: Value error, unsupported database 'mysql'"),
    ({"colour": "blue"}, "colour: unknown key"),
    ({"directories": [{"name": "corp", "type": "active_directory", "url": "ldaps://dc1", "base_dn": "DC=x",
                       "bind_dn": "a"}]}, "directories[0]: give exactly one of password_env"),
    ({"directories": [{"name": "corp", "type": "active_directory", "url": "ldaps://dc1", "base_dn": "DC=x",
                       "bind_dn": "a", "password_env": "X", "inactive_after_days": -3}]},
     "directories[0].inactive_after_days: Input should be greater than or equal to 1"),
    # Wrong types, unknown keys, bad values: each names its key path (issue 7: at least 30 cases).
    ({"directories": "corp"}, "directories:"),
    ({"directories": [{"name": "corp", "type": "ldif"}]}, "directories[0].path:"),
    ({"directories": [{"name": "", "type": "ldif", "path": "x"}]}, "directories[0].name:"),
    ({"directories": [{"name": "corp", "type": "ldif", "path": "x", "page_size": 10}]},
     "directories[0].page_size: unknown key"),
    ({"directories": [{"name": "corp", "type": "active_directory", "url": "ldaps://dc1", "base_dn": "DC=x",
                       "bind_dn": "a", "password_env": "X", "tls": {"verify": "maybe"}}]}, "directories[0].tls.verify:"),
    ({"directories": [{"name": "corp", "type": "active_directory", "url": "ldaps://dc1", "base_dn": "DC=x",
                       "bind_dn": "a", "password_env": "X", "page_size": 0}]}, "directories[0].page_size:"),
    ({"directories": [{"name": "corp", "type": "active_directory", "url": "ldaps://dc1", "base_dn": "DC=x",
                       "bind_dn": "a", "password_env": "X", "timeout": "soon"}]}, "directories[0].timeout:"),
    ({"directories": [{"name": "corp", "type": "active_directory", "url": "ldaps://dc1", "base_dn": "DC=x",
                       "bind_dn": "a", "password_env": "X", "password_file": "/x"}]},
     "directories[0]: give exactly one of password_env"),
    ({"directories": [{"name": "corp", "type": "active_directory", "url": "ldaps://dc1", "base_dn": "DC=x",
                       "bind_dn": "a", "password_env": "X", "max_departures": -1}]}, "directories[0].max_departures:"),
    ({"directories": [{"name": "a", "type": "ldif", "path": "x"}, {"name": "a", "type": "ldif", "path": "y"}]},
     "directories: names must be unique"),
    ({"requirements": "everyone"}, "requirements:"),
    ({"requirements": [{"product": "windows-server", "version": 2022, "cal_type": "user", "users": {}}]},
     "requirements[0].name:"),
    ({"requirements": [{"name": "r", "product": "windows-server", "version": 2022, "cal_type": "user",
                        "users": {"exclude": "svc"}}]}, "requirements[0].users.exclude:"),
    ({"requirements": [{"name": "r", "product": "windows-server", "version": 2022, "cal_type": "user",
                        "users": {}, "directory": "nowhere"}]}, "requirements[0].directory: no directory named"),
    ({"requirements": [{"name": "r", "product": "windows-server", "version": 2022, "cal_type": "user",
                        "users": {}}, {"name": "r", "product": "rds", "version": 2022, "cal_type": "user",
                                       "users": {}}]}, "requirements: names must be unique"),
    ({"database": "sqlite"}, "database:"),
    ({"database": {"url": 5}}, "database.url:"),
    ({"reports": {"keep_days": 0}}, "reports.keep_days:"),
    ({"reports": {"directory": ["a"]}}, "reports.directory:"),
    ({"log": {"level": "loud"}}, "log.level:"),
    ({"log": {"format": "xml"}}, "log.format:"),
    ({"schedule": {"interval": "often"}}, "schedule.interval:"),
    ({"schedule": {"cron": "0 25 * * *"}}, "schedule.cron:"),
    ({"schedule": {"interval": "1h", "cron": "0 * * * *"}}, "schedule: Value error, give `interval` or `cron`"),
    ({"metrics": {"listen": "nowhere"}}, "metrics.listen:"),
    ({"exempt": {"admins": {"windows-server": ["a", "b", "c"]}}}, "exempt.admins.windows-server:"),
    ({"exempt": {"service_accounts": "svc"}}, "exempt.service_accounts:"),
    ({"rules": {"expiry_warning_days": []}}, "rules.expiry_warning_days:"),
    ({"rules": {"reassignment_min_days": -1}}, "rules.reassignment_min_days:"),
    ({"policies": {"reclaim": "sometimes"}}, "policies.reclaim:"),
    ({"policies": {"reclaim_after_days": -2}}, "policies.reclaim_after_days:"),
    ({"directories": [{"name": "corp", "type": "active_directory", "url": "ldaps://dc1", "base_dn": "DC=x",
                       "bind_dn": "a", "password_env": "X", "full_sync_every": "daily"}]},
     "directories[0].full_sync_every:"),
    ({"directories": [{"name": "corp", "type": "active_directory", "url": "ldaps://dc1", "urls": ["ldaps://dc2"],
                       "base_dn": "DC=x", "bind_dn": "a", "password_env": "X"}]},
     "directories[0]: Value error, give `url` or `urls` (failover DCs), not both"),
    ({"directories": [{"name": "corp", "type": "active_directory", "urls": ["ldaps://dc1", "ldap://dc2"],
                       "base_dn": "DC=x", "bind_dn": "a", "password_env": "X"}]},
     "directories[0].urls: Value error, all urls must use the same scheme"),
]


def test_urls_is_a_failover_list_whose_first_is_the_url(tmp_path):
    data = _good()
    directory = data["directories"][0]
    del directory["url"]
    directory["urls"] = ["ldaps://dc1.corp.example.com", "ldaps://dc2.corp.example.com:636"]
    config = load_config(_write(tmp_path, data), check_files=False)
    assert config.directories[0].url == "ldaps://dc1.corp.example.com"
    assert config.directories[0].urls == directory["urls"]
    assert (config.directories[0].incremental, config.directories[0].full_sync_every) == (True, "24h")


def test_there_are_at_least_thirty_bad_configurations():
    assert len(BAD) >= 30


@pytest.mark.parametrize("override,message", BAD)
def test_bad_config_names_the_key(tmp_path, override, message):
    path = _write(tmp_path, _good(**override))
    with pytest.raises(ConfigError) as info:
        load_config(path, check_files=False)
    assert any(p.startswith(message.split(": ", 1)[0]) for p in info.value.problems), info.value.problems
    assert message.replace("Value error, ", "") in str(info.value) or message in str(info.value)


def test_all_problems_are_reported_at_once(tmp_path):
    data = _good(colour="blue", database={"url": "mysql://x/y"})
    data["directories"][0]["url"] = "http://dc1"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data), check_files=False)
    paths = sorted(p.split(":", 1)[0] for p in info.value.problems)
    assert paths == ["colour", "database.url", "directories[0].url"]


def test_cli_exits_2_with_key_path_and_writes_nothing(tmp_path):
    data = _good()
    data["directories"][0]["url"] = "ftp://dc1"
    path = _write(tmp_path, data)
    proc = subprocess.run([sys.executable, "-m", "agent", "sync", "--config", str(path)], capture_output=True,
                          text=True, env={**os.environ, "TEST_CAL_PASSWORD": "x"})
    assert proc.returncode == 2
    assert "directories[0].url: must start with ldaps:// or ldap://" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state.db").exists()


def test_cli_config_from_environment_variable(tmp_path):
    path = _write(tmp_path, "directories: 3\n")
    proc = subprocess.run([sys.executable, "-m", "agent", "check-config"], capture_output=True, text=True,
                          env={**os.environ, "CAL_AGENT_CONFIG": str(path)})
    assert proc.returncode == 2 and str(path) in proc.stderr and "directories:" in proc.stderr


def test_invalid_yaml_gives_line(tmp_path):
    path = _write(tmp_path, "directories:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match="line 3"):
        load_config(path)


def test_missing_secret_and_missing_files_are_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_CAL_PASSWORD", raising=False)
    data = _good(inventory="nope.yaml")
    data["directories"][0]["tls"] = {"ca_file": "ca.pem"}
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    text = str(info.value)
    assert "inventory: file" in text and "directories[0].tls.ca_file: file" in text
    assert "directories[0].password_env: environment variable TEST_CAL_PASSWORD is not set" in text


def test_password_file_readable_by_others_is_refused(tmp_path):
    secret = tmp_path / "bind-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    data = _good()
    data["directories"][0].pop("password_env")
    data["directories"][0]["password_file"] = "bind-password"
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match="readable by group or others .*chmod 600"):
        load_config(path)
    secret.chmod(0o600)
    config = load_config(path)
    assert resolve_password(config.directories[0]).get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config) and "s3cret" not in str(resolve_password(config.directories[0]))


def test_password_from_systemd_credentials(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "bind-password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    data = _good()
    data["directories"][0].pop("password_env")
    data["directories"][0]["password_credential"] = "bind-password"
    config = load_config(_write(tmp_path, data))
    assert resolve_password(config.directories[0]).get_secret_value() == "from-systemd"


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "export.ldif").write_text("")
    data = _good(directories=[{"name": "lab", "type": "ldif", "path": "export.ldif",
                               "as_of": "2026-11-01T00:00:00"}])
    config = load_config(_write(tmp_path, data))
    ldif = config.directories[0]
    assert isinstance(ldif, LdifConfig) and ldif.path == tmp_path / "export.ldif"
    assert ldif.as_of.tzinfo is not None
    assert config.database.url == f"sqlite:///{tmp_path / 'state.db'}"
    assert config.inventory == tmp_path / "inventory.yaml"


def test_configuration_reference_documents_every_key():
    """docs/configuration.md has a table row for every key the schema accepts, and no stale ones."""
    from agent.config import key_paths

    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_\[\]\.]+)` \|", text, flags=re.MULTILINE))
    assert documented == set(key_paths())
