"""The cluster's table operations: resolution through the root, interests and node reports.

A service the cluster has not cached is resolved at the root (which then counts this cluster as
interested and feeds it every change); a service no node needs any more is dropped and the
root is told. Calls that change a service's lifecycle at the root hold a lock per service, so a
removal can never overtake a new interest in the same service.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from cluster_manager.cache import Cache, Entry
from cluster_manager.nodes import Nodes
from cluster_manager.rootlink import (
    ClientError,
    RootLink,
    RootUnregistered,
    Unavailable,
    upstream_error,
)
from oaknet import oakestra
from oaknet.model import Instance, ModelError, Service
from oaknet.web import ApiError, bad_request, conflict, not_found

LOG = logging.getLogger(__name__)

ROOT_FAILURES = (ClientError, Unavailable, RootUnregistered)


class Table:
    """What the cluster's endpoints do; raise ApiError with the field at fault."""

    def __init__(self, cache: Cache, root: RootLink, nodes: Nodes):
        self.cache = cache
        self.root = root
        self.nodes = nodes
        self._locks = _KeyedLock()

    # -- resolution --------------------------------------------------------------------------

    def query_name(self, name: str, node_id: str | None = None) -> Entry:
        """The cached service ``name`` (resolved at the root on a miss); registers interest."""
        with self._locks(name):
            entry = self.cache.entry(name)
            if entry is None or entry.service is None:
                entry = self._resolve(name)
            if node_id is not None and self.cache.add_interest(name, node_id):
                LOG.info("node %s is interested in %s", node_id, name)
            return entry

    def query_ip(self, address: str, node_id: str | None = None) -> Entry:
        """The service owning a service or instance IP; a miss is resolved at the root."""
        entry = self.cache.by_ip(address)
        if entry is None:
            try:
                name = self.root.job_by_ip(address)["job_name"]
            except ROOT_FAILURES as exc:
                if isinstance(exc, ClientError) and exc.status == 404:
                    raise not_found(f"no service has address {address}", "service_ip") from None
                raise upstream_error(exc) from None
            LOG.debug("%s resolved to %s at the root", address, name)
        else:
            name = entry.name
        return self.query_name(name, node_id)

    def deploy(self, name: str) -> Entry:
        """The cluster orchestrator runs ``name`` here: cache it and keep it (reference POST)."""
        with self._locks(name):
            self.query_name(name)
            entry = self.cache.set_deployed(name, True)
        LOG.info("service %s deployed in this cluster", name)
        return entry

    def undeploy(self, name: str) -> None:
        """The cluster orchestrator no longer runs ``name`` here; drop it unless nodes need it."""
        with self._locks(name):
            if self.cache.set_deployed(name, False) is None:
                raise not_found(f"service {name} is not deployed in this cluster", "job_name")
            self._drop(name)
        LOG.info("service %s undeployed from this cluster", name)

    def remove_interest(self, name: str, node_id: str) -> bool:
        """A node no longer needs ``name``; the last one out tells the root. True if it had it."""
        with self._locks(name):
            removed = self.cache.remove_interest(name, node_id)
            if removed:
                LOG.info("node %s is no longer interested in %s", node_id, name)
            self._drop(name)
        return removed

    def forget_node(self, node_id: str) -> None:
        """A node left: drop the services only it needed."""
        for name in self.nodes.deregister(node_id):
            with self._locks(name):
                self._drop(name)

    def refresh(self, name: str) -> None:
        """Fetch ``name`` from the root now (a push from the root, or repair after a resync)."""
        based_on = self.cache.position()
        if self.cache.entry(name) is None:
            return
        try:
            job = self.root.job_by_name(name)
        except ClientError as exc:
            if exc.status == 404:
                LOG.debug("refresh of %s: gone at the root; its feed says so", name)
                return
            raise
        service, descriptor = _parse(job)
        self.cache.write(service, descriptor, based_on)

    def send_removals(self) -> int:
        """Tell the root about interest removals it missed; how many are still pending."""
        left = 0
        for name in self.cache.pending_removals():
            with self._locks(name):
                if not self._tell_root(name):
                    left += 1
        return left

    # -- node reports ------------------------------------------------------------------------

    def report_deployed(
        self,
        node_id: str,
        name: str,
        number: int,
        namespace_ip: str | None,
        namespace_ip_v6: str | None,
        host_ip: str | None,
        host_port: int | None,
    ) -> Entry:
        """A node runs instance ``number`` of ``name``: forward it to the root and cache it."""
        node = self.nodes.require(node_id)
        host_ip = host_ip or node.get("host_ip")
        if host_ip is None:
            raise bad_request("host_ip is required (the node registered none)", "host_ip")
        if namespace_ip is None and namespace_ip_v6 is None:
            raise bad_request("nsip or nsipv6 is required", "nsip")
        entry = self.query_name(name, node_id)
        report = {
            "instance_number": number,
            "namespace_ip": namespace_ip,
            "namespace_ip_v6": namespace_ip_v6,
            "host_ip": host_ip,
            "host_port": host_port,
            "worker_id": node_id,
        }
        entry = self._forward(entry, report)
        self.cache.clear_stopped(name, number)
        LOG.info(
            "instance %s/%d runs on node %s (%s %s)",
            name,
            number,
            node_id,
            namespace_ip,
            namespace_ip_v6 or "",
        )
        return self.cache.entry(name) or entry

    def report_undeployed(self, node_id: str, name: str, number: int) -> Entry:
        """A node stopped instance ``number``: its cluster's nodes stop using it at once, the
        other clusters' nodes once the root has it."""
        entry, _inst = self._own_instance(node_id, name, number)
        entry = self.cache.mark_stopped(entry, number, node_id)
        LOG.info("instance %s/%d stopped on node %s", name, number, node_id)
        # The other clusters learn it from the root. When the root cannot be told now, the
        # node's report fails with 502/503 and the node sends it again later.
        report = {"instance_number": number, "status": "stopped", "worker_id": node_id}
        return self._forward(entry, report)

    def report_address(
        self, node_id: str, name: str, number: int, host_ip: str, host_port: int | None
    ) -> Entry:
        """A node's underlay address changed: forward it for its instance and cache it."""
        entry, inst = self._own_instance(node_id, name, number)
        if inst.namespace_ip is None and inst.namespace_ip_v6 is None:
            raise conflict(
                f"instance {number} of {name} was never reported deployed", "instance_number"
            )
        self.nodes.set_host(node_id, host_ip, host_port)
        report = {
            "instance_number": number,
            "namespace_ip": inst.namespace_ip,
            "namespace_ip_v6": inst.namespace_ip_v6,
            "host_ip": host_ip,
            "host_port": host_port,
            "worker_id": node_id,
        }
        entry = self._forward(entry, report)
        LOG.info("instance %s/%d: node %s now at %s", name, number, node_id, host_ip)
        return entry

    # -- helpers -----------------------------------------------------------------------------

    def _resolve(self, name: str) -> Entry:
        """Fetch a service the cache lacks; the caller holds the service's lock."""
        based_on = self.cache.open_entry(name)
        try:
            job = self.root.job_by_name(name)
            service, descriptor = _parse(job)
        except (ClientError, RootUnregistered) as exc:
            # A refused query registered no interest at the root: nothing to take back.
            self.cache.discard(name)
            if isinstance(exc, ClientError) and exc.status == 404:
                raise not_found(f"no service {name} at the root", "job_name") from None
            raise upstream_error(exc) from None
        except (Unavailable, ApiError) as exc:
            self.cache.drop_if_unused(name)
            if isinstance(exc, ApiError):
                raise
            raise upstream_error(exc) from None
        if service.name != name:
            self.cache.drop_if_unused(name)
            raise ApiError(502, "root refused", f"asked for {name}, got {service.name}")
        entry = self.cache.write(service, descriptor, based_on)
        if entry is None or entry.service is None:
            raise not_found(f"service {name} was removed meanwhile", "job_name")
        LOG.info("service %s cached from the root", name)
        return entry

    def _drop(self, name: str) -> None:
        if self.cache.drop_if_unused(name):
            self._tell_root(name)

    def _tell_root(self, name: str) -> bool:
        """Send a queued interest removal (caller holds the lock); True when done."""
        if self.cache.entry(name) is not None:
            self.cache.forget_removal(name)  # needed again meanwhile: keep the interest
            return True
        try:
            self.root.remove_interest(name)
        except RootUnregistered:
            LOG.warning("root does not know this cluster: no interest in %s to remove", name)
        except ROOT_FAILURES as exc:
            LOG.warning("root did not take the interest removal of %s yet: %s", name, exc)
            return False
        self.cache.forget_removal(name)
        LOG.info("root told: no node of this cluster needs %s", name)
        return True

    def _own_instance(self, node_id: str, name: str, number: int) -> tuple[Entry, Instance]:
        self.nodes.require(node_id)
        entry = self.cache.entry(name)
        if entry is None or entry.service is None:
            raise not_found(f"service {name} is not known in this cluster", "job_name")
        inst = entry.service.instance(number)
        if inst is None:
            raise not_found(f"service {name} has no instance {number}", "instance_number")
        if inst.node_id != node_id:
            raise conflict(
                f"instance {number} of {name} runs on node {inst.node_id}, not {node_id}",
                "instance_number",
            )
        return entry, inst

    def _forward(self, entry: Entry, report: dict) -> Entry:
        based_on = self.cache.position()
        try:
            job = self.root.report(entry.service.job_id, [report])
        except ROOT_FAILURES as exc:
            error = upstream_error(exc)
            if error.field and error.field.startswith("instances[0]."):
                error.field = error.field[len("instances[0].") :]  # the node's own field
            raise error from None
        service, descriptor = _parse(job)
        return self.cache.write(service, descriptor, based_on) or entry


def _parse(job: dict) -> tuple[Service, dict]:
    try:
        return oakestra.service_from_job(job), oakestra.descriptor_of_job(job)
    except (ModelError, KeyError, TypeError, ValueError) as exc:
        raise ApiError(502, "root refused", f"the root's job document is invalid: {exc}") from None


class _KeyedLock:
    """One re-entrant lock per key, created on use and dropped when nobody holds it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        with self._guard:
            slot = self._locks.setdefault(key, [threading.RLock(), 0])
            slot[1] += 1
        try:
            with slot[0]:
                yield
        finally:
            with self._guard:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._locks[key]
