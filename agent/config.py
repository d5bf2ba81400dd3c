"""Configuration: one pydantic schema is the truth.

``load_config`` reads YAML, validates it against the schema and reports *every* problem at once,
each named by its key path (``directories[0].url: ...``), as a ``ConfigError`` (exit code 2).
Relative paths are resolved against the folder of the configuration file, so a config and its
inventory can travel together.  Secrets are never in the file: only the name of an environment
variable, a file (refused when group/other can read it) or a systemd credential.
"""

from __future__ import annotations

import os
import re
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError
from agent.service import paths as _paths

CONFIG_ENV = "CAL_AGENT_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/cal-agent/config.yaml")
DEFAULT_DATABASE_URL = "sqlite:////var/lib/cal-agent/state.db"
DEFAULT_REPORTS_DIR = "/var/lib/cal-agent/reports"
if os.name == "nt":  # Windows: all under %ProgramData%\cal-agent (agent/service/paths.py, docs/windows.md)
    DEFAULT_CONFIG_PATH = _paths.windows_config_path()
    DEFAULT_DATABASE_URL = _paths.windows_database_url()
    DEFAULT_REPORTS_DIR = str(_paths.windows_reports_dir())

VERSION_RE = re.compile(r"^(\d{4})(?: ?R2)?$", re.IGNORECASE)


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Resolve a relative path against the configuration file's folder."""
    base = (info.context or {}).get("base_dir")
    value = Path(os.path.expanduser(str(value)))
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


def _version_text(value: Any) -> Any:
    # Admins write `version: 2022` unquoted; YAML makes that an int.  Accept it as the string.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_version(value: str) -> str:
    if not VERSION_RE.match(value.strip()):
        raise ValueError(f"version must be a product year such as \"2022\" or \"2012 R2\", got {value!r}")
    return value.strip()


ProductVersion = Annotated[str, Field(min_length=1), AfterValidator(_check_version)]


