"""Conversion between ``oaknet.model`` records and oakestra-net's JSON job documents.

A job document is what the reference's managers store and return: ``_id``, ``job_name``, the
deployment descriptor's fields, ``service_ip_list`` ``[{IpType, Address, Address_v6}]`` and
``instance_list``.
"""

from __future__ import annotations

from typing import Any

from oaknet.model import (
    IP_TYPE_OF_POLICY,
    POLICY_OF_IP_TYPE,
    Instance,
    ModelError,
    Service,
    ServiceIP,
    parse_job_name,
    valid_name_part,
)

INSTANCE_IP_TYPE = "instance_ip"  # the extra service_ip entry of a table-query result
NAME_FIELDS = ("app_name", "app_ns", "service_name", "service_ns")
# The system manager sends both spellings of the service's name parts.
ALT_NAME_FIELDS = {"service_name": "microservice_name", "service_ns": "microservice_namespace"}
# Fields oaknet computes itself; a descriptor may not set them.
COMPUTED_FIELDS = ("_id", "job_name", "service_ip_list", "instance_list")


def job_name_from_descriptor(descriptor: dict) -> str:
    """``app.appns.service.servicens`` from a deployment descriptor; ModelError names the field."""
    for alt in ALT_NAME_FIELDS.values():
        if alt in descriptor:
            _check_part(descriptor[alt], alt)
    parts = []
    for name in NAME_FIELDS:
        label, value = name, descriptor.get(name)
        if value is None and name in ALT_NAME_FIELDS:
            label = ALT_NAME_FIELDS[name]
            value = descriptor.get(label)
        if value is None:
            raise ModelError(f"deployment_descriptor.{name}", "is required")
        parts.append(_check_part(value, label))
    return ".".join(parts)


def _check_part(value: Any, label: str) -> str:
    if not isinstance(value, str):
        raise ModelError(f"deployment_descriptor.{label}", "must be a string")
    if not valid_name_part(value):
        raise ModelError(f"deployment_descriptor.{label}", "must be 1-30 letters or digits")
    return value


def service_ip_list(service: Service) -> list[dict]:
    """The reference's ``service_ip_list`` of a service (``RR`` first, then ``Closest``)."""
    return [
        {"IpType": IP_TYPE_OF_POLICY[s.policy], "Address": s.ipv4, "Address_v6": s.ipv6}
        for s in service.service_ips
    ]


def instance_entry(inst: Instance) -> dict:
    """One ``instance_list`` element of a job document."""
    return {
        "instance_number": inst.number,
        "instance_ip": inst.instance_ip,
        "instance_ip_v6": inst.instance_ip_v6,
        "cluster_id": inst.cluster_id,
        "worker_id": inst.node_id,
        "host_ip": inst.node_ip,
        "host_port": inst.host_port,
        "namespace_ip": inst.namespace_ip,
        "namespace_ip_v6": inst.namespace_ip_v6,
        "status": inst.status,
    }


def job_document(service: Service, descriptor: dict | None = None) -> dict:
    """The reference's job document: descriptor fields spread at top level, ours win."""
    doc: dict[str, Any] = dict(descriptor or {})
    doc.update(
        _id=service.job_id,
        job_name=service.name,
        service_ip_list=service_ip_list(service),
        instance_list=[instance_entry(i) for i in service.instances],
    )
    return doc


def service_from_job(doc: dict) -> Service:
    """A Service from a job document (unknown IpTypes such as ``instance_ip`` are skipped)."""
    if not isinstance(doc, dict):
        raise ModelError("job", "must be an object")
    name = doc.get("job_name")
    parse_job_name(name)
    sips = []
    for entry in doc.get("service_ip_list") or []:
        policy = POLICY_OF_IP_TYPE.get(entry.get("IpType"))
        if policy is not None:
            sips.append(ServiceIP(policy, entry.get("Address"), entry.get("Address_v6")))
    instances = []
    for entry in doc.get("instance_list") or []:
        port = entry.get("host_port")
        instances.append(
            Instance(
                number=int(entry["instance_number"]),
                instance_ip=entry.get("instance_ip"),
                instance_ip_v6=entry.get("instance_ip_v6"),
                cluster_id=_str_or_none(entry.get("cluster_id")),
                node_id=_str_or_none(entry.get("worker_id")),
                node_ip=entry.get("host_ip"),
                namespace_ip=entry.get("namespace_ip"),
                namespace_ip_v6=_v6_or_none(entry.get("namespace_ip_v6")),
                host_port=int(port) if port not in (None, "") else None,
                status=entry.get("status") or "scheduled",
            )
        )
    service = Service(
        name=name, job_id=_str_or_none(doc.get("_id")), service_ips=sips, instances=instances
    )
    service.validate()
    return service


def descriptor_of_job(doc: dict) -> dict:
    """The descriptor part of a job document (everything oaknet does not compute)."""
    return {k: v for k, v in doc.items() if k not in COMPUTED_FIELDS}


def table_entries(service: Service) -> list[dict]:
    """Table-query result entries: each instance with the service IPs plus its instance IP."""
    sips = service_ip_list(service)
    out = []
    for inst in service.instances:
        entry = instance_entry(inst)
        entry["service_ip"] = sips + [
            {
                "IpType": INSTANCE_IP_TYPE,
                "Address": inst.instance_ip,
                "Address_v6": inst.instance_ip_v6,
            }
        ]
        out.append(entry)
    return out


def netinfo(service: Service, descriptor: dict | None = None) -> dict:
    """The public netinfo document: no namespace or host data."""
    descriptor = descriptor or {}
    out: dict[str, Any] = {
        k: descriptor[k]
        for k in ("applicationID", "app_ns", "app_name", "service_ns", "service_name")
        if descriptor.get(k) is not None
    }
    out["_id"] = service.job_id
    out["service_job_id"] = service.job_id
    out["service_ip_list"] = service_ip_list(service)
    out["instance_list"] = [
        {
            k: v
            for k, v in (
                ("cluster_id", i.cluster_id),
                ("instance_number", i.number),
                ("instance_ip", i.instance_ip),
                ("instance_ip_v6", i.instance_ip_v6),
            )
            if v is not None
        }
        for i in service.instances
    ]
    return out


def decode_path_name(text: str) -> str:
    """A job name or IPv4 address from a URL path segment (``_`` stands for ``.``)."""
    return text.replace("_", ".")


def encode_path_name(text: str) -> str:
    """The URL path form of a job name or IP address."""
    return text.replace(".", "_")


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _v6_or_none(value: Any) -> str | None:
    # The reference's node manager reports "<nil>" for a missing IPv6 address.
    return None if value in (None, "", "<nil>") else value
