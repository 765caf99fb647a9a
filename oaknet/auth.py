"""Bearer-token authentication: static tokens and JWTs (HS256/RS256) map to a principal.

A caller (orchestrator, cluster manager, node) is identified by its credentials: the subject of
its token, never its source address. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import yaml

from oaknet.config import AuthConfig, ConfigError

LOG = logging.getLogger(__name__)

ADMIN = "admin"  # everything
ORCHESTRATOR = "orchestrator"  # the system manager: services, instances, cluster registration
CLUSTER = "cluster"  # a cluster manager: table queries, subnets, status reports, watch
NODE = "node"  # a worker node's agent, towards its cluster manager
READER = "reader"  # the public netinfo API
ROLES = (ADMIN, ORCHESTRATOR, CLUSTER, NODE, READER)


class AuthError(Exception):
    """Authentication (401) or authorisation (403) failed; ``detail`` is safe to show."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject and its roles."""

    subject: str
    roles: frozenset[str]
    method: str = "static"

    def has(self, *roles: str) -> bool:
        """True when the principal holds any of ``roles`` (admin holds all)."""
        return ADMIN in self.roles or bool(self.roles.intersection(roles))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Authenticator:
    """Checks ``Authorization: Bearer ...`` values against the configured credentials."""

    def __init__(self, cfg: AuthConfig):
        self.cfg = cfg
        entries = dict(cfg.tokens)
        if cfg.tokens_file:
            entries.update(_read_tokens(cfg.tokens_file))
        # Only digests are kept, so a memory dump or repr shows no token.
        self._static: dict[str, Principal] = {}
        for token, spec in entries.items():
            self._static[_digest(str(token))] = _principal_from_spec(spec, "auth.tokens")
        self._key = None
        if cfg.jwt_algorithm == "HS256":
            self._key = cfg.jwt_secret or Path(cfg.jwt_secret_file).read_text().strip()
            if len(self._key.encode()) < 32:
                raise ConfigError("auth.jwt_secret", "HS256 secret must be at least 32 bytes")
        elif cfg.jwt_algorithm == "RS256":
            self._key = Path(cfg.jwt_public_key_file).read_text()
        LOG.info("auth: %d static tokens, jwt %s", len(self._static), cfg.jwt_algorithm or "off")

    def authenticate(self, header: str | None) -> Principal:
        """The principal of an Authorization header value, or AuthError(401)."""
        if not header:
            raise AuthError(401, "missing bearer token (Authorization: Bearer ...)")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "Authorization header must be 'Bearer <token>'")
        found = self._static.get(_digest(token))
        if found is not None:
            return found
        if self._key is not None and token.count(".") == 2:
            return self._from_jwt(token)
        raise AuthError(401, "invalid token")

    def _from_jwt(self, token: str) -> Principal:
        cfg = self.cfg
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[cfg.jwt_algorithm],
                audience=cfg.jwt_audience,
                issuer=cfg.jwt_issuer,
                leeway=cfg.jwt_leeway,
                options={"require": ["exp", "sub"], "verify_aud": cfg.jwt_audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(401, f"invalid token: {exc}") from None
        raw = claims.get(cfg.jwt_roles_claim, cfg.jwt_default_roles)
        roles = [raw] if isinstance(raw, str) else raw
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError(401, f"claim {cfg.jwt_roles_claim} must be a list of role names")
        return Principal(str(claims["sub"]), frozenset(roles), "jwt")


def authorize(principal: Principal, roles: tuple[str, ...]) -> None:
    """Raise AuthError(403) unless ``principal`` holds one of ``roles``."""
    if not principal.has(*roles):
        raise AuthError(403, f"needs role {' or '.join(roles)}")


def issue_jwt(
    key: str,
    subject: str,
    roles: list[str],
    ttl: float = 3600,
    algorithm: str = "HS256",
    **claims: object,
) -> str:
    """A signed JWT for ``subject`` with ``roles`` (key: HS256 secret or RS256 private PEM)."""
    now = int(time.time())
    body = {"sub": subject, "roles": roles, "iat": now, "exp": now + int(ttl), **claims}
    return jwt.encode(body, key, algorithm=algorithm)


def _principal_from_spec(spec: object, where: str) -> Principal:
    if isinstance(spec, str):
        spec = {"subject": spec, "roles": [ADMIN]}
    if not isinstance(spec, dict) or not isinstance(spec.get("subject"), str):
        raise ConfigError(where, "each token needs {subject: str, roles: [..]}")
    roles = spec.get("roles", [])
    if isinstance(roles, str):
        roles = [roles]
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ConfigError(where, f"unknown role {unknown[0]!r} (known: {', '.join(ROLES)})")
    return Principal(spec["subject"], frozenset(roles), "static")


def _read_tokens(path: str) -> dict:
    text = Path(path).read_text()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError("auth.tokens_file", f"not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("auth.tokens_file", "must map token -> {subject, roles}")
    return data