class Strict(BaseModel):
    """Base: unknown keys are errors (a typo must never silently disable a setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(Strict):
    url: str = DEFAULT_DATABASE_URL

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL: {value!r} (e.g. sqlite:////var/lib/cal-agent/state.db)") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {url.get_backend_name()!r}: use sqlite or postgresql")
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            path = Path(url.database)
            base = (info.context or {}).get("base_dir")
            if not path.is_absolute() and base is not None:
                url = url.set(database=str(Path(base) / path))
                return url.render_as_string(hide_password=False)
        return value


_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> int:
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"expected a duration such as 30m, 1h or 1d, got {value!r}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _check_duration(value: Any) -> Any:
    if value is not None:
        duration_seconds(value)
    return value


class TlsConfig(Strict):
    ca_file: ConfigPath | None = None  # PEM bundle of the CA that signed the DCs' certificates
    verify: bool = True  # certificate verification; only for labs, logged loudly when off


class SecretSource(Strict):
    """Where a password comes from.  Exactly one source; the value itself never sits in the config."""

    password_env: str | None = None
    password_file: ConfigPath | None = None
    password_credential: str | None = None  # a systemd credential name, read from $CREDENTIALS_DIRECTORY


def _exactly_one(model: BaseModel, fields: tuple[str, ...], note: str = "") -> None:
    """A secret must come from exactly one source: the error names them and those given."""
    given = [name for name in fields if getattr(model, name)]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(fields)}{note}"
                         + (f" (got {', '.join(given)})" if given else ""))


class RequiredSecret(SecretSource):
    """A password that must come from exactly one source (directory binds)."""

    @model_validator(mode="after")
    def _one_secret(self) -> "RequiredSecret":
        _exactly_one(self, ("password_env", "password_file", "password_credential"))
        return self


class ActiveDirectoryConfig(RequiredSecret):
    type: Literal["active_directory"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
    url: str  # with `urls`: the first of them
    # Failover: DCs tried in this order (ldap3 ServerPool, FIRST); another DC means a full sync.
    urls: Annotated[list[str], Field(min_length=1)] | None = None
    base_dn: Annotated[str, Field(min_length=3)]
    bind_dn: Annotated[str, Field(min_length=1)]
    tls: TlsConfig = TlsConfig()
    inactive_after_days: Annotated[int, Field(ge=1, le=36500)] = 90
    # Accidental-departure guard: a sync that would turn more active principals departed is held.
    # None: 10 % of the active users and computers or 500, whichever is lower (at least 10).
    max_departures: Annotated[int, Field(ge=0)] | None = None
    page_size: Annotated[int, Field(ge=1, le=1000)] = 1000  # AD's MaxPageSize is 1000
    range_size: Annotated[int, Field(ge=10, le=5000)] = 1000  # values per ranged `member` read
    timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0  # seconds, connect and each receive
    read_deleted: bool = True  # read tombstones (Show Deleted) so deletions are known as such
    # Incremental sync (uSNChanged > the stored watermark of the same DC), with a full read at least
    # every `full_sync_every` and whenever the watermark cannot be trusted (docs/directory.md).
    incremental: bool = True
    full_sync_every: Annotated[str, AfterValidator(_check_duration)] = "24h"

    @field_validator("url")
    @classmethod
    def _ldap_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ldaps", "ldap"):
            raise ValueError(f"must start with ldaps:// or ldap:// (StartTLS), got {value!r}")
        if not parts.hostname:
            raise ValueError(f"no host name in {value!r}")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"bad port in {value!r}") from None
        if parts.path not in ("", "/"):
            raise ValueError(f"put the search base in base_dn, not in the URL: {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _url_or_urls(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("urls") is not None:
            if data.get("url") is not None:
                raise ValueError("give `url` or `urls` (failover DCs), not both")
            urls = data["urls"]
            if isinstance(urls, list) and urls and isinstance(urls[0], str):
                data = {**data, "url": urls[0]}
        return data

    @field_validator("urls")
    @classmethod
    def _ldap_urls(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        for url in value:
            cls._ldap_url(url)
        schemes = {urlsplit(url).scheme for url in value}
        if len(schemes) > 1:
            raise ValueError("all urls must use the same scheme (all ldaps://, or all ldap:// with StartTLS)")
        return value


class LdifConfig(Strict):
    type: Literal["ldif"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
    path: ConfigPath
    base_dn: str | None = None  # only entries under it are read; default: everything in the file
    as_of: datetime | None = None  # when the export was taken: inactivity and expiry are judged then
    inactive_after_days: Annotated[int, Field(ge=1, le=36500)] = 90
    # Accidental-departure guard: a sync that would turn more active principals departed is held.
    # None: 10 % of the active users and computers or 500, whichever is lower (at least 10).
    max_departures: Annotated[int, Field(ge=0)] | None = None

    @field_validator("as_of")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class LdapAttributes(Strict):
    """What a generic LDAP directory (OpenLDAP, 389-DS, FreeIPA) is searched for and read from."""

    identity: Annotated[str, Field(min_length=1)] = "entryUUID"  # 389-DS/FreeIPA also: nsUniqueId
    user_filter: Annotated[str, Field(min_length=3)] = "(|(objectClass=inetOrgPerson)(objectClass=posixAccount))"
    group_filter: Annotated[str, Field(min_length=3)] = (
        "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))")
    computer_filter: Annotated[str, Field(min_length=3)] | None = "(objectClass=device)"  # null: no computers
    user_name: Annotated[str, Field(min_length=1)] = "uid"
    group_name: Annotated[str, Field(min_length=1)] = "cn"
    computer_name: Annotated[str, Field(min_length=1)] = "cn"
    display_name: Annotated[str, Field(min_length=1)] = "displayName"  # falls back to cn
    mail: Annotated[str, Field(min_length=1)] = "mail"

    @field_validator("user_filter", "group_filter", "computer_filter")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is None:
            return value
        value = value.strip()
        if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(")"):
            raise ValueError(f"not an LDAP filter in parentheses: {value!r}")
        return value


class LdapConfig(RequiredSecret):
    """A generic LDAP directory: OpenLDAP, 389 Directory Server, FreeIPA (docs/directory.md)."""

    type: Literal["ldap"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
    url: str
    base_dn: Annotated[str, Field(min_length=3)]
    bind_dn: Annotated[str, Field(min_length=1)]
    tls: TlsConfig = TlsConfig()
    inactive_after_days: Annotated[int, Field(ge=1, le=36500)] = 90
    max_departures: Annotated[int, Field(ge=0)] | None = None
    page_size: Annotated[int, Field(ge=1, le=10000)] = 500
    timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    attributes: LdapAttributes = LdapAttributes()
    # Read only entries changed since the last sync (entryCSN / modifyTimestamp); deletions and
    # moves out of base_dn show at the next complete read, made every `full_sync_every`.
    incremental: bool = True
    full_sync_every: Annotated[str, AfterValidator(_check_duration)] = "24h"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "ldapi":
            # A Unix socket on this machine: ldapi://%2Frun%2Fslapd%2Fldapi (the path percent-encoded).
            if not parts.netloc or "%2f" not in parts.netloc.lower() or parts.path not in ("", "/"):
                raise ValueError(f"an ldapi:// URL names the socket path percent-encoded, e.g. "
                                 f"ldapi://%2Frun%2Fslapd%2Fldapi, got {value!r}")
            return value
        return ActiveDirectoryConfig._ldap_url.__func__(cls, value)


DirectoryConfig = Annotated[Union[ActiveDirectoryConfig, LdapConfig, LdifConfig], Field(discriminator="type")]


class Selector(Strict):
    ou: str | None = None  # subtree: principals whose DN lies under this DN
    group: str | None = None  # transitive membership (DN or sAMAccountName), primary group included
    exclude: list[str] = []  # groups whose transitive members are left out


class Requirement(Strict):
    name: Annotated[str, Field(min_length=1)]
    product: Annotated[str, Field(min_length=1)]
    version: Annotated[ProductVersion, Field()]
    cal_type: Literal["user", "device"]
    users: Selector | None = None
    computers: Selector | None = None
    directory: str | None = None  # limit to one directory; default: all

    _coerce_version = field_validator("version", mode="before")(lambda cls, v: _version_text(v))

    @model_validator(mode="after")
    def _selector_fits_type(self) -> "Requirement":
        if self.cal_type == "user" and (self.users is None or self.computers is not None):
            raise ValueError("a user CAL requirement selects principals with `users:` (and not `computers:`)")
        if self.cal_type == "device" and (self.computers is None or self.users is not None):
            raise ValueError("a device CAL requirement selects principals with `computers:` (and not `users:`)")
        return self


class ExemptConfig(Strict):
    """Principals that are never required (R19): administrators per server product, at most two
    each, and service accounts for every product."""

    admins: dict[str, Annotated[list[str], Field(max_length=2)]] = {}
    service_accounts: list[str] = []


class RulesConfig(Strict):
    expiry_warning_days: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [90, 30, 7]
    reassignment_min_days: Annotated[int, Field(ge=0)] = 90  # R06


class PoliciesConfig(Strict):
    """What `cal-agent plan` proposes (and `plan --apply` does); both off unless enabled."""

    auto_assign: bool = False  # free seats to unlicensed principals
    reclaim: bool = False  # seats of departed principals
    reclaim_after_days: Annotated[int, Field(ge=0)] = 30


class ReportsConfig(Strict):
    directory: ConfigPath = Path(DEFAULT_REPORTS_DIR)
    keep_days: Annotated[int, Field(ge=1)] | None = 400  # None: keep every run


def _check_cron(value: Any) -> Any:
    if value is not None:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"not a crontab expression (minute hour day month weekday): {exc}") from None
    return value


class ScheduleConfig(Strict):
    """When `cal-agent run` (the service) runs a cycle: every `interval`, or at `cron` times."""

    interval: Annotated[str | None, AfterValidator(_check_duration)] = "1h"
    cron: Annotated[str | None, AfterValidator(_check_cron)] = None
    jitter: Annotated[str | None, AfterValidator(_check_duration)] = "2m"  # spread agents' load on the DCs
    misfire_grace: Annotated[str, AfterValidator(_check_duration)] = "10m"
    # After a cycle that failed (a directory unreadable, the database down), try again this soon,
    # doubling each time, never later than the next scheduled cycle; null: wait for the schedule.
    retry_after: Annotated[str | None, AfterValidator(_check_duration)] = "1m"

    @model_validator(mode="after")
    def _one_trigger(self) -> "ScheduleConfig":
        if self.cron is not None and "interval" in self.model_fields_set and self.interval is not None:
            raise ValueError("give `interval` or `cron`, not both")
        if self.cron is None and self.interval is None:
            raise ValueError("give `interval` or `cron`")
        return self


def _check_listen(value: Any) -> Any:
    if value is not None:
        host, sep, port = str(value).rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port such as 127.0.0.1:9464, got {value!r}")
    return value


class MetricsConfig(Strict):
    listen: Annotated[str | None, AfterValidator(_check_listen)] = None  # e.g. 127.0.0.1:9464; None: off


class LogConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: console on a TTY, JSON otherwise


# ---------------------------------------------------------------------------------------------
# Alerts (docs/alerts.md): what is alert-worthy, and the email and webhook channels.

_LOOPBACK = {"localhost", "127.0.0.1", "::1", "localhost.localdomain"}


def is_loopback(host: str | None) -> bool:
    """True for the machine itself: plain text to it never crosses a network."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host in _LOOPBACK or host.startswith("127."):
        return True
    return False


