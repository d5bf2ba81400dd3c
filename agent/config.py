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

CONFIG_ENV = "CAL_AGENT_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/cal-agent/config.yaml")
DEFAULT_DATABASE_URL = "sqlite:////var/lib/cal-agent/state.db"
DEFAULT_REPORTS_DIR = "/var/lib/cal-agent/reports"

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


class TlsConfig(Strict):
    ca_file: ConfigPath | None = None  # PEM bundle of the CA that signed the DCs' certificates
    verify: bool = True  # certificate verification; only for labs, logged loudly when off


class SecretSource(Strict):
    """Where a password comes from.  Exactly one source; the value itself never sits in the config."""

    password_env: str | None = None
    password_file: ConfigPath | None = None
    password_credential: str | None = None  # a systemd credential name, read from $CREDENTIALS_DIRECTORY


class ActiveDirectoryConfig(SecretSource):
    type: Literal["active_directory"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
    url: str
    base_dn: Annotated[str, Field(min_length=3)]
    bind_dn: Annotated[str, Field(min_length=1)]
    tls: TlsConfig = TlsConfig()
    inactive_after_days: Annotated[int, Field(ge=1, le=36500)] = 90
    page_size: Annotated[int, Field(ge=1, le=1000)] = 1000  # AD's MaxPageSize is 1000
    range_size: Annotated[int, Field(ge=10, le=5000)] = 1000  # values per ranged `member` read
    timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0  # seconds, connect and each receive
    read_deleted: bool = True  # read tombstones (Show Deleted) so deletions are known as such

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

    @model_validator(mode="after")
    def _one_secret(self) -> "ActiveDirectoryConfig":
        sources = [s for s in ("password_env", "password_file", "password_credential") if getattr(self, s)]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of password_env, password_file, password_credential"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        return self


class LdifConfig(Strict):
    type: Literal["ldif"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
    path: ConfigPath
    base_dn: str | None = None  # only entries under it are read; default: everything in the file
    as_of: datetime | None = None  # when the export was taken: inactivity and expiry are judged then
    inactive_after_days: Annotated[int, Field(ge=1, le=36500)] = 90

    @field_validator("as_of")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


DirectoryConfig = Annotated[Union[ActiveDirectoryConfig, LdifConfig], Field(discriminator="type")]


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


class LogConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: console on a TTY, JSON otherwise


class Config(Strict):
    database: DatabaseConfig = DatabaseConfig()
    directories: Annotated[list[DirectoryConfig], Field(min_length=1)]
    inventory: ConfigPath
    requirements: list[Requirement] = []
    exempt: ExemptConfig = ExemptConfig()
    rules: RulesConfig = RulesConfig()
    policies: PoliciesConfig = PoliciesConfig()
    reports: ReportsConfig = ReportsConfig()
    log: LogConfig = LogConfig()

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

    def directory(self, name: str) -> ActiveDirectoryConfig | LdifConfig:
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
        path = prefix + name
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


_UNION_TAGS = {"active_directory", "ldif"}


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
            msg = f"unknown type {(item.get('ctx') or {}).get('tag')!r}: use active_directory or ldif"
        elif item["type"] == "union_tag_not_found":
            path = f"{path}.type"
            msg = "required key is missing (active_directory or ldif)"
        problems.append(f"{path}: {msg}" if path else msg)
    return problems


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


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
    return problems


def resolve_password(d: ActiveDirectoryConfig, *, where: str = "directory") -> SecretStr:
    """Read the bind password from its source.  The value is wrapped so it never prints."""
    if d.password_env:
        value = os.environ.get(d.password_env)
        if not value:
            raise ConfigError(f"{where}.password_env: environment variable {d.password_env} is not set or empty")
        return SecretStr(value)
    if d.password_credential:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(
                f"{where}.password_credential: $CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=, or use password_file)"
            )
        return _read_secret_file(Path(cred_dir) / d.password_credential, f"{where}.password_credential",
                                 check_mode=False)
    assert d.password_file is not None
    return _read_secret_file(d.password_file, f"{where}.password_file", check_mode=True)


def _read_secret_file(path: Path, where: str, *, check_mode: bool) -> SecretStr:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{where}: file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if check_mode and os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{where}: {path} is readable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc}") from None
    if not value:
        raise ConfigError(f"{where}: {path} is empty")
    return SecretStr(value)
