"""The cluster manager's configuration (file + ``OAKNET_*`` env + flags)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from oaknet.config import AuthConfig, ConfigError, FeedConfig, ServerConfig, StoreConfig

DEFAULT_PORT = 10110
NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass
class RootLinkConfig:
    """How the cluster manager reaches the root manager and who it is there."""

    url: str = "http://[::1]:10099"
    # The cluster's credential at the root; its subject there must equal ``cluster_id``.
    token: str | None = None
    token_file: str | None = None
    timeout: float = 5.0  # seconds per request (a watch adds its long-poll time)
    retries: int = 3
    watch_timeout: float = 30.0  # long-poll time asked of the root's watch feed
    backoff: float = 0.5  # first wait after the root failed; doubles up to max_backoff
    max_backoff: float = 15.0
    # When set, the cluster registers itself at the root on start (POST /api/net/cluster).
    advertise_address: str | None = None
    advertise_port: int | None = None

    def validate(self, key: str = "root") -> None:
        """Raise ConfigError unless the root can be reached with a credential."""
        if not re.match(r"^https?://[^/]+", self.url):
            raise ConfigError(f"{key}.url", f"{self.url!r} is not an http(s) URL")
        if not (self.token or self.token_file):
            raise ConfigError(f"{key}.token", "the root needs a token (token or token_file)")
        if self.token_file and not Path(self.token_file).is_file():
            raise ConfigError(f"{key}.token_file", f"{self.token_file} is not a readable file")
        for name, low, high in (
            ("timeout", 0.1, 600),
            ("retries", 0, 100),
            ("watch_timeout", 0, 110),
            ("backoff", 0.01, 600),
            ("max_backoff", 0.01, 3600),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{key}.{name}", f"{value} is outside {low}..{high}")
        if self.advertise_port is not None and not 1 <= self.advertise_port <= 65535:
            raise ConfigError(f"{key}.advertise_port", "must be within 1..65535")

    def read_token(self) -> str:
        """The token, from the file when one is configured (read on every call: rotation)."""
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token or ""


@dataclass
class ClusterConfig:
    """Everything the cluster manager process needs."""

    cluster_id: str = ""  # this cluster's id at the root (the subject of root.token)
    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=DEFAULT_PORT))
    store: StoreConfig = field(
        default_factory=lambda: StoreConfig(url="sqlite:///var/lib/oaknet/cluster.db")
    )
    auth: AuthConfig = field(default_factory=AuthConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    root: RootLinkConfig = field(default_factory=RootLinkConfig)
    log_level: str = "INFO"

    def validate(self) -> None:
        """Raise ConfigError naming the first wrong setting."""
        if not NODE_ID.match(self.cluster_id or ""):
            raise ConfigError("cluster_id", "must be 1-64 letters, digits, '.', '_' or '-'")
        self.server.validate()
        # The root follower and the per-service locks live in one process.
        if self.server.workers != 1:
            raise ConfigError("server.workers", "the cluster manager runs as one process")
        self.store.validate()
        self.auth.validate()
        self.feed.validate()
        self.root.validate()
        if self.feed.max_timeout >= 120:
            raise ConfigError("feed.max_timeout", "must stay below the 120 s connection timeout")
        if logging.getLevelName(self.log_level.upper()) not in (10, 20, 30, 40, 50):
            raise ConfigError("log_level", f"{self.log_level!r} is not a log level")