def _mail_address(value: str) -> str:
    from email.utils import parseaddr

    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("an e-mail address may not contain control characters (line breaks)")
    _name, addr = parseaddr(value)
    if not addr or "@" not in addr or addr.startswith("@") or addr.endswith("@") or " " in addr:
        raise ValueError(f"not an e-mail address: {value!r} (e.g. cal-agent@corp.example.com)")
    return value.strip()


MailAddress = Annotated[str, AfterValidator(_mail_address)]


class AlertTriggersConfig(Strict):
    """What makes a finding alert-worthy."""

    shortfall: bool = True  # a shortfall finding
    unlicensed: bool = True  # unlicensed_user / unlicensed_device findings
    expiring: bool = True  # expiring (once per threshold) and expired findings
    stale_after_days: Annotated[int, Field(ge=0, le=36500)] | None = 30  # stale_assignment older than this
    min_free: dict[Annotated[str, Field(min_length=1)], Annotated[int, Field(ge=1)]] = {}  # product -> seats


class EmailAlertConfig(SecretSource):
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # default: 587 starttls, 465 ssl, 25 none
    security: Literal["starttls", "ssl", "none"] = "starttls"
    allow_insecure: bool = False  # security: none to a host other than this machine
    username: Annotated[str, Field(min_length=1)] | None = None
    from_: Annotated[MailAddress, Field(alias="from")]
    to: Annotated[list[MailAddress], Field(min_length=1)]
    ca_file: ConfigPath | None = None  # CA of the SMTP server's certificate; default: system CAs
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        import ipaddress

        value = value.strip()
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        if not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?", value):
            raise ValueError(f"not a host name or IP address: {value!r} (put the port in `port`)")
        return value

    @property
    def effective_port(self) -> int:
        return self.port or {"starttls": 587, "ssl": 465, "none": 25}[self.security]

    @model_validator(mode="after")
    def _checks(self) -> "EmailAlertConfig":
        sources = [s for s in ("password_env", "password_file", "password_credential") if getattr(self, s)]
        if self.username and len(sources) != 1:
            raise ValueError(
                "with username, give exactly one of password_env, password_file, password_credential"
                + (f" (got {', '.join(sources)})" if sources else ""))
        if not self.username and sources:
            raise ValueError(f"{sources[0]} is given but username is not: set username to log in")
        if self.security == "none" and not self.allow_insecure and not is_loopback(self.host):
            raise ValueError(
                f"security: none sends mail (and any password) in clear text to {self.host}: use starttls or ssl, "
                "or set allow_insecure: true if that network path is trusted")
        if self.security == "none" and self.ca_file is not None:
            raise ValueError("ca_file is only used with security: starttls or ssl")
        return self


