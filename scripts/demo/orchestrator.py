"""What an orchestrator and a container runtime do: REST calls to the managers, node attaches."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import testbed as tb_lib

from demo import topology as topo
from demo.apis import NodeApiError
from demo.hierarchy import Hierarchy

LOG = logging.getLogger(__name__)

ATTACH_RETRY_S = 5.0  # a node may not have heard of a just-scheduled instance yet


@dataclass
class Placed:
    """An instance running in a container namespace on a worker."""

    plan: topo.ServicePlan
    number: int
    worker: str
    container: tb_lib.Container
    instance_ip: str | None = None
    instance_ip_v6: str | None = None
    namespace_ip: str | None = None
    attached_at: float = 0.0  # time.monotonic() when the node answered the attach

    @property
    def label(self) -> str:
        """How the tables name it: ``web.2@w1``."""
        return topo.instance_label(self.plan, self.number, self.worker)


class Orchestrator:
    """Deploys services and instances through the root's REST API with oakestra's bodies."""

    def __init__(self, hierarchy: Hierarchy):
        self.h = hierarchy
        self.jobs: dict[str, dict] = {}  # job id -> the root's job document
        self.placed: dict[tuple[str, int], Placed] = {}

    # -- services --------------------------------------------------------------------------

    def deploy_service(self, plan: topo.ServicePlan) -> dict:
        """POST /api/net/service/deploy; the job document with its service IPs."""
        doc = self.h.root_api.post(
            "/api/net/service/deploy",
            {"_id": plan.job_id, "deployment_descriptor": plan.descriptor()},
        )
        self.jobs[plan.job_id] = doc
        return doc

    def service_ip(self, plan: topo.ServicePlan, ip_type: str, v6: bool = False) -> str:
        """The service IP of ``ip_type`` (``RR``/``Closest``) from the job document."""
        entry = next(
            e for e in self.jobs[plan.job_id]["service_ip_list"] if e["IpType"] == ip_type
        )
        return entry["Address_v6" if v6 else "Address"]

    # -- instances -------------------------------------------------------------------------

    def schedule(self, plan: topo.ServicePlan, number: int, worker: str) -> dict:
        """Schedule an instance at the root on ``worker``, and tell its cluster manager."""
        spec = topo.WORKERS[worker]
        doc = self.h.root_api.post(
            "/api/net/instance/deploy",
            {
                "_id": plan.job_id,
                "instance_number": number,
                "cluster_id": spec.cluster_id,
                "worker_id": worker,
                "host_ip": spec.host.ip4,
            },
        )
        self.jobs[plan.job_id] = doc
        # The cluster orchestrator hands the service to its cluster's service manager.
        self.h.cluster_apis[spec.cluster_id].post(
            "/api/net/deployment", {"job_name": plan.job_name}
        )
        return doc

    def start(self, plan: topo.ServicePlan, number: int, worker: str, suffix: str = "") -> Placed:
        """Create the instance's container on ``worker``, start its servers, attach it."""
        container = self.h.tb.add_container(
            self.h.workers[worker], topo.container_name(plan, number, worker) + suffix
        )
        label = topo.instance_label(plan, number, worker)
        # The servers listen on the wildcard address: they serve from the moment of the attach.
        if plan.kind == "http":
            self.h.tb.start_http_server(container, label, plan.port)
        if plan.kind == "udp":
            self.h.tb.start_udp_echo(container, label, plan.port)
        if plan.udp_port:
            self.h.tb.start_udp_echo(container, label, plan.udp_port)
        answer = self.attach(worker, container, plan, number)
        placed = Placed(
            plan,
            number,
            worker,
            container,
            answer.get("instance_ip"),
            answer.get("instance_ip_v6"),
            answer.get("namespace_ip"),
            time.monotonic(),
        )
        self.placed[(plan.key, number)] = placed
        return placed

    def attach(
        self, worker: str, container: tb_lib.Container, plan: topo.ServicePlan, number: int
    ) -> dict:
        """POST /api/v1/containers at the node (retried while the node learns the instance)."""
        node = self.h.nodes[worker]
        body = {"netns": container.path, "service": plan.job_name, "instance": number}
        deadline = time.monotonic() + ATTACH_RETRY_S
        while True:
            try:
                return node.request("POST", "/api/v1/containers", body)
            except NodeApiError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                LOG.debug("%s.%d not known at %s yet: %s", plan.key, number, worker, exc.body)
                time.sleep(0.1)

    def deploy(self, plan: topo.ServicePlan) -> list[Placed]:
        """Schedule and start every instance of ``plan`` where the plan says."""
        for number, worker in enumerate(plan.placement):
            self.schedule(plan, number, worker)
        return [self.start(plan, number, worker) for number, worker in enumerate(plan.placement)]

    def stop(self, plan: topo.ServicePlan, number: int) -> Placed:
        """Undeploy an instance at the root, detach it at its node, remove its container."""
        placed = self.placed.pop((plan.key, number))
        self.jobs[plan.job_id] = self.h.root_api.delete(f"/api/net/{plan.job_id}/{number}")
        self.h.nodes[placed.worker].request(
            "DELETE", f"/api/v1/containers/{plan.job_name}/{number}"
        )
        return placed

    def move(self, plan: topo.ServicePlan, number: int, worker: str) -> Placed:
        """Move an instance: undeploy + detach where it ran, schedule + attach on ``worker``."""
        self.stop(plan, number)
        self.schedule(plan, number, worker)
        return self.start(plan, number, worker, suffix="m")
