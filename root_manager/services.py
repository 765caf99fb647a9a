"""The global service table: services, their service IPs and instances, with their addresses.

Every change is one store transaction that also emits a change (kind ``service``, subject = the
job name) for the watchers; a failed check rolls everything back, so a refused request leaves the
store as it was.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from oaknet.model import CLOSEST, ROUND_ROBIN, Instance, ModelError, Service, ServiceIP
from oaknet.oakestra import job_name_from_descriptor
from oaknet.pools import AddressPool, Pools
from oaknet.store import DELETE, PUT, Reader, Store, Tx
from oaknet.web import ApiError, bad_request, conflict, not_found
from root_manager.notify import DEPLOYMENT, UNDEPLOYMENT

LOG = logging.getLogger(__name__)

SERVICE = "service"  # key: job id
SERVICE_NAME = "service_name"  # key: job name -> {"job_id"}: one id per name, claimed atomically
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
UNDEPLOY_ALL = -1


@dataclass
class Record:
    """A stored service: the model record plus the reference's descriptor fields."""

    service: Service
    descriptor: dict = field(default_factory=dict)

    def to_doc(self) -> dict:
        """The stored (and fed) document."""
        return {"service": self.service.to_dict(), "descriptor": self.descriptor}

    @classmethod
    def from_doc(cls, doc: dict) -> Record:
        """Read back ``to_doc`` output."""
        return cls(Service.from_dict(doc["service"]), doc.get("descriptor") or {})

    def terms(self) -> list[str]:
        """Index terms: the name, every service/instance IP, every cluster it runs in."""
        svc = self.service
        out = [f"name={svc.name}"]
        for sip in svc.service_ips:
            out += [f"ip={a}" for a in (sip.ipv4, sip.ipv6) if a]
        for inst in svc.instances:
            out += [f"ip={a}" for a in (inst.instance_ip, inst.instance_ip_v6) if a]
            if inst.cluster_id:
                out.append(f"cluster={inst.cluster_id}")
        return out


# The descriptor fields that choose a service IP, with the policy and family they set.
CUSTOM_IP_FIELDS = {
    "RR_ip": (ROUND_ROBIN, 4),
    "RR_ip_v6": (ROUND_ROBIN, 6),
    "Closest_ip": (CLOSEST, 4),
    "Closest_ip_v6": (CLOSEST, 6),
}


