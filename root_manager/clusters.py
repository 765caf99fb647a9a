"""Registered clusters, the services each is interested in, and node subnets handed to them."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid
from typing import Any

from oaknet.pools import Pools
from oaknet.store import Store
from oaknet.web import bad_request, not_found

LOG = logging.getLogger(__name__)

CLUSTER = "cluster"  # key: cluster id
INTEREST = "interest"  # key: <cluster id>/<job name>; terms cluster=<id>, job=<name>
SUBNET = "subnet"  # key: owner (cluster/node); terms addr=<subnet address>, cluster=<id>
CLUSTER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class Clusters:
    """Cluster records and their interests; node subnets from the pools."""

    def __init__(self, store: Store, pools: Pools):
        self.store = store
        self.pools = pools
        # Interest keys this process saw stored: a hint only (another process sharing the
        # store may have removed one); the store stays the authority for every answer.
        self._seen: set[str] = set()

    def register(self, cluster_id: Any, address: Any, port: Any) -> dict:
        """Create or update a cluster (status ACTIVE); its interests are kept."""
        cluster_id = check_cluster_id(cluster_id)
        address = _check_address(address)
        port = _check_port(port)
        with self.store.transaction() as tx:
            doc = tx.get(CLUSTER, cluster_id) or {"cluster_id": cluster_id}
            doc.update(
                cluster_address=address,
                cluster_port=port,
                status="ACTIVE",
                registered_at=time.time(),
            )
            tx.put(CLUSTER, cluster_id, doc)
        LOG.info("cluster %s registered at %s port %s", cluster_id, address, port)
        return doc

    def set_status(self, cluster_id: str, status: str) -> None:
        """Mark a cluster ACTIVE or ERROR (whether pushes to it succeed)."""
        with self.store.transaction() as tx:
            doc = tx.get(CLUSTER, cluster_id)
            if doc is None or doc.get("status") == status:
                return
            doc["status"] = status
            tx.put(CLUSTER, cluster_id, doc)
        LOG.info("cluster %s is now %s", cluster_id, status)

    def get(self, cluster_id: str) -> dict | None:
        """The cluster record, or None."""
        return self.store.get(CLUSTER, cluster_id)

    def count(self) -> int:
        """How many clusters are registered."""
        return self.store.count(CLUSTER)

    def interests(self, cluster_id: str) -> set[str]:
        """The job names the cluster is interested in (indexed)."""
        return {d["job_name"] for _, d in self.store.find(INTEREST, f"cluster={cluster_id}")}

    def is_interested(self, cluster_id: str, job_name: str) -> bool:
        """Whether the cluster asked for ``job_name`` (one key lookup)."""
        return self.store.get(INTEREST, _interest_key(cluster_id, job_name)) is not None

    def interested(self, job_name: str) -> list[dict]:
        """The records of every cluster interested in ``job_name`` (indexed)."""
        found = self.store.find(INTEREST, f"job={job_name}")
        docs = (self.store.get(CLUSTER, d["cluster_id"]) for _, d in found)
        return [d for d in docs if d is not None]

    def add_interest(self, cluster_id: str, job_name: str) -> bool:
        """Register the cluster's interest in a job; True when it is new (a write only then)."""
        key = _interest_key(cluster_id, job_name)
        # Clusters are never removed, so a stored interest proves the cluster registered: the
        # repeated query, the common one, costs one read.
        if self.store.get(INTEREST, key) is not None:
            self._seen.add(key)
            return False
        if self.store.get(CLUSTER, cluster_id) is None:
            raise not_found(f"cluster {cluster_id} is not registered", "cluster_id")
        with self.store.transaction() as tx:
            doc = {"cluster_id": cluster_id, "job_name": job_name}
            if not tx.create(INTEREST, key, doc, [f"cluster={cluster_id}", f"job={job_name}"]):
                return False
        self._seen.add(key)
        LOG.debug("cluster %s is interested in %s", cluster_id, job_name)
        return True

    def seen_interest(self, cluster_id: str, job_name: str) -> bool:
        """True when this process saw the interest stored (a query then only reads)."""
        return _interest_key(cluster_id, job_name) in self._seen

    def remove_interest(self, cluster_id: str, job_name: str) -> bool:
        """Drop the cluster's interest in a job; True when it had one."""
        if self.store.get(CLUSTER, cluster_id) is None:
            raise not_found(f"cluster {cluster_id} is not registered", "cluster_id")
        with self.store.transaction() as tx:
            removed = tx.delete(INTEREST, _interest_key(cluster_id, job_name))
        self._seen.discard(_interest_key(cluster_id, job_name))
        if removed:
            LOG.debug("cluster %s lost interest in %s", cluster_id, job_name)
        return removed

    def allocate_subnet(self, cluster_id: str, node_id: str | None = None) -> dict:
        """A node subnet pair (v4 + v6) for the cluster; the same node gets the same pair."""
        if node_id is not None and not CLUSTER_ID.match(node_id):
            raise bad_request("node must be 1-64 letters, digits, '.', '_' or '-'", "node")
        owner = f"{cluster_id}/{node_id or uuid.uuid4().hex}"
        with self.store.transaction() as tx:
            doc = tx.get(SUBNET, owner)
            if doc is None:
                v4 = self.pools.subnet_v4.allocate(tx, f"subnet/{owner}", "subnet_addr")
                v6 = self.pools.subnet_v6.allocate(tx, f"subnet/{owner}", "subnet_addr_v6")
                doc = {
                    "owner": owner,
                    "cluster_id": cluster_id,
                    "node_id": node_id,
                    "subnet_addr": v4,
                    "subnet_addr_v6": v6,
                }
                tx.put(SUBNET, owner, doc, [f"addr={v4}", f"addr={v6}", f"cluster={cluster_id}"])
                LOG.info(
                    "subnets %s/%d and %s/%d given to cluster %s%s",
                    v4,
                    self.pools.subnet_v4.block_prefix,
                    v6,
                    self.pools.subnet_v6.block_prefix,
                    cluster_id,
                    f" node {node_id}" if node_id else "",
                )
        return self.subnet_answer(doc)

    def release_subnet(self, cluster_id: str | None, address: str) -> dict:
        """Give a node's subnet pair back (by either address); ``cluster_id`` must own it."""
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise bad_request(f"{address!r} is not an IP address", "subnet") from None
        with self.store.transaction() as tx:
            found = tx.find(SUBNET, f"addr={address}")
            if not found or (cluster_id is not None and found[0][1]["cluster_id"] != cluster_id):
                raise not_found(f"no subnet {address} held by this cluster", "subnet")
            owner, doc = found[0]
            self.pools.subnet_v4.release(tx, doc["subnet_addr"], f"subnet/{owner}")
            self.pools.subnet_v6.release(tx, doc["subnet_addr_v6"], f"subnet/{owner}")
            tx.delete(SUBNET, owner)
        LOG.info(
            "subnets %s and %s of cluster %s released",
            doc["subnet_addr"],
            doc["subnet_addr_v6"],
            doc["cluster_id"],
        )
        return self.subnet_answer(doc)

    def subnet_answer(self, doc: dict) -> dict:
        """The reference's subnet answer plus the prefix lengths."""
        return {
            "subnet_addr": doc["subnet_addr"],
            "subnet_addr_v6": doc["subnet_addr_v6"],
            "subnet_prefix": self.pools.subnet_v4.block_prefix,
            "subnet_prefix_v6": self.pools.subnet_v6.block_prefix,
        }


def check_cluster_id(value: Any) -> str:
    """A cluster id as text; 400 unless 1-64 letters, digits, ``.``, ``_`` or ``-``."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise bad_request("cluster_id must be a string", "cluster_id")
    text = str(value)
    if not CLUSTER_ID.match(text):
        raise bad_request("cluster_id must be 1-64 letters, digits, '.', '_' or '-'", "cluster_id")
    return text


def _check_address(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise bad_request("cluster_address must be an IP address or host name", "cluster_address")
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        if HOSTNAME.match(value):
            return value
    raise bad_request(f"{value!r} is not an IP address or host name", "cluster_address")


def _check_port(value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise bad_request("cluster_port must be an integer within 1..65535", "cluster_port")
    return value


def _interest_key(cluster_id: str, job_name: str) -> str:
    return f"{cluster_id}/{job_name}"
