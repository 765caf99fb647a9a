"""One config object per process: dataclass defaults, then a YAML/JSON file, env and flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

ENV_PREFIX = "OAKNET_"

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that is missing or wrong; ``key`` is its dotted path (``server.port``)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config {key}: {message}")
        self.key = key


@dataclass
class ServerConfig:
    """Where and how a manager serves HTTP."""

    host: str = "::"
    port: int = 10099
    server: str = "waitress"  # or "gunicorn"
    threads: int = 160  # long-poll watchers each hold a thread while they wait
    workers: int = 1  # gunicorn only: processes sharing the store
    max_body: int = 65536  # bytes; larger request bodies get 413
    port_file: str | None = None  # written with the bound port (useful with port 0)

    def validate(self, key: str = "server") -> None:
        """Raise ConfigError for an impossible value."""
        _check_range(f"{key}.port", self.port, 0, 65535)
        _check_range(f"{key}.threads", self.threads, 1, 10000)
        _check_range(f"{key}.workers", self.workers, 1, 256)
        _check_range(f"{key}.max_body", self.max_body, 1024, 64 * 1024 * 1024)
        if self.server not in ("waitress", "gunicorn"):
            raise ConfigError(f"{key}.server", f"{self.server!r} is not waitress or gunicorn")
        if not self.host:
            raise ConfigError(f"{key}.host", "must not be empty")


@dataclass
class StoreConfig:
    """Which database holds the state: ``sqlite:///path.db`` or ``mongodb://host/db``."""

    url: str = "sqlite:///var/lib/oaknet/oaknet.db"
    busy_timeout: float = 10.0  # seconds a writer waits for another writer
    lease: float = 30.0  # MongoDB only: how long a writer's lock lives if it dies holding it

    def validate(self, key: str = "store") -> None:
        """Raise ConfigError unless the URL names a supported database."""
        if not self.url.startswith(("sqlite:", "mongodb://", "mongodb+srv://", "mongomock://")):
            raise ConfigError(f"{key}.url", "must start with sqlite:, mongodb:// or mongomock://")
        _check_range(f"{key}.busy_timeout", self.busy_timeout, 0.1, 600)
        _check_range(f"{key}.lease", self.lease, 1, 3600)


@dataclass
class FeedConfig:
    """How long the change feed keeps changes and how a watcher may wait."""

    keep: int = 10000  # changes kept; an older revision gets a resync
    poll_interval: float = 0.2  # seconds between looks for changes made by other processes
    compact_interval: float = 30.0
    max_timeout: float = 60.0  # longest long-poll a watcher may ask for

    def validate(self, key: str = "feed") -> None:
        """Raise ConfigError for an impossible value."""
        _check_range(f"{key}.keep", self.keep, 1, 10**9)
        _check_range(f"{key}.poll_interval", self.poll_interval, 0.01, 60)
        _check_range(f"{key}.compact_interval", self.compact_interval, 0.1, 86400)
        _check_range(f"{key}.max_timeout", self.max_timeout, 0, 3600)


@dataclass
class AuthConfig:
    """Accepted credentials: static bearer tokens and/or JWTs (HS256 or RS256)."""

    # token -> {"subject": ..., "roles": [...]}; or the same mapping in tokens_file.
    tokens: dict[str, Any] = field(default_factory=dict)
    tokens_file: str | None = None
    jwt_algorithm: str | None = None  # "HS256" or "RS256"; None = JWTs not accepted
    jwt_secret: str | None = None
    jwt_secret_file: str | None = None
    jwt_public_key_file: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_roles_claim: str = "roles"
    jwt_default_roles: list[str] = field(default_factory=list)
    jwt_leeway: float = 30.0

    def validate(self, key: str = "auth") -> None:
        """Raise ConfigError unless at least one kind of credential is usable."""
        if self.jwt_algorithm not in (None, "HS256", "RS256"):
            raise ConfigError(f"{key}.jwt_algorithm", "must be HS256 or RS256")
        if self.jwt_algorithm == "HS256" and not (self.jwt_secret or self.jwt_secret_file):
            raise ConfigError(f"{key}.jwt_secret", "HS256 needs jwt_secret or jwt_secret_file")
        if self.jwt_algorithm == "RS256" and not self.jwt_public_key_file:
            raise ConfigError(f"{key}.jwt_public_key_file", "RS256 needs a public key file")
        if self.jwt_algorithm is None and (
            self.jwt_secret or self.jwt_secret_file or self.jwt_public_key_file
        ):
            # A key without an algorithm would silently refuse every token.
            raise ConfigError(f"{key}.jwt_algorithm", "a JWT key is set: say HS256 or RS256")
        for name in ("tokens_file", "jwt_secret_file", "jwt_public_key_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{key}.{name}", f"{path} is not a readable file")
        if not (self.tokens or self.tokens_file or self.jwt_algorithm):
            raise ConfigError(key, "no credentials configured: set tokens, tokens_file or jwt_*")


