"""The root manager's Flask app factory."""

from __future__ import annotations

import logging

from flask import Flask

from oaknet import web
from oaknet.fastlane import FAST_ROUTES
from oaknet.feed import Feed
from oaknet.pools import Pools
from oaknet.store import Store, open_store
from oaknet.store.sqlite import SQLiteStore
from root_manager.clusters import Clusters
from root_manager.config import RootConfig
from root_manager.notify import Notifier
from root_manager.routes import RootState, fast_routes, net, ops, pubnet
from root_manager.services import Services

LOG = logging.getLogger(__name__)


def create_app(config: RootConfig, store: Store | None = None) -> Flask:
    """A ready root manager app; ``oaknet_release`` stops its feed, ``oaknet_close`` its store."""
    config.validate()
    own_store = store is None
    if store is None:
        store = open_store(config.store.url, config.store.busy_timeout, config.store.lease)
    pools = Pools.from_config(config.pools)
    feed = Feed.from_config(store, config.feed)
    clusters = Clusters(store, pools)
    notifier = None
    if config.push.enabled:
        notifier = Notifier(clusters, config.push.token, config.push.timeout, config.push.retries)
    state = RootState(
        services=Services(store, pools, notifier.notify if notifier else None),
        clusters=clusters,
        pools=pools,
        feed=feed,
        max_timeout=config.feed.max_timeout,
    )

    app, metrics = web.manager_app("root_manager", config.auth, config.server.max_body)
    app.extensions["oaknet_root"] = state
    app.extensions[FAST_ROUTES] = fast_routes(local_store=isinstance(store, SQLiteStore))
    app.register_blueprint(net)
    app.register_blueprint(pubnet)
    app.register_blueprint(ops)

    metrics.gauge("services", "Services in the table.", state.services.count)
    metrics.gauge("clusters", "Registered clusters.", state.clusters.count)
    metrics.gauge("feed_revision", "Newest change revision.", lambda: feed.head)
    metrics.gauge("feed_watchers", "Watchers waiting in a long poll.", lambda: feed.watchers)
    metrics.gauge(
        "pool_used",
        "Addresses claimed per pool.",
        lambda: {p.name: p.used(store) for p in pools.all()},
    )
    metrics.gauge(
        "pool_size", "Addresses per pool.", lambda: {p.name: p.size for p in pools.all()}
    )

    def release() -> None:
        # The background parts stop and the long-polls are answered; requests still work.
        feed.stop()
        if notifier is not None:
            notifier.stop()

    def close() -> None:
        # After the server stopped: no request uses the store any more.
        if own_store:
            store.close()

    app.extensions["oaknet_release"] = release
    app.extensions["oaknet_close"] = close
    feed.start()
    LOG.info("root manager ready: store %s, revision %d", store.description, feed.head)
    return app
