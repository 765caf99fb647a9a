"""The cluster manager's Flask app factory."""

from __future__ import annotations

import logging

from flask import Flask

from cluster_manager.cache import INTEREST, JOB, Cache
from cluster_manager.config import ClusterConfig
from cluster_manager.follower import Refresher, RootFollower
from cluster_manager.nodes import Nodes
from cluster_manager.rootlink import RootLink
from cluster_manager.routes import ClusterState, net, node, ops
from cluster_manager.table import Table
from oaknet import web
from oaknet.feed import Feed
from oaknet.store import Store, open_store

LOG = logging.getLogger(__name__)


def create_app(config: ClusterConfig, store: Store | None = None) -> Flask:
    """A ready cluster manager app following its root (stop: ``oaknet_release``, then the
    server, then ``oaknet_close``)."""
    config.validate()
    own_store = store is None
    if store is None:
        store = open_store(config.store.url, config.store.busy_timeout, config.store.lease)
    root = RootLink(config.root, config.cluster_id)
    cache = Cache(store, config.cluster_id)
    nodes = Nodes(store, root)
    table = Table(cache, root, nodes)
    refresher = Refresher(table)
    follower = RootFollower(table, root, config.root, refresher, config.server.port)
    feed = Feed.from_config(store, config.feed)
    state = ClusterState(
        config.cluster_id, cache, nodes, table, follower, refresher, feed, config.feed.max_timeout
    )

    app, metrics = web.manager_app("cluster_manager", config.auth, config.server.max_body)
    app.extensions["oaknet_cluster"] = state
    app.register_blueprint(net)
    app.register_blueprint(node)
    app.register_blueprint(ops)

    metrics.gauge("nodes", "Registered worker nodes.", nodes.count)
    metrics.gauge("cached_services", "Services cached from the root.", lambda: store.count(JOB))
    metrics.gauge("interests", "Node interests in services.", lambda: store.count(INTEREST))
    metrics.gauge("feed_revision", "Newest change revision of the node feed.", lambda: feed.head)
    metrics.gauge("feed_watchers", "Nodes waiting in a long poll.", lambda: feed.watchers)
    metrics.gauge("root_revision", "Root feed revision applied.", cache.position)
    metrics.gauge(
        "root_connected",
        "1 while the root's feed is followed.",
        lambda: 1 if follower.connected else 0,
    )
    metrics.gauge(
        "root_interest_removals_pending",
        "Interest removals the root has not had.",
        lambda: len(cache.pending_removals()),
    )

    def release() -> None:
        # The background parts stop and the long-polls are answered; requests still work.
        follower.stop()
        refresher.stop()
        feed.stop()
        root.close()

    def close() -> None:
        # After the server stopped: no request uses the store any more.
        if own_store:
            store.close()

    app.extensions["oaknet_release"] = release
    app.extensions["oaknet_close"] = close
    feed.start()
    refresher.start()
    follower.start()
    LOG.info(
        "cluster manager %s ready: store %s, node feed revision %d, root %s from revision %d",
        config.cluster_id,
        store.description,
        feed.head,
        config.root.url,
        cache.position(),
    )
    return app
