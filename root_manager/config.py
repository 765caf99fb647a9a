"""The root manager's configuration (file + ``OAKNET_*`` env + flags)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from oaknet.config import (
    AuthConfig,
    ConfigError,
    FeedConfig,
    PoolsConfig,
    ServerConfig,
    StoreConfig,
)

DEFAULT_PORT = 10099


@dataclass
class PushConfig:
    """Pushing oakestra-net's job updates to interested clusters (for reference clusters)."""

    enabled: bool = False
    token: str | None = None  # bearer token sent to the cluster managers
    timeout: float = 2.0
    retries: int = 5

    def validate(self, key: str = "push") -> None:
        """Raise ConfigError for an impossible value."""
        if not 0.1 <= self.timeout <= 60:
            raise ConfigError(f"{key}.timeout", "must be within 0.1..60 seconds")
        if not 0 <= self.retries <= 20:
            raise ConfigError(f"{key}.retries", "must be within 0..20")


@dataclass
class RootConfig:
    """Everything the root manager process needs."""

    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=DEFAULT_PORT))
    store: StoreConfig = field(
        default_factory=lambda: StoreConfig(url="sqlite:///var/lib/oaknet/root.db")
    )
    auth: AuthConfig = field(default_factory=AuthConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    pools: PoolsConfig = field(default_factory=PoolsConfig)
    push: PushConfig = field(default_factory=PushConfig)
    log_level: str = "INFO"

    def validate(self) -> None:
        """Raise ConfigError naming the first wrong setting."""
        self.server.validate()
        self.store.validate()
        self.auth.validate()
        self.feed.validate()
        self.pools.validate()
        self.push.validate()
        if self.feed.max_timeout >= 120:
            raise ConfigError("feed.max_timeout", "must stay below the 120 s connection timeout")
        if logging.getLevelName(self.log_level.upper()) not in (10, 20, 30, 40, 50):
            raise ConfigError("log_level", f"{self.log_level!r} is not a log level")
