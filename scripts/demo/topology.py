"""The demo's fixed shape: hosts, clusters, workers, delays, services and where they run."""

from __future__ import annotations

from dataclasses import dataclass

ROOT_PORT = 10099
CLUSTER_PORT = 10110
APP = "demo"
NAMESPACE = "default"
# One-way delays between worker nodes: inside a cluster, and between the two clusters.
DELAY_SAME_CLUSTER_MS = 1.0
DELAY_OTHER_CLUSTER_MS = 5.0


@dataclass(frozen=True)
class HostSpec:
    """A namespace on the underlay: its short name and addresses."""

    name: str
    ip4: str
    ip6: str


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster: its id, the host of its manager and its worker nodes."""

    cluster_id: str
    manager: HostSpec
    workers: tuple[str, ...]

    @property
    def url(self) -> str:
        """The cluster manager's base URL on the underlay."""
        return f"http://{self.manager.ip4}:{CLUSTER_PORT}"


@dataclass(frozen=True)
class WorkerSpec:
    """A worker node: its host, its cluster and the node id in its token."""

    host: HostSpec
    cluster_id: str

    @property
    def name(self) -> str:
        """The node id (also the namespace's short name)."""
        return self.host.name


@dataclass(frozen=True)
class ServicePlan:
    """A service of the demo: its server kind and port, and the worker of each instance."""

    key: str
    job_id: str
    kind: str  # "http" (HTTP on port, UDP echo on udp_port), "udp" or "client"
    port: int
    placement: tuple[str, ...]
    udp_port: int | None = None

    @property
    def job_name(self) -> str:
        """The oakestra job name ``app.appns.service.servicens``."""
        return f"{APP}.{NAMESPACE}.{self.key}.{NAMESPACE}"

    def descriptor(self) -> dict:
        """The deployment descriptor an orchestrator sends with ``/api/net/service/deploy``."""
        return {
            "app_name": APP,
            "app_ns": NAMESPACE,
            "service_name": self.key,
            "service_ns": NAMESPACE,
            "microservice_name": self.key,
            "microservice_namespace": NAMESPACE,
            "applicationID": f"app-{APP}",
        }


ROOT = HostSpec("root", "192.0.2.10", "2001:db8::10")
CLUSTERS = (
    ClusterSpec("c1", HostSpec("cm1", "192.0.2.11", "2001:db8::11"), ("w1", "w2")),
    ClusterSpec("c2", HostSpec("cm2", "192.0.2.12", "2001:db8::12"), ("w3", "w4")),
)
WORKERS = {
    f"w{i}": WorkerSpec(HostSpec(f"w{i}", f"192.0.2.{i}", f"2001:db8::{i}"), cluster)
    for i, cluster in ((1, "c1"), (2, "c1"), (3, "c2"), (4, "c2"))
}

# web: round robin over 3 instances in both clusters (HTTP, plus a UDP echo on 9000);
# echo: UDP echo, 2 instances; near: closest, one instance per cluster; client: one
# instance per worker, the containers the clients run in.
WEB = ServicePlan("web", "demo-web", "http", 80, ("w2", "w3", "w4"), udp_port=9000)
ECHO = ServicePlan("echo", "demo-echo", "udp", 7000, ("w2", "w3"))
NEAR = ServicePlan("near", "demo-near", "http", 80, ("w2", "w3"))
CLIENT = ServicePlan("client", "demo-client", "client", 0, ("w1", "w2", "w3", "w4"))
SERVICES = (WEB, ECHO, NEAR, CLIENT)
# The clients that use the services: client instance number -> its worker.
CLIENT_NODES = ("w1", "w4")
# The instance that moves, and where to.
MOVE_INSTANCE = 2
MOVE_TO = "w1"


def cluster_of(worker: str) -> ClusterSpec:
    """The cluster a worker belongs to."""
    return next(c for c in CLUSTERS if worker in c.workers)


def delay_ms(a: str, b: str) -> float:
    """The one-way delay between two workers."""
    return DELAY_SAME_CLUSTER_MS if cluster_of(a) == cluster_of(b) else DELAY_OTHER_CLUSTER_MS


def client_instance(worker: str) -> int:
    """The client service's instance number on ``worker``."""
    return CLIENT.placement.index(worker)


def instance_label(plan: ServicePlan, number: int, worker: str) -> str:
    """How the demo's servers and tables name an instance: ``web.2@w1``."""
    return f"{plan.key}.{number}@{worker}"


def container_name(plan: ServicePlan, number: int, worker: str) -> str:
    """The short namespace name of an instance's container (``web2w1``)."""
    return f"{plan.key}{number}{worker}"