class Services:
    """Operations on the service table; raise ApiError/ModelError/PoolError on bad requests."""

    def __init__(
        self,
        store: Store,
        pools: Pools,
        notify: Callable[[str, list[int], str], None] | None = None,
    ):
        self.store = store
        self.pools = pools
        # Called after a commit with (job name, instance numbers, DEPLOYMENT|UNDEPLOYMENT).
        self._notify = notify or (lambda name, numbers, kind: None)

    # -- queries -----------------------------------------------------------------------------

    def get(self, job_id: str, reader: Reader | None = None) -> Record | None:
        """The service with ``job_id``, or None."""
        doc = (reader or self.store).get(SERVICE, job_id)
        return Record.from_doc(doc) if doc else None

    def by_name(self, name: str, reader: Reader | None = None) -> Record | None:
        """The service named ``name`` (indexed lookup), or None."""
        found = (reader or self.store).find(SERVICE, f"name={name}")
        return Record.from_doc(found[0][1]) if found else None

    def by_ip(self, address: str, reader: Reader | None = None) -> Record | None:
        """The service owning a service IP or instance IP, or None."""
        found = (reader or self.store).find(SERVICE, f"ip={address}")
        return Record.from_doc(found[0][1]) if found else None

    def by_names(self, names: set[str]) -> list[Record]:
        """The services of ``names`` that exist."""
        return [r for r in (self.by_name(n) for n in sorted(names)) if r is not None]

    def all(self) -> list[Record]:
        """Every service."""
        return [Record.from_doc(doc) for _, doc in self.store.items(SERVICE)]

    def count(self) -> int:
        """How many services exist."""
        return self.store.count(SERVICE)

    # -- services ----------------------------------------------------------------------------

    def deploy(self, job_id: Any, descriptor: Any) -> tuple[Record, bool]:
        """Create a service with its service IPs; (record, created). Same id again: no change."""
        job_id = check_job_id(job_id)
        if not isinstance(descriptor, dict):
            raise bad_request("deployment_descriptor must be an object", "deployment_descriptor")
        _check_keys(descriptor, "deployment_descriptor")
        name = job_name_from_descriptor(descriptor)
        wanted = {}
        for key, (policy, version) in CUSTOM_IP_FIELDS.items():
            value = descriptor.get(key)
            if value not in (None, ""):
                if not isinstance(value, str):
                    raise bad_request(f"{key} must be a string", f"deployment_descriptor.{key}")
                wanted[key] = value

        with self.store.transaction() as tx:
            existing = self.get(job_id, tx)
            if existing is not None:
                return self._redeploy(existing, name, wanted), False
            if not tx.create(SERVICE_NAME, name, {"job_id": job_id}):
                holder = (tx.get(SERVICE_NAME, name) or {}).get("job_id")
                raise conflict(f"service {name} already exists with id {holder}", "job_name")
            service = Service(name=name, job_id=job_id)
            for policy in (ROUND_ROBIN, CLOSEST):
                v4 = self._service_address(tx, job_id, policy, 4, wanted)
                v6 = self._service_address(tx, job_id, policy, 6, wanted)
                service.service_ips.append(ServiceIP(policy, v4, v6))
            service.validate()
            record = Record(service, descriptor)
            self._save(tx, record)
        LOG.info(
            "service %s (%s) deployed: %s",
            name,
            job_id,
            ", ".join(f"{s.policy} {s.ipv4} {s.ipv6}" for s in service.service_ips),
        )
        return record, True

    def remove(self, job_id: str) -> Record:
        """Delete a service without instances and release its service IPs."""
        with self.store.transaction() as tx:
            record = self._require(tx, job_id)
            if record.service.instances:
                numbers = ", ".join(str(i.number) for i in record.service.instances)
                raise conflict(f"instances still deployed: {numbers}", "_id")
            for sip in record.service.service_ips:
                owner = _service_owner(job_id, sip.policy)
                for version, address in ((4, sip.ipv4), (6, sip.ipv6)):
                    if address:
                        self._pool_for(sip.policy, version).release(tx, address, owner)
            held = tx.get(SERVICE_NAME, record.service.name)
            if held and held.get("job_id") == job_id:
                tx.delete(SERVICE_NAME, record.service.name)
            tx.delete(SERVICE, job_id)
            tx.emit(SERVICE, job_id, DELETE, record.service.name, record.to_doc())
        LOG.info("service %s (%s) removed", record.service.name, job_id)
        return record

    # -- instances ---------------------------------------------------------------------------

    def deploy_instance(
        self,
        job_id: Any,
        number: int,
        cluster_id: str,
        node_id: str | None = None,
        node_ip: str | None = None,
    ) -> Record:
        """Add an instance (with its instance IPs) or move an existing one to a new place."""
        job_id = check_job_id(job_id)
        with self.store.transaction() as tx:
            record = self._require(tx, job_id)
            inst = record.service.instance(number)
            if inst is None:
                owner = _instance_owner(job_id, number)
                inst = Instance(
                    number=number,
                    instance_ip=self.pools.service_v4.allocate(tx, owner, "instance_ip"),
                    instance_ip_v6=self.pools.instance_v6.allocate(tx, owner, "instance_ip_v6"),
                    cluster_id=cluster_id,
                    node_id=node_id,
                    node_ip=node_ip,
                )
                record.service.instances.append(inst)
                what = "deployed"
            elif (inst.cluster_id, inst.node_id, inst.node_ip) == (cluster_id, node_id, node_ip):
                return record
            else:
                # A move: the instance IPs stay, where it runs is reported again.
                inst.cluster_id, inst.node_id, inst.node_ip = cluster_id, node_id, node_ip
                inst.namespace_ip = inst.namespace_ip_v6 = inst.host_port = None
                inst.status = "scheduled"
                what = "moved"
            inst.validate()
            record.service.instances.sort(key=lambda i: i.number)
            self._save(tx, record)
        LOG.info(
            "instance %s/%d %s to cluster %s%s (%s, %s)",
            record.service.name,
            number,
            what,
            cluster_id,
            f" node {node_id or node_ip}" if node_id or node_ip else "",
            inst.instance_ip,
            inst.instance_ip_v6,
        )
        return record

    def undeploy_instance(self, job_id: str, number: int) -> Record:
        """Remove one instance (``-1``: all) and release its instance IPs."""
        with self.store.transaction() as tx:
            record = self._require(tx, job_id)
            svc = record.service
            if number == UNDEPLOY_ALL:
                gone = svc.instances
            else:
                gone = [i for i in svc.instances if i.number == number]
                if not gone:
                    raise not_found(
                        f"service {svc.name} has no instance {number}", "instance_number"
                    )
            svc.instances = [i for i in svc.instances if i not in gone]
            for inst in gone:
                # Release only addresses this very instance holds: a claim re-used by another
                # owner meanwhile is not ours to free.
                owner = _instance_owner(job_id, inst.number)
                if inst.instance_ip:
                    self.pools.service_v4.release(tx, inst.instance_ip, owner)
                if inst.instance_ip_v6:
                    self.pools.instance_v6.release(tx, inst.instance_ip_v6, owner)
            self._save(tx, record)
        for inst in gone:
            LOG.info(
                "instance %s/%d undeployed, %s %s released",
                svc.name,
                inst.number,
                inst.instance_ip,
                inst.instance_ip_v6,
            )
        self._notify(svc.name, [i.number for i in gone], UNDEPLOYMENT)
        return record

    def report(self, job_id: Any, reports: list[dict], cluster: str | None) -> Record:
        """Record where instances run (namespace IPs, node); ``cluster`` limits to its own."""
        job_id = check_job_id(job_id, "job_id")
        with self.store.transaction() as tx:
            record = self._require(tx, job_id)
            for i, rep in enumerate(reports):
                label = f"instances[{i}]"
                inst = record.service.instance(rep["instance_number"])
                if inst is None:
                    raise not_found(
                        f"service {record.service.name} has no instance {rep['instance_number']}",
                        f"{label}.instance_number",
                    )
                if cluster is not None and inst.cluster_id != cluster:
                    raise ApiError(
                        403,
                        "forbidden",
                        f"instance {inst.number} is placed in "
                        f"cluster {inst.cluster_id}, not {cluster}",
                        label,
                    )
                if rep.get("status") == "stopped":
                    if rep.get("worker_id") in (None, inst.node_id):  # not placed anew since
                        inst.namespace_ip = inst.namespace_ip_v6 = None
                        inst.status = "stopped"
                    continue
                inst.namespace_ip = rep["namespace_ip"]
                inst.namespace_ip_v6 = rep["namespace_ip_v6"]
                inst.node_ip = rep["host_ip"]
                inst.host_port = rep["host_port"]
                if rep.get("worker_id"):
                    inst.node_id = rep["worker_id"]
                inst.status = "running"
                try:
                    inst.validate()
                except ModelError as exc:
                    raise ModelError(f"{label}.{exc.field}", exc.message) from None
            self._save(tx, record)
        LOG.info(
            "service %s: instances %s reported %s",
            record.service.name,
            ", ".join(str(r["instance_number"]) for r in reports),
            "/".join(sorted({r.get("status", "running") for r in reports})),
        )
        self._notify(record.service.name, [r["instance_number"] for r in reports], DEPLOYMENT)
        return record

    # -- helpers -----------------------------------------------------------------------------

    def _require(self, tx: Tx, job_id: str) -> Record:
        record = self.get(job_id, tx)
        if record is None:
            raise not_found(f"no service with id {job_id}", "_id")
        return record

    def _save(self, tx: Tx, record: Record) -> None:
        doc = record.to_doc()
        tx.put(SERVICE, record.service.job_id, doc, record.terms())
        tx.emit(SERVICE, record.service.job_id, PUT, record.service.name, doc)

    def _redeploy(self, existing: Record, name: str, wanted: dict) -> Record:
        if existing.service.name != name:
            raise conflict(
                f"id {existing.service.job_id} is service {existing.service.name}", "_id"
            )
        for key, value in wanted.items():
            policy, version = CUSTOM_IP_FIELDS[key]
            sip = existing.service.service_ip(policy)
            have = sip.ipv4 if version == 4 else sip.ipv6
            if _normal(value) != have:
                raise conflict(f"service already has {key} {have}", f"deployment_descriptor.{key}")
        return existing

    def _service_address(
        self, tx: Tx, job_id: str, policy: str, version: int, wanted: dict
    ) -> str:
        key = next(k for k, v in CUSTOM_IP_FIELDS.items() if v == (policy, version))
        pool = self._pool_for(policy, version)
        owner = _service_owner(job_id, policy)
        label = f"deployment_descriptor.{key}"
        if key in wanted:
            return pool.claim(tx, wanted[key], owner, label)
        return pool.allocate(tx, owner, label)

    def _pool_for(self, policy: str, version: int) -> AddressPool:
        if version == 4:
            return self.pools.service_v4
        return self.pools.round_robin_v6 if policy == ROUND_ROBIN else self.pools.closest_v6


def check_job_id(value: Any, label: str = "_id") -> str:
    """A job id as text; 400 unless it is 1-64 letters, digits, ``_`` or ``-``."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise bad_request(f"{label} must be a string", label)
    text = str(value)
    if not JOB_ID.match(text):
        raise bad_request(f"{label} must be 1-64 letters, digits, '_' or '-'", label)
    return text


def _service_owner(job_id: str, policy: str) -> str:
    return f"service/{job_id}/{policy}"


def _instance_owner(job_id: str, number: int) -> str:
    return f"instance/{job_id}/{number}"


def _normal(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def _check_keys(value: Any, label: str) -> None:
    """Refuse keys a document store cannot hold (``$...``, dotted, NUL)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("$") or "." in key or "\0" in key:
                raise bad_request(f"key {key!r} is not allowed", label)
            _check_keys(item, f"{label}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_keys(item, f"{label}[{i}]")
