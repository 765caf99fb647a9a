"""The cluster's worker nodes: registration and the subnet pair each node keeps."""

from __future__ import annotations

import ipaddress
import logging
import time

from cluster_manager.cache import INTEREST, NODE
from cluster_manager.config import NODE_ID
from cluster_manager.rootlink import (
    ClientError,
    RootLink,
    RootUnregistered,
    Unavailable,
    upstream_error,
)
from oaknet.store import Store
from oaknet.web import ApiError, bad_request, not_found

LOG = logging.getLogger(__name__)


class Nodes:
    """Node records ``{node_id, host_ip, host_port, subnet_addr, subnet_addr_v6, ...}``."""

    def __init__(self, store: Store, root: RootLink):
        self.store = store
        self.root = root

    def register(self, node_id: str, host_ip: str | None, host_port: int | None) -> dict:
        """Register a node; the first time, ask the root for its subnet pair and keep it."""
        node_id = check_node_id(node_id)
        subnet = None
        if self.store.get(NODE, node_id) is None:
            try:
                subnet = self.root.subnet(node_id)
            except (ClientError, Unavailable, RootUnregistered) as exc:
                raise upstream_error(exc) from None
        with self.store.transaction() as tx:
            doc = tx.get(NODE, node_id)
            new = doc is None
            if new and subnet is None:
                raise ApiError(
                    409, "conflict", f"node {node_id} was deregistered meanwhile", "node_id"
                )
            if new:
                doc = {
                    "node_id": node_id,
                    "host_ip": None,
                    "host_port": None,
                    "subnet_addr": subnet["subnet_addr"],
                    "subnet_addr_v6": subnet["subnet_addr_v6"],
                    "subnet_prefix": subnet.get("subnet_prefix"),
                    "subnet_prefix_v6": subnet.get("subnet_prefix_v6"),
                }
            before = dict(doc)
            if host_ip is not None:
                doc["host_ip"] = host_ip
            if host_port is not None:
                doc["host_port"] = host_port
            if new or doc != before:
                doc["registered_at"] = time.time()
                tx.put(NODE, node_id, doc)
        if new:
            LOG.info(
                "node %s registered (%s): subnets %s/%s and %s/%s",
                node_id,
                doc["host_ip"] or "no host IP",
                doc["subnet_addr"],
                doc["subnet_prefix"],
                doc["subnet_addr_v6"],
                doc["subnet_prefix_v6"],
            )
        return doc

    def get(self, node_id: str) -> dict | None:
        """The node record, or None."""
        return self.store.get(NODE, node_id)

    def require(self, node_id: str) -> dict:
        """The node record, or 404 telling the node to register first."""
        doc = self.store.get(NODE, node_id)
        if doc is None:
            raise not_found(
                f"node {node_id} is not registered (POST /api/net/node/register)", "node_id"
            )
        return doc

    def set_host(self, node_id: str, host_ip: str, host_port: int | None) -> None:
        """Record a node's new underlay address."""
        with self.store.transaction() as tx:
            doc = tx.get(NODE, node_id)
            if doc is not None:
                doc.update(host_ip=host_ip, host_port=host_port)
                tx.put(NODE, node_id, doc)

    def all(self) -> list[dict]:
        """Every node record, by id."""
        return [doc for _, doc in self.store.items(NODE)]

    def count(self) -> int:
        """How many nodes are registered."""
        return self.store.count(NODE)

    def deregister(self, node_id: str) -> list[str]:
        """Forget a node and give its subnets back; the jobs it was interested in."""
        doc = self.require(node_id)
        try:
            self.root.release_subnet(doc["subnet_addr"])
        except ClientError as exc:
            if exc.status != 404:  # 404: the root no longer holds it, nothing to give back
                raise upstream_error(exc) from None
        except (Unavailable, RootUnregistered) as exc:
            raise upstream_error(exc) from None
        with self.store.transaction() as tx:
            jobs = []
            for key, interest in tx.find(INTEREST, f"node={node_id}"):
                tx.delete(INTEREST, key)
                jobs.append(interest["job_name"])
            tx.delete(NODE, node_id)
        LOG.info("node %s deregistered, subnet %s released", node_id, doc["subnet_addr"])
        return jobs


def check_node_id(value: object) -> str:
    """A node id; 400 unless 1-64 letters, digits, ``.``, ``_`` or ``-``."""
    if not isinstance(value, str) or not NODE_ID.match(value):
        raise bad_request("node_id must be 1-64 letters, digits, '.', '_' or '-'", "node_id")
    return value


def check_ip(value: object, label: str) -> str | None:
    """A normalised IP address or None; 400 naming ``label`` otherwise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{label} must be a string", label)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise bad_request(f"{label} {value!r} is not an IP address", label) from None