class WebhookAlertConfig(Strict):
    """An incoming webhook (Slack, Teams).  Its URL embeds a token, so it is a secret."""

    url_env: str | None = None
    url_file: ConfigPath | None = None
    url_credential: str | None = None
    format: Literal["slack", "teams"] = "slack"
    timeout: Annotated[float, Field(gt=0, le=600)] = 10.0

    @model_validator(mode="after")
    def _one_secret(self) -> "WebhookAlertConfig":
        _exactly_one(self, ("url_env", "url_file", "url_credential"),
                     " (the URL is a secret: never in this file)")
        return self


class AlertsConfig(Strict):
    on: Literal["change", "always", "never"] = "change"
    digest: Literal["daily", "weekly"] | None = None
    triggers: AlertTriggersConfig = AlertTriggersConfig()
    keep_sent_days: Annotated[int, Field(ge=1, le=36500)] | None = 90  # sent messages; null: forever
    email: EmailAlertConfig | None = None
    webhook: WebhookAlertConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean true; it means the key "on" here.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = dict(data)
            data["on"] = data.pop(True)
        return data

    @property
    def channels(self) -> list[str]:
        return [c for c in ("email", "webhook") if getattr(self, c) is not None]


class Config(Strict):
    database: DatabaseConfig = DatabaseConfig()
    directories: Annotated[list[DirectoryConfig], Field(min_length=1)]
    inventory: ConfigPath
    requirements: list[Requirement] = []
    exempt: ExemptConfig = ExemptConfig()
    rules: RulesConfig = RulesConfig()
    policies: PoliciesConfig = PoliciesConfig()
    reports: ReportsConfig = ReportsConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    alerts: AlertsConfig = AlertsConfig()

    # Where the config came from, for messages; not a YAML key.
    source: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        names = [d.name for d in self.directories]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"directories: names must be unique, repeated: {', '.join(dupes)}")
        req_names = [r.name for r in self.requirements]
        dupes = sorted({n for n in req_names if req_names.count(n) > 1})
        if dupes:
            raise ValueError(f"requirements: names must be unique, repeated: {', '.join(dupes)}")
        for i, req in enumerate(self.requirements):
            if req.directory is not None and req.directory not in names:
                raise ValueError(f"requirements[{i}].directory: no directory named {req.directory!r}")
        return self

    def directory(self, name: str) -> ActiveDirectoryConfig | LdapConfig | LdifConfig:
        for d in self.directories:
            if d.name == name:
                return d
        raise KeyError(name)