@dataclass
class PoolsConfig:
    """Address ranges: node subnets, service IPs and instance IPs (oakestra-net's defaults)."""

    subnet_v4: str = "10.18.0.0/15"
    subnet_v4_prefix: int = 26
    subnet_v6: str = "fc00::/16"
    subnet_v6_prefix: int = 120
    service_v4: str = "10.30.0.0/16"  # service IPs of every policy and instance IPs
    instance_v6: str = "fdff::/21"
    round_robin_v6: str = "fdff:2000::/21"
    closest_v6: str = "fdff:1000::/21"

    def validate(self, key: str = "pools") -> None:
        """Raise ConfigError for a malformed, wrong-family or overlapping range."""
        nets = {}
        for name, version in (
            ("subnet_v4", 4),
            ("subnet_v6", 6),
            ("service_v4", 4),
            ("instance_v6", 6),
            ("round_robin_v6", 6),
            ("closest_v6", 6),
        ):
            try:
                net = ipaddress.ip_network(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(f"{key}.{name}", str(exc)) from None
            if net.version != version:
                raise ConfigError(f"{key}.{name}", f"must be an IPv{version} network")
            nets[name] = net
        _check_range(f"{key}.subnet_v4_prefix", self.subnet_v4_prefix, 8, 30)
        _check_range(f"{key}.subnet_v6_prefix", self.subnet_v6_prefix, 64, 126)
        if self.subnet_v4_prefix < nets["subnet_v4"].prefixlen:
            raise ConfigError(f"{key}.subnet_v4_prefix", "longer than the subnet_v4 range")
        if self.subnet_v6_prefix < nets["subnet_v6"].prefixlen:
            raise ConfigError(f"{key}.subnet_v6_prefix", "longer than the subnet_v6 range")
        names = list(nets)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if nets[a].version == nets[b].version and nets[a].overlaps(nets[b]):
                    raise ConfigError(f"{key}.{b}", f"overlaps {key}.{a}")


def load(
    cls: type[T],
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from defaults, then file, then ``OAKNET_*`` env, then dotted overrides.

    Env names are the dotted path upper-cased with ``_`` for ``.``: ``OAKNET_SERVER_PORT``.
    Nested dataclass fields are sections. The result is validated (``validate()``).
    """
    data: dict[str, Any] = {}
    if path:
        data = _read_file(Path(path))
    env = os.environ if env is None else env
    for dotted, hint in _leaves(cls):
        name = ENV_PREFIX + dotted.replace(".", "_").upper()
        if name in env:
            _set(data, dotted, _from_text(dotted, env[name], hint))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(data, dotted, value)
    obj = _build(cls, data, "")
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def to_dict(obj: Any) -> dict:
    """The config as a plain dict, secrets replaced by ``***`` (for logging at start)."""
    out = dataclasses.asdict(obj)

    def scrub(d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                if k == "tokens":
                    d[k] = {"***": f"{len(v)} tokens"}
                else:
                    scrub(v)
            elif (("secret" in k and not k.endswith("_file")) or k.endswith("token")) and v:
                d[k] = "***"

    scrub(out)
    return out


def _read_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("file", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError("file", f"{path} is not valid YAML/JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("file", f"{path} must hold a mapping at the top")
    return data


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.extend(_leaves(hint, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", hint))
    return out


def _set(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        data = data.setdefault(p, {})
        if not isinstance(data, dict):
            raise ConfigError(dotted, f"{p} must be a section")
    data[parts[-1]] = value


def _base(hint: Any) -> tuple[Any, bool]:
    """The non-None type of ``hint`` and whether None is allowed."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _from_text(key: str, text: str, hint: Any) -> Any:
    base, _ = _base(hint)
    origin = typing.get_origin(base) or base
    if origin is list:
        return [p.strip() for p in text.split(",") if p.strip()]
    if origin is dict:
        try:
            return json.loads(text)
        except ValueError:
            raise ConfigError(key, "must be a JSON object") from None
    return text


def _coerce(key: str, value: Any, hint: Any) -> Any:
    base, nullable = _base(hint)
    if value is None or value == "" and nullable:
        if nullable:
            return None
        raise ConfigError(key, "must be set")
    origin = typing.get_origin(base) or base
    if origin is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, f"{value!r} is not a boolean")
    if origin in (int, float):
        if isinstance(value, bool):
            raise ConfigError(key, f"{value!r} is not a number")
        try:
            number = origin(value)
        except (TypeError, ValueError):
            what = "an integer" if origin is int else "a number"
            raise ConfigError(key, f"{value!r} is not {what}") from None
        if origin is int and isinstance(value, float) and value != number:
            raise ConfigError(key, f"{value!r} is not an integer")
        return number
    if origin is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(key, f"{value!r} is not a string")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        if not isinstance(value, list):
            raise ConfigError(key, "must be a list")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, "must be a mapping")
        return dict(value)
    return value


def _build(cls: type, data: Any, prefix: str, base: Any = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "file", "must be a mapping")
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}", f"unknown setting (known: {', '.join(sorted(known))})"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            # A section starts from the parent's default (the cluster's port is not the root's).
            default = getattr(base, f.name) if base is not None else _default(f, hint)
            kwargs[f.name] = _build(hint, data[f.name] or {}, key + ".", default)
        else:
            kwargs[f.name] = _coerce(key, data[f.name], hint)
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    return cls(**kwargs)


def _default(f: dataclasses.Field, hint: type) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is not dataclasses.MISSING:
        return f.default
    return hint()


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(key, f"{value} is outside {low}..{high}")