def key_paths(model: type[BaseModel] = None, prefix: str = "") -> list[str]:
    """Every YAML key the schema accepts, as paths like ``directories[].tls.ca_file`` (for the
    docs check and for anyone who wants to know the whole surface)."""
    import typing

    def flatten(annotation: Any) -> list[Any]:
        args = typing.get_args(annotation)
        return [a for arg in args for a in flatten(arg)] if args else [annotation]

    out: list[str] = []
    for name, field in (model or Config).model_fields.items():
        if field.exclude:
            continue
        path = prefix + (field.alias or name)
        if path not in out:
            out.append(path)
        is_list = typing.get_origin(field.annotation) is list or any(
            typing.get_origin(a) is list for a in typing.get_args(field.annotation))
        for sub in flatten(field.annotation):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                for child in key_paths(sub, path + ("[]." if is_list else ".")):
                    if child not in out:
                        out.append(child)
    return out


# ---------------------------------------------------------------------------------------------
# Loading and error reporting


_UNION_TAGS = {"active_directory", "ldap", "ldif"}


def _error_path(loc: tuple[Any, ...]) -> str:
    out = ""
    previous: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in _UNION_TAGS:
            pass  # pydantic's discriminated-union tag is not a key the admin wrote
        elif part in ("function-after", "function-before") or str(part).startswith("function-"):
            pass
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out


def format_validation_error(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        path = _error_path(tuple(item["loc"]))
        msg = item["msg"]
        msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against config.example.yaml)"
        elif item["type"] == "missing":
            msg = "required key is missing"
        elif item["type"] == "union_tag_invalid":
            path = f"{path}.type"
            msg = f"unknown type {(item.get('ctx') or {}).get('tag')!r}: use active_directory, ldap or ldif"
        elif item["type"] == "union_tag_not_found":
            path = f"{path}.type"
            msg = "required key is missing (active_directory, ldap or ldif)"
        problems.append(f"{path}: {msg}" if path else msg)
    return problems


def default_config_path() -> Path:
    """$CAL_AGENT_CONFIG, else /etc/cal-agent/config.yaml (Windows: %ProgramData%\\cal-agent\\config.yaml)."""
    return _paths.default_config_path()


def parse_config(data: Any, *, base_dir: Path | None = None, source: str | None = None) -> Config:
    """Validate already-parsed YAML data.  Raises ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys (database, directories, ...)", source=source)
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc), source=source) from None
    return config.model_copy(update={"source": source})


def load_config(path: Path | str | None = None, *, check_files: bool = True) -> Config:
    """Load, validate and check a configuration file (files exist, secrets resolvable)."""
    path = Path(path) if path is not None else default_config_path()
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"configuration file {source} not found (use --config PATH or set {CONFIG_ENV})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {source}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML{where}: {problem}", source=source) from None
    if data is None:
        raise ConfigError("the file is empty", source=source)
    config = parse_config(data, base_dir=path.resolve().parent, source=source)
    if check_files:
        problems = check_config_files(config)
        if problems:
            raise ConfigError(problems, source=source)
    return config


def check_config_files(config: Config) -> list[str]:
    """Problems a schema cannot see: missing files, unreadable or too-open secrets."""
    problems: list[str] = []
    if not config.inventory.is_file():
        problems.append(f"inventory: file {config.inventory} does not exist")
    for i, d in enumerate(config.directories):
        where = f"directories[{i}]"
        if isinstance(d, LdifConfig):
            if not d.path.is_file():
                problems.append(f"{where}.path: file {d.path} does not exist")
            continue
        if d.tls.ca_file is not None and not d.tls.ca_file.is_file():
            problems.append(f"{where}.tls.ca_file: file {d.tls.ca_file} does not exist")
        try:
            resolve_password(d, where=where)
        except ConfigError as exc:
            problems.extend(exc.problems)
    email, webhook = config.alerts.email, config.alerts.webhook
    if email is not None:
        if email.ca_file is not None and not email.ca_file.is_file():
            problems.append(f"alerts.email.ca_file: file {email.ca_file} does not exist")
        if email.username:
            try:
                resolve_password(email, where="alerts.email")
            except ConfigError as exc:
                problems.extend(exc.problems)
    if webhook is not None:
        try:
            resolve_webhook_url(webhook)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return problems


def resolve_password(d: SecretSource, *, where: str = "directory") -> SecretStr:
    """Read the bind password from its source.  The value is wrapped so it never prints."""
    return resolve_secret(d, "password", where=where)


def resolve_secret(d: Any, name: str, *, where: str) -> SecretStr:
    """Read the secret ``name`` of ``d`` from ``{name}_env``, ``{name}_credential`` or ``{name}_file``."""
    env, credential, file = (getattr(d, f"{name}_{s}") for s in ("env", "credential", "file"))
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{where}.{name}_env: environment variable {env} is not set or empty")
        return SecretStr(value)
    if credential:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(
                f"{where}.{name}_credential: $CREDENTIALS_DIRECTORY is not set "
                f"(run under systemd with LoadCredential=, or use {name}_file)"
            )
        return _read_secret_file(Path(cred_dir) / credential, f"{where}.{name}_credential", check_mode=False)
    if file is None:
        raise ConfigError(f"{where}: no {name}_env, {name}_file or {name}_credential given")
    return _read_secret_file(file, f"{where}.{name}_file", check_mode=True)


def resolve_webhook_url(w: WebhookAlertConfig, *, where: str = "alerts.webhook") -> SecretStr:
    """The webhook URL from its secret source, checked (https://, or http:// to this machine only).
    Messages never quote the URL: it embeds the token."""
    url = resolve_secret(w, "url", where=where)
    source = next(f"{where}.url_{s}" for s in ("env", "file", "credential") if getattr(w, f"url_{s}"))
    try:
        parts = urlsplit(url.get_secret_value().strip())
        host = parts.hostname
    except ValueError:
        raise ConfigError(f"{source}: the value is not a URL") from None
    if parts.scheme == "https" and host:
        return SecretStr(url.get_secret_value().strip())
    if parts.scheme == "http" and is_loopback(host):
        return SecretStr(url.get_secret_value().strip())
    raise ConfigError(f"{source}: the webhook URL must start with https:// "
                      "(http:// is accepted only to this machine)")


def _read_secret_file(path: Path, where: str, *, check_mode: bool) -> SecretStr:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{where}: file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    # POSIX mode bits only: on Windows st_mode tells nothing about who may read a file; there the
    # file's NTFS ACL (SYSTEM and Administrators only) protects it (docs/windows.md).
    if check_mode and os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{where}: {path} is readable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        # utf-8-sig: Notepad and PowerShell 5.1 (`Set-Content -Encoding UTF8`) start the file with a BOM.
        value = path.read_text(encoding="utf-8-sig").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc}") from None
    if not value:
        raise ConfigError(f"{where}: {path} is empty")
    return SecretStr(value)
