"""Machine traffic of a healthy EKS cluster: kubelets, control plane, EKS-managed identities,
add-ons and application service accounts.

Every process is a clock (leases, scrapes, heartbeats), a reflector (back-to-back watches that
time out after 5 to 10 minutes, as client-go does) or a reaction to a change (the controller
cascade after a deploy in `Background.rollout`, the hourly CronJob). Rates are those of a real
four-node cluster at scale 1; `Cluster` sizing and the thinning factors keep volume
proportional to `scale`.
"""

from __future__ import annotations

import math
import random
from urllib.parse import quote

from . import objects as o
from .cluster import (
    ANONYMOUS,
    CERT_SECRETS,
    DISCOVERY,
    EKS_SERVICE_ACCOUNT,
    PUBLIC_INFO,
    Cluster,
    Node,
    Pod,
    Workload,
    binding_reason,
    rand_str,
    uuid4,
)
from .emit import HOUR, MINUTE, US, Actor, Emitter, Template, split_template
from .pki import csr_request

SECOND = US
DAY_US = 24 * HOUR
ALWAYS = (0, 1 << 62)


def ticks(h0: int, h1: int, period: int, phase: int) -> range:
    """The instants phase + k*period that fall in [h0, h1)."""
    k0 = -(-(h0 - phase) // period)
    return range(phase + k0 * period, h1, period)


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    k, p, limit = 0, rng.random(), math.exp(-lam)
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def arrivals(rng: random.Random, h0: int, h1: int, per_hour: float) -> list[int]:
    """Random (Poisson) event times in [h0, h1) at `per_hour` on average."""
    n = poisson(rng, per_hour * (h1 - h0) / HOUR)
    return sorted(h0 + rng.randrange(h1 - h0) for _ in range(n))


def escape(expr: str) -> str:
    """A label or field selector as it appears in a query string."""
    return quote(expr, safe="")


PROXY_SELECTOR = "labelSelector=" + escape("!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name")


class Reflector:
    """A client-go informer: back-to-back watches renewed every 5-10 minutes, an occasional
    relist. `keep` < 1 drops that share of watches (volume thinning at small scales)."""

    __slots__ = ("actor", "resource", "group", "version", "ns", "selector", "next_t", "until", "relist", "keep",
                 "template")

    def __init__(self, rng: random.Random, actor: Actor, resource: str, group: str, version: str, ns: str,
                 selector: str, start: int, until: int, relist: float, keep: float):
        self.actor, self.resource, self.group, self.version, self.ns = actor, resource, group, version, ns
        self.selector = f"{selector}&" if selector else ""
        self.next_t = start - rng.randrange(10 * MINUTE)
        self.until, self.relist, self.keep = until, relist, keep
        self.template: Template | None = None

    def run(self, em: Emitter, rng: random.Random, h0: int, h1: int) -> None:
        sel, rand = self.selector, rng.random
        if self.template is None:
            self.template = Template(em, self.actor, "watch", self.resource, self.ns, group=self.group,
                                     version=self.version)
        while self.next_t < h1:
            t = self.next_t
            dur = 300 * US + int(rand() * 300 * US)
            self.next_t = t + dur + 1000 + int(rand() * 250_000)
            if t >= self.until or (self.keep < 1.0 and rand() > self.keep):
                continue
            if rand() < self.relist:
                em.request(t, self.actor, "list", self.resource, self.ns, group=self.group, version=self.version,
                           query=f"{sel}limit=500&resourceVersion=0")
                t += 20_000 + int(rand() * 380_000)
            secs = dur // US
            query = (f"allowWatchBookmarks=true&{sel}resourceVersion={em.rv - int(rand() * 5000)}"
                     f"&timeout={secs // 60}m{secs % 60}s&timeoutSeconds={secs}&watch=true")
            self.template.emit(t, query, duration=dur)


class Clock:
    """A periodic action (lease renewal, scrape, heartbeat) with a fixed phase and jitter."""

    __slots__ = ("period", "phase", "jitter", "fn", "active")

    def __init__(self, rng: random.Random, period: float, fn, jitter: float, active: tuple[int, int]):
        self.period = max(1, int(period))
        self.phase = rng.randrange(self.period)
        self.jitter = int(self.period * jitter)
        self.fn, self.active = fn, active

    def run(self, rng: random.Random, h0: int, h1: int) -> None:
        lo, hi = max(h0, self.active[0]), min(h1, self.active[1])
        if lo >= hi:
            return
        fn, j, rand = self.fn, self.jitter, rng.random
        for t in ticks(lo, hi, self.period, self.phase):
            fn(t + int(rand() * j))


class Background:
    """All machine traffic; `hour(h0, h1)` writes the requests that start in [h0, h1)."""

    def __init__(self, cluster: Cluster, seed: int):
        self.c = c = cluster
        self.seed = seed
        self._uids: dict[tuple[str, str, str], str] = {}
        self.rng = rng = random.Random(f"auditsift-background-{seed}")
        self.em = Emitter(rng.getrandbits(64))
        self.reflectors: list[Reflector] = []
        self.clocks: list[Clock] = []
        self.hourly: list = []
        self.kcm = c.system_actor("system:kube-controller-manager", f"{c.controller_ua}/leader-election",
                                  user_binding("system:kube-controller-manager"), c.cp_ips[0])
        self.sched = c.system_actor("system:kube-scheduler", f"{c.scheduler_ua}/scheduler",
                                    user_binding("system:kube-scheduler"), c.cp_ips[1])
        self.ctl = {n: c.controller(rng, n) for n in (
            "replicaset-controller", "deployment-controller", "endpointslice-controller", "generic-garbage-collector",
            "resourcequota-controller", "horizontal-pod-autoscaler", "job-controller", "cronjob-controller",
            "ttl-after-finished-controller", "daemon-set-controller")}
        self.eks = self._eks_identities()
        vpc = [f"10.0.{s + rng.randint(0, 31)}.{rng.randint(4, 254)}" for s in c.subnets[:2]]
        self.probes = [Actor("system:anonymous", ANONYMOUS, [ip], "ELB-HealthChecker/2.0", PUBLIC_INFO) for ip in vpc]
        self.version_probe = Actor("system:anonymous", ANONYMOUS, [c.wl["prometheus-server"].pods[0].ip],
                                   "Blackbox Exporter/0.25.0", PUBLIC_INFO)
        self._nodes()
        self._control_plane()
        self._addons()
        self._apps()
        self.hourly += [self._garbage_collector_discovery, self._hourly_job, self._eks_reconcile, self._health_checks]

    def hour(self, h0: int, h1: int) -> None:
        """Write into `self.em` every request that starts in [h0, h1)."""
        rng, em = self.rng, self.em
        for clock in self.clocks:
            clock.run(rng, h0, h1)
        for r in self.reflectors:
            r.run(em, rng, h0, h1)
        for fn in self.hourly:
            fn(h0, h1)

    # ---- building blocks ----------------------------------------------------------------
    def _every(self, period: float, fn, jitter: float = 0.1, active: tuple[int, int] = ALWAYS) -> None:
        self.clocks.append(Clock(self.rng, period, fn, jitter, active))

    def _watch(self, actor: Actor, resource: str, group: str = "", version: str = "v1", ns: str = "",
               selector: str = "", start: int = 0, until: int = ALWAYS[1], keep: float = 1.0,
               relist: float = 0.01) -> None:
        self.reflectors.append(Reflector(self.rng, actor, resource, group, version, ns, selector,
                                         start or self.c.start, until, relist, keep))

    def _informer(self, actor: Actor, resource: str, group: str = "", version: str = "v1", ns: str = "",
                  selector: str = "", relist: float = 0.01) -> None:
        """A cluster-wide informer of a singleton component. Below scale 1 a share of its watches
        is dropped; above it the component runs as several replicas so volume stays proportional."""
        copies = max(1, round(self.c.scale))
        for _ in range(copies):
            self._watch(actor, resource, group, version, ns, selector, keep=min(1.0, self.c.scale / copies),
                        relist=relist)

    def _get(self, a: Actor, res: str, ns: str, name: str, group: str = "", version: str = "v1"):
        em = self.em

        def get(t: int) -> None:
            em.request(t, a, "get", res, ns, name, group=group, version=version)
        return get

    def _list(self, a: Actor, res: str, ns: str = "", group: str = "", selector: str = ""):
        em = self.em
        query = f"{selector}&limit=500" if selector else "limit=500"

        def lst(t: int) -> None:
            em.request(t, a, "list", res, ns, group=group, query=query)
        return lst

    def _lease_renewal(self, actor: Actor, lease: dict, query: str, reason: str | None):
        """Renew `lease` (with "@rv@" and "@renew@" placeholders) each call: the object is
        serialized once and only resourceVersion and renewTime are spliced in."""
        em = self.em
        head, mid, tail = split_template(lease, "@rv@", "@renew@")
        ns, name = lease["metadata"]["namespace"], lease["metadata"]["name"]
        template = Template(em, actor, "update", "leases", ns, name, group="coordination.k8s.io", reason=reason,
                            bodies=True)
        state = [em.next_rv()]

        def renew(t: int) -> None:
            old = state[0]
            new = state[0] = em.next_rv()
            ts = em.ts(t)
            template.emit(t, query, f'{head}"{old}"{mid}"{ts}"{tail}', f'{head}"{new}"{mid}"{ts}"{tail}', received=ts)
        return renew

    def _leader_lease(self, actor: Actor, ns: str, name: str, holder: str, seconds: int, period: float) -> None:
        """Leader election: the current leader renews its Lease every `period` µs."""
        em, rng, c = self.em, self.rng, self.c
        acquire = em.ts(c.start - rng.randrange(2, 9) * DAY_US - rng.randrange(DAY_US))
        lease = o.lease(name, ns, uuid4(rng), "@rv@", em.ts_s(c.start - 40 * DAY_US), holder, seconds, "@renew@",
                        acquire=acquire, transitions=rng.randint(3, 40))
        self._every(period, self._lease_renewal(actor, lease, "timeout=5s", None))

    # ---- kubelets -------------------------------------------------------------------------
    def _nodes(self) -> None:
        """Per node: lease every 10 s, status every 5 min, watches on its pods and the objects
        they mount, a projected-token refresh per pod; kube-proxy and aws-node beside it."""
        c = self.c
        thin = c.node_thin
        for node in c.all_nodes():
            a, (lo, hi) = node.actor, node.active
            start = max(lo, c.start)
            self._every(10 * SECOND / thin, self._node_lease(node), 0.02, node.active)
            self._every(5 * MINUTE / thin, self._node_status(node), 0.1, node.active)
            self._watch(a, "pods", selector="fieldSelector=" + escape(f"spec.nodeName={node.name}"),
                        start=start, until=hi, keep=thin)
            self._watch(a, "nodes", selector="fieldSelector=" + escape(f"metadata.name={node.name}"),
                        start=start, until=hi, keep=thin)
            self._watch(a, "services", selector=PROXY_SELECTOR, start=start, until=hi, keep=thin)
            self._watch(a, "runtimeclasses", "node.k8s.io", start=start, until=hi, keep=thin)
            mounted = sorted({(p.workload.ns, "configmaps", "kube-root-ca.crt") for p in node.pods}
                             | {(p.workload.ns, "secrets", s) for p in node.pods for s in p.workload.secrets[:1]})
            for ns, res, name in mounted:
                self._watch(a, res, ns=ns, selector="fieldSelector=" + escape(f"metadata.name={name}"),
                            start=start, until=hi, keep=thin * 0.3)
            for pod in node.pods:
                self._every(48 * MINUTE / pod.workload.thin, self._token_request(node, pod), 0.1, node.active)
                if pod.workload.name == "kube-proxy":
                    self._watch(pod.actor, "endpointslices", "discovery.k8s.io", selector=PROXY_SELECTOR,
                                start=start, until=hi, keep=thin)
                    self._watch(pod.actor, "services", selector=PROXY_SELECTOR, start=start, until=hi, keep=thin)
                elif pod.workload.name == "aws-node":
                    self._watch(pod.actor, "pods", selector="fieldSelector=" + escape(f"spec.nodeName={node.name}"),
                                start=start, until=hi, keep=thin)
                    self._every(10 * MINUTE / thin, self._get(pod.actor, "nodes", "", node.name), 0.2, node.active)
                    self._every(10 * MINUTE / thin, self._get(pod.actor, "cninodes", "", node.name,
                                                              "vpcresources.k8s.aws", "v1alpha1"), 0.2, node.active)
            if node in c.churn_nodes:
                self.hourly.append(self._node_join(node))

    def _node_lease(self, node: Node):
        """The kubelet's heartbeat, the bulk of any EKS audit log."""
        em = self.em
        owner = {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node.uid}
        lease = o.lease(node.name, "kube-node-lease", uuid4(self.rng), "@rv@", em.ts_s(self.c.start - 9 * DAY_US),
                        node.name, 40, "@renew@", owner)
        return self._lease_renewal(node.actor, lease, "", "")

    def _node_status(self, node: Node):
        em, a = self.em, node.actor
        uri = f"/api/v1/nodes/{node.name}/status?timeout=10s"

        def patch(t: int) -> None:
            em.request(t, a, "patch", "nodes", "", node.name, "status", req=o.node_status_patch(em.ts_s(t)),
                       level="Request", reason="", uri=uri)
        return patch

    def _token_request(self, node: Node, pod: Pod):
        """The kubelet refreshing a pod's projected service-account token (benign TokenRequest)."""
        em, wl = self.em, pod.workload

        def token(t: int) -> None:
            em.request(t, node.actor, "create", "serviceaccounts", wl.ns, wl.sa, "token", code=201, reason="",
                       annotations={"authentication.kubernetes.io/issued-credential-id": f"JTI={em.uid()}"})
        return token

    def _node_join(self, node: Node):
        """A node added by the autoscaler registers, and requests its serving certificate
        (kubelet-serving CSR, server auth), which eks:certificate-controller approves."""
        def run(h0: int, h1: int) -> None:
            t = node.active[0]
            if not h0 <= t < h1:
                return
            em, rng, c = self.em, self.rng, self.c
            labels = {"kubernetes.io/hostname": node.name, "node.kubernetes.io/instance-type": "m6i.xlarge",
                      "topology.kubernetes.io/region": c.region}
            body = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": node.name, "labels": labels},
                    "spec": {"providerID": f"aws:///{c.region}a/{node.instance}"}}
            em.request(t, node.actor, "create", "nodes", code=201, reason="", req=body,
                       resp=o.stored(body, node.uid, em.next_rv(), em.ts_s(t)))
            self.serving_csr(t + 3 * SECOND, node, em, rng)
        return run

    def serving_csr(self, t: int, node: Node, em: Emitter, rng: random.Random) -> None:
        """The kubelet asks for its serving certificate (kubernetes.io/kubelet-serving, server
        auth, CN=system:node:<name>, O=system:nodes) and eks:certificate-controller approves it."""
        name = f"csr-{rand_str(rng, 5, 'abcdefghijklmnopqrstuvwxyz0123456789')}"
        request = csr_request(f"{self.seed}-{node.name}", f"system:node:{node.name}", ("system:nodes",),
                              (node.name,), (node.ip,))
        body = o.csr(name, request, "kubernetes.io/kubelet-serving", ["digital signature", "server auth"])
        stored = o.csr_stored(body, em.uid(), em.next_rv(), em.ts_s(t), node.actor.user)
        em.request(t, node.actor, "create", "certificatesigningrequests", group="certificates.k8s.io", code=201,
                   req=body, resp=stored, reason="")
        cc = self.eks["eks:certificate-controller"]
        approval = o.csr_approval(stored, "AutoApproved",
                                  "Auto approving self kubelet server certificate after SubjectAccessReview.")
        t += rng.randrange(200_000, 2 * SECOND)
        em.request(t, cc, "update", "certificatesigningrequests", "", name, "approval",
                   group="certificates.k8s.io", req=approval, resp=o.stored(approval, em.uid(), em.next_rv(), em.ts_s(t)))
        status = o.status_update("CertificateSigningRequest", "certificates.k8s.io/v1", name, "",
                                 {"certificate": "LS0tLS1CRUdJTi..."})
        em.request(t + 150_000, cc, "update", "certificatesigningrequests", "", name, "status",
                   group="certificates.k8s.io", req=status, resp=o.stored(status, em.uid(), em.next_rv(), em.ts_s(t)))
        em.request(t + 900_000, node.actor, "get", "certificatesigningrequests", "", name,
                   group="certificates.k8s.io", reason="")

    # ---- control plane ----------------------------------------------------------------------
    def _eks_identities(self) -> dict[str, Actor]:
        """EKS-managed identities: control-plane components from private control-plane
        addresses; the add-on and node managers from AWS Lambda public addresses."""
        c, rng = self.c, self.rng
        eks = {}
        for name, ua in (
                ("eks:certificate-controller", f"eks-certificate-controller/{c.version} (linux/amd64) kubernetes/$Format"),
                ("eks:k8s-metrics", "eks-k8s-metrics/v0.0.0 (linux/amd64) kubernetes/$Format"),
                ("eks:cloud-controller-manager", f"aws-cloud-controller-manager/{c.version} (linux/amd64) kubernetes/$Format"),
                ("eks:vpc-resource-controller", "controller/v0.0.0 (linux/amd64) kubernetes/$Format"),
                ("eks:authenticator", "aws-iam-authenticator/v0.6.20 (linux/amd64) kubernetes/$Format"),
                ("eks:pod-identity-mutating-webhook",
                 "amazon-eks-pod-identity-webhook/v0.0.0 (linux/amd64) kubernetes/$Format")):
            eks[name] = c.system_actor(name, ua, user_binding(name), rng.choice(c.cp_ips))
        for name, role, ua in (
                ("eks:addon-manager", "AWSWesleyClusterManagerLambda-Add-AddonManagerRole-1W15HGBQLJ8UJ",
                 "eks-addon-manager/v0.0.0 (linux/amd64) kubernetes/$Format"),
                ("eks:node-manager", "AWSWesleyClusterManagerLambda-NodeManagerRole-1D0Q8B0ZZRHM4", "Go-http-client/1.1")):
            session = rand_str(rng, 24, "0123456789abcdef")
            extra = {"arn": [f"arn:aws:sts::{EKS_SERVICE_ACCOUNT}:assumed-role/{role}/{session}"],
                     "canonicalArn": [f"arn:aws:iam::{EKS_SERVICE_ACCOUNT}:role/{role}"], "sessionName": [session]}
            eks[name] = c.system_actor(name, ua, user_binding(name), c.lambda_ips[name][0], extra)
        return eks

    def _control_plane(self) -> None:
        c, rate, e, rng = self.c, self.c.scale, self.eks, self.rng
        host = f"ip-{c.cp_ips[0].replace('.', '-')}.{c.region}.compute.internal"
        self._leader_lease(self.kcm, "kube-system", "kube-controller-manager", f"{host}_{uuid4(rng)}", 15,
                           20 * SECOND / rate)
        self._leader_lease(self.sched.via(self.sched.ips, f"{c.scheduler_ua}/leader-election"), "kube-system",
                           "kube-scheduler", f"{host}_{uuid4(rng)}", 15, 20 * SECOND / rate)
        self._leader_lease(e["eks:cloud-controller-manager"], "kube-system", "cloud-controller-manager",
                           f"{host}_{uuid4(rng)}", 15, 60 * SECOND / rate)
        self._leader_lease(e["eks:vpc-resource-controller"], "kube-system", "cp-vpc-resource-controller",
                           f"{host}_{uuid4(rng)}", 30, 60 * SECOND / rate)
        informers = self.kcm.via(self.kcm.ips, f"{c.controller_ua}/shared-informers")
        for res, group in (("pods", ""), ("nodes", ""), ("replicasets", "apps"), ("deployments", "apps"),
                           ("services", ""), ("endpointslices", "discovery.k8s.io"), ("namespaces", ""),
                           ("serviceaccounts", ""), ("secrets", ""), ("jobs", "batch"),
                           ("persistentvolumeclaims", ""), ("leases", "coordination.k8s.io")):
            self._informer(informers, res, group)
        self._informer(self.sched, "pods", selector="fieldSelector=" + escape("status.phase!=Succeeded,status.phase!=Failed"))
        for res, group in (("nodes", ""), ("persistentvolumes", ""), ("persistentvolumeclaims", ""),
                           ("storageclasses", "storage.k8s.io"), ("csinodes", "storage.k8s.io"),
                           ("poddisruptionbudgets", "policy"), ("namespaces", "")):
            self._informer(self.sched, res, group)
        self._informer(e["eks:certificate-controller"], "certificatesigningrequests", "certificates.k8s.io")
        self._informer(e["eks:cloud-controller-manager"], "nodes")
        self._informer(e["eks:cloud-controller-manager"], "services")
        self._informer(e["eks:vpc-resource-controller"], "pods")
        self._informer(e["eks:vpc-resource-controller"], "nodes")
        self._informer(e["eks:authenticator"], "configmaps", ns="kube-system",
                       selector="fieldSelector=" + escape("metadata.name=aws-auth"))
        self._every(10 * MINUTE / rate, self._list(e["eks:k8s-metrics"], "nodes"), 0.3)
        self._every(10 * MINUTE / rate, self._node_manager, 0.4)
        self._every(60 * SECOND / rate, self._hpa(self.ctl["horizontal-pod-autoscaler"], c.wl["payments-api"]), 0.05)

    def _node_manager(self, t: int) -> None:
        """eks:node-manager reads aws-auth and the node list (benign reads of aws-auth)."""
        a = self.eks["eks:node-manager"].via([self.rng.choice(self.c.lambda_ips["eks:node-manager"])])
        self.em.request(t, a, "get", "configmaps", "kube-system", "aws-auth")
        self.em.request(t + self.rng.randrange(50_000, 900_000), a, "list", "nodes", query="limit=500")

    def _hpa(self, a: Actor, wl: Workload):
        em = self.em
        query = "labelSelector=" + escape(f"app={wl.name}")

        def sync(t: int) -> None:
            em.request(t, a, "get", "deployments", wl.ns, wl.name, "scale", group="apps")
            em.request(t + 3000, a, "list", "pods", wl.ns, group="metrics.k8s.io", version="v1beta1", query=query)
        return sync

    def _garbage_collector_discovery(self, h0: int, h1: int) -> None:
        """GC and quota controllers re-run discovery and list every resource type a few times a
        day: a benign burst of many distinct resource lists from one identity."""
        rng, em = self.rng, self.em
        for t in arrivals(rng, h0, h1, 0.15):
            for who, types in (("generic-garbage-collector", GC_TYPES), ("resourcequota-controller", GC_TYPES[::3])):
                a = self.ctl[who]
                t += rng.randrange(US)
                em.request(t, a, "get", uri="/api?timeout=32s", reason=DISCOVERY)
                em.request(t + 5000, a, "get", uri="/apis?timeout=32s", reason=DISCOVERY)
                for res, group, version in types:
                    t += rng.randrange(2_000, 60_000)
                    em.request(t, a, "list", res, group=group, version=version, query="limit=500&resourceVersion=0")

    def _hourly_job(self, h0: int, h1: int) -> None:
        """The data team's hourly ETL CronJob: cronjob, job and scheduler controllers, the
        kubelet, and the TTL controller removing finished jobs (benign Job/pod creation)."""
        c, em, rng, ctl = self.c, self.em, self.rng, self.ctl
        wl = c.wl["etl-runner"]
        spec = o.pod_spec(wl.sa, [o.container("runner", wl.image, command=["python", "-m", "etl.hourly"],
                                              env_from=["warehouse-credentials"])])
        for t in ticks(h0, h1, HOUR, 5 * MINUTE):
            t += rng.randrange(2 * SECOND)
            job = f"etl-hourly-{(t // MINUTE) % 100_000_000}"
            body = o.workload("Job", job, "data", spec, {"job-name": job},
                              owner=o.controller_ref("CronJob", "batch/v1", "etl-hourly", self.object_uid("CronJob", "data", "etl-hourly")))
            job_uid = em.uid()
            em.request(t, ctl["cronjob-controller"], "create", "jobs", "data", group="batch", code=201, req=body,
                       resp=o.with_server_fields(body, job_uid, em.next_rv(), em.ts_s(t)))
            cron = o.status_update("CronJob", "batch/v1", "etl-hourly", "data", {"lastScheduleTime": em.ts_s(t - t % MINUTE)})
            em.request(t + 20_000, ctl["cronjob-controller"], "update", "cronjobs", "data", "etl-hourly", "status",
                       group="batch", req=cron, resp=o.stored(cron, self.object_uid("CronJob", "data", "etl-hourly"),
                                                              em.next_rv(), em.ts_s(c.start - 90 * DAY_US)))
            pod = o.pod(o.meta("", "data", generateName=f"{job}-", labels={"job-name": job},
                               ownerReferences=[o.controller_ref("Job", "batch/v1", job, job_uid)]), spec)
            self.create_pod(t + 60_000, ctl["job-controller"], "data", f"{job}-{rand_str(rng, 5)}", pod,
                             rng.choice(c.nodes), 2 * MINUTE + rng.randrange(4 * MINUTE))
            done = o.status_update("Job", "batch/v1", job, "data", {"succeeded": 1})
            em.request(t + 5 * MINUTE, ctl["job-controller"], "update", "jobs", "data", job, "status", group="batch",
                       req=done, resp=o.stored(done, em.uid(), em.next_rv(), em.ts_s(t)))
            old = f"etl-hourly-{(t // MINUTE - 120) % 100_000_000}"
            em.request(t + 7 * SECOND, ctl["ttl-after-finished-controller"], "delete", "jobs", "data", old,
                       group="batch", req=o.delete_options("Foreground"),
                       resp=o.status_success("jobs", old, em.uid(), "batch"))

    def create_pod(self, t: int, creator: Actor, ns: str, name: str, body: dict, node: Node, lifetime: int | None,
                   em: Emitter | None = None) -> list[str]:
        """`creator` creates a pod; the scheduler binds it and the kubelet runs it (see
        `run_pod`). Written to `em` (default: the background's); returns the auditIDs."""
        em = em or self.em
        uid = em.uid()
        body["metadata"].pop("name", None)
        created = o.with_server_fields(body, uid, em.next_rv(), em.ts_s(t))
        created["metadata"]["name"] = name
        ids = [em.request(t, creator, "create", "pods", ns, code=201, req=body, resp=created,
                          annotations={"pod-security.kubernetes.io/enforce-policy": "privileged:latest"})]
        return ids + self.run_pod(t, ns, name, uid, node, lifetime, em)

    def run_pod(self, t: int, ns: str, name: str, uid: str, node: Node, lifetime: int | None,
                em: Emitter) -> list[str]:
        """After a pod is created: scheduler binding, kubelet status reports, and `lifetime`
        later (None: not within the sample) its end and deletion. Times come from `em`'s
        stream so attacks never shift the background's."""
        rand = em.rng.random
        t += 5_000 + int(rand() * 55_000)
        ids = [em.request(t, self.sched, "create", "pods", ns, name, "binding", code=201,
                          req=o.pod_binding(name, ns, uid, node.name),
                          resp={"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})]
        ip = ".".join(node.ip.split(".")[:3]) + f".{4 + int(rand() * 250)}"
        for dt, phase in ((300_000 + int(rand() * 1_700_000), "Pending"), (3 * SECOND + int(rand() * 9 * SECOND), "Running")):
            ids.append(em.request(t + dt, node.actor, "patch", "pods", ns, name, "status", level="Request", reason="",
                                  req=o.pod_status_patch(uid, phase, ip, em.ts_s(t + dt))))
        if lifetime is None:
            return ids
        end = t + lifetime
        ids.append(em.request(end, node.actor, "patch", "pods", ns, name, "status", level="Request", reason="",
                              req=o.pod_status_patch(uid, "Succeeded" if ns == "data" else "Failed", ip, em.ts_s(end))))
        ids.append(em.request(end + int(rand() * SECOND), node.actor, "delete", "pods", ns, name, reason="",
                              req=o.delete_options(grace=0, uid=uid), resp=o.status_success("pods", name, uid)))
        return ids

    def object_uid(self, kind: str, ns: str, name: str) -> str:
        """The stable uid of a long-lived object (a Deployment, a Service), fixed by the seed."""
        key = (kind, ns, name)
        uid = self._uids.get(key)
        if uid is None:
            uid = self._uids[key] = uuid4(random.Random(f"auditsift-uid-{self.seed}-{kind}-{ns}/{name}"))
        return uid

    def template_spec(self, wl: Workload) -> dict:
        """The pod template a workload's pods run (image, secrets as env, its service account)."""
        return o.pod_spec(wl.sa, [o.container(n, wl.image, env_from=wl.secrets[:1]) for n in wl.containers[:2]],
                          host_network=wl.host_network)

    def stored_workload(self, t: int, wl: Workload, spec: dict | None = None, annotations: dict | None = None,
                        em: Emitter | None = None, image: str = "") -> dict:
        """`wl` as the API server stores it after a write at `t`: what EKS logs as the
        responseObject of a patch or update, whatever the patch style."""
        em = em or self.em
        spec = spec or self.template_spec(wl)
        if image:
            spec = {**spec, "containers": [{**spec["containers"][0], "image": image}, *spec["containers"][1:]]}
        body = o.deployment(wl.name, wl.ns, max(1, wl.replicas), spec, {"app": wl.name}, annotations)
        if wl.kind != "Deployment":
            body["kind"] = wl.kind
            del body["spec"]["replicas"]
        created = em.ts_s(self.c.start - 90 * DAY_US)
        return o.stored(body, self.object_uid(wl.kind, wl.ns, wl.name), em.next_rv(), created,
                        generation=20 + int(em.rng.random() * 300))

    def stored_service(self, t: int, ns: str, name: str, port: int = 80) -> dict:
        """An application's ClusterIP Service as stored (the response to a patch of it)."""
        app = name.removesuffix("-svc")
        body = o.service(name, ns, {"app": app}, [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}])
        uid = self.object_uid("Service", ns, name)
        ip = f"172.20.{int(uid[:2], 16)}.{int(uid[2:4], 16) % 250 + 2}"
        return o.service_stored(body, uid, self.em.next_rv(), self.em.ts_s(self.c.start - 90 * DAY_US), ip, [])

    def rollout(self, t: int, wl: Workload, em: Emitter | None = None, rng: random.Random | None = None,
                spec: dict | None = None) -> list[str]:
        """What follows any change to a Deployment's pod template: a new ReplicaSet, new pods
        (running `spec`, default the workload's own), scheduling, kubelet status reports,
        endpoint updates and the old pods' removal. Written to `em` drawing from `rng` (default:
        the background's); returns the auditIDs."""
        em, rng, c = em or self.em, rng or self.rng, self.c
        dc, rc = self.ctl["deployment-controller"], self.ctl["replicaset-controller"]
        pod_hash = rand_str(rng, 10)
        rs = f"{wl.name}-{pod_hash}"
        labels = {"app": wl.name, "pod-template-hash": pod_hash}
        ids = [self._status(em, t + 30_000, dc, "Deployment", "deployments", "apps", wl,
                            {"observedGeneration": rng.randint(20, 400), "replicas": wl.replicas, "updatedReplicas": 0})]
        spec = spec or self.template_spec(wl)
        rs_body = o.replica_set(rs, wl.ns, wl.replicas, labels, spec,
                                o.controller_ref("Deployment", "apps/v1", wl.name, self.object_uid("Deployment", wl.ns, wl.name)))
        rs_uid = em.uid()
        ids.append(em.request(t + 60_000, dc, "create", "replicasets", wl.ns, group="apps", code=201, req=rs_body,
                              resp=o.with_server_fields(rs_body, rs_uid, em.next_rv(), em.ts_s(t + 60_000))))
        owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": rs_uid, "controller": True,
                 "blockOwnerDeletion": True}
        t += 100_000
        for i in range(wl.replicas):
            t += rng.randrange(2 * SECOND, 25 * SECOND)
            body = o.pod(o.meta("", wl.ns, generateName=f"{rs}-", labels=labels, ownerReferences=[owner]), spec)
            ids.append(em.request(t - 20_000, self.eks["eks:pod-identity-mutating-webhook"], "get", "serviceaccounts",
                                  wl.ns, wl.sa))
            ids += self.create_pod(t, rc, wl.ns, f"{rs}-{rand_str(rng, 5)}", body, rng.choice(c.nodes), None, em)
            if wl.pods:
                old = wl.pods[i % len(wl.pods)]
                ids.append(em.request(t + 8 * SECOND, rc, "delete", "pods", wl.ns, old.name, req=o.delete_options(),
                                      resp=o.status_success("pods", old.name, old.uid)))
            name = f"{wl.name}-{rand_str(rng, 5)}"
            es = o.endpoint_slice(wl.name, wl.ns, [p.ip for p in wl.pods[:3]])
            es["metadata"]["name"] = name
            ids.append(em.request(t + 9 * SECOND, self.ctl["endpointslice-controller"], "update", "endpointslices",
                                  wl.ns, name, group="discovery.k8s.io", req=es,
                                  resp=o.stored(es, self.object_uid("EndpointSlice", wl.ns, name), em.next_rv(),
                                                em.ts_s(t - HOUR))))
        for k in range(2):
            ids.append(self._status(em, t + (10 + k * 5) * SECOND, dc, "Deployment", "deployments", "apps", wl,
                                    {"replicas": wl.replicas, "updatedReplicas": wl.replicas,
                                     "readyReplicas": wl.replicas - 1 + k}))
        return ids

    def _status(self, em: Emitter, t: int, a: Actor, kind: str, res: str, group: str, wl: Workload,
                status: dict) -> str:
        """A controller's update of `wl`'s status subresource; the response is the stored object."""
        gv = f"{group}/v1" if group else "v1"
        body = o.status_update(kind, gv, wl.name, wl.ns, status)
        return em.request(t, a, "update", res, wl.ns, wl.name, "status", group=group, req=body,
                          resp=o.stored(body, self.object_uid(kind, wl.ns, wl.name), em.next_rv(),
                                        em.ts_s(self.c.start - 90 * DAY_US)))

    # ---- add-ons --------------------------------------------------------------------------
    def _addons(self) -> None:
        """CoreDNS, monitoring (Prometheus, kube-state-metrics, metrics-server), EBS CSI, the
        load-balancer controller, Argo CD, cert-manager and ingress-nginx: each with its own
        informers, leader lease and periodic work."""
        wl, rate = self.c.wl, self.c.scale
        for p in wl["coredns"].pods:
            for res, group in (("endpointslices", "discovery.k8s.io"), ("services", ""), ("namespaces", "")):
                self._watch(p.actor, res, group, keep=wl["coredns"].thin)
        prom = wl["prometheus-server"].pods[0].actor
        self._every(30 * SECOND / rate, lambda t: self.em.request(t, prom, "get", uri="/metrics"), 0.02)
        for res in ("pods", "endpoints", "services", "nodes"):
            self._informer(prom, res)
        for res in ("pods", "nodes", "endpoints"):
            self._every(5 * MINUTE / rate, self._list(prom, res), 0.05)
        ksm = wl["kube-state-metrics"].pods[0].actor
        for res, group in (("pods", ""), ("nodes", ""), ("namespaces", ""), ("secrets", ""), ("configmaps", ""),
                           ("services", ""), ("deployments", "apps"), ("daemonsets", "apps"), ("statefulsets", "apps"),
                           ("replicasets", "apps"), ("jobs", "batch"), ("cronjobs", "batch"),
                           ("persistentvolumeclaims", ""), ("ingresses", "networking.k8s.io")):
            self._informer(ksm, res, group, relist=0.03)
        for res in ("nodes", "pods"):
            self._informer(wl["metrics-server"].pods[0].actor, res)
        for res, group in (("persistentvolumes", ""), ("volumeattachments", "storage.k8s.io"),
                           ("csinodes", "storage.k8s.io")):
            self._informer(wl["ebs-csi-controller"].pods[0].actor, res, group)
        lbc = wl["aws-load-balancer-controller"].pods[0]
        self._leader_lease(lbc.actor, "kube-system", "aws-load-balancer-controller-leader", lbc.name, 15,
                           60 * SECOND / rate)
        for res, group, version in (("services", "", "v1"), ("ingresses", "networking.k8s.io", "v1"),
                                    ("targetgroupbindings", "elbv2.k8s.aws", "v1beta1"),
                                    ("endpointslices", "discovery.k8s.io", "v1")):
            self._informer(lbc.actor, res, group, version)
        self._argocd(rate)
        cm = wl["cert-manager"].pods[0]
        self._leader_lease(cm.actor, "kube-system", "cert-manager-controller",
                           f"{cm.name}-external-cert-manager-controller", 60, 60 * SECOND / rate)
        for res, group, selector in (("certificates", "cert-manager.io", ""), ("orders", "acme.cert-manager.io", ""),
                                     ("secrets", "", "labelSelector=" + escape("controller.cert-manager.io/fao=true")),
                                     ("ingresses", "networking.k8s.io", "")):
            self._informer(cm.actor, res, group, selector=selector)
        for ns, name in CERT_SECRETS:
            self._every(HOUR / rate, self._get(cm.actor, "secrets", ns, name), 0.3)
        self.hourly.append(self._cert_renewals(cm.actor))
        self.hourly.append(self._cainjector(wl["cert-manager-cainjector"].pods[0].actor))
        ing = wl["ingress-nginx-controller"].pods[0]
        self._leader_lease(ing.actor, "ingress-nginx", "ingress-nginx-leader", ing.name, 30, 60 * SECOND / rate)
        for res, group, ns in (("ingresses", "networking.k8s.io", ""), ("services", "", ""),
                               ("endpointslices", "discovery.k8s.io", ""), ("secrets", "", ""),
                               ("configmaps", "", "ingress-nginx"), ("ingressclasses", "networking.k8s.io", "")):
            self._informer(ing.actor, res, group, ns=ns)

    def _argocd(self, rate: float) -> None:
        """Argo CD: cluster-wide informers, its own cluster secrets, Application status
        patches, and a few syncs a day."""
        wl = self.c.wl
        argo = wl["argocd-application-controller"].pods[0].actor
        for res, group in (("deployments", "apps"), ("services", ""), ("configmaps", ""), ("pods", ""),
                           ("replicasets", "apps"), ("ingresses", "networking.k8s.io"),
                           ("rolebindings", "rbac.authorization.k8s.io")):
            self._informer(argo, res, group)
        self._informer(argo, "applications", "argoproj.io", "v1alpha1", "argocd")
        self._every(3 * MINUTE / rate, self._list(argo, "secrets", "argocd", selector="labelSelector=" + escape(
            "argocd.argoproj.io/secret-type=cluster")))
        for app in ("web", "data", "monitoring"):
            self._every(5 * MINUTE / rate, self._argo_app_status(argo, app))
        srv = wl["argocd-server"].pods[0].actor
        self._every(10 * MINUTE / rate, self._get(srv, "secrets", "argocd", "argocd-secret"), 0.2)
        self._informer(srv, "applications", "argoproj.io", "v1alpha1", "argocd")
        self.hourly.append(self._argocd_sync(argo))

    def _argo_app_status(self, a: Actor, app: str):
        em = self.em

        def patch(t: int) -> None:
            em.request(t, a, "patch", "applications", "argocd", app, group="argoproj.io", version="v1alpha1")
        return patch

    def _argocd_sync(self, a: Actor):
        """GitOps syncs a few times a day: server-side applies in the namespaces Argo CD owns,
        including RoleBindings (benign RBAC writes by a non-human identity)."""
        def run(h0: int, h1: int) -> None:
            em, rng, c = self.em, self.rng, self.c
            apply = "fieldManager=argocd-controller&force=true"
            for t in arrivals(rng, h0, h1, 0.15):
                ns = rng.choice(("web", "data", "monitoring"))
                targets = [w for w in c.workloads if w.ns == ns and w.kind == "Deployment"]
                for w in rng.sample(targets, min(len(targets), rng.randint(1, 2))):
                    t += rng.randrange(200_000, 2 * SECOND)
                    em.request(t, a, "get", "deployments", ns, w.name, group="apps")
                    patch = o.apply_patch("Deployment", "apps/v1", w.name, ns, o.image_spec(w.containers[0], w.image),
                                          {"app.kubernetes.io/instance": ns})
                    em.request(t + 50_000, a, "patch", "deployments", ns, w.name, group="apps", query=apply,
                               req=patch, resp=self.stored_workload(t + 50_000, w))
                    self.rollout(t + 100_000, w)
                for res, kind, name in (("services", "Service", f"{ns}-svc"), ("configmaps", "ConfigMap", c.configmaps[ns][-1])):
                    t += rng.randrange(100_000, SECOND)
                    body = o.apply_patch(kind, "v1", name, ns, {})
                    em.request(t, a, "patch", res, ns, name, query=apply, req=body,
                               resp=self.stored_service(t, ns, name) if res == "services" else None)
                if rng.random() < 0.5:
                    rb = o.binding("RoleBinding", f"{ns}-readers", "ClusterRole", "view", [o.subject("Group", f"{ns}-team")], ns)
                    em.request(t + 300_000, a, "patch", "rolebindings", ns, f"{ns}-readers",
                               group="rbac.authorization.k8s.io", query=apply, req=rb,
                               resp=o.stored(rb, self.object_uid("RoleBinding", ns, f"{ns}-readers"), em.next_rv(),
                                             em.ts_s(c.start - 60 * DAY_US)))
        return run

    def _cert_renewals(self, a: Actor):
        """cert-manager renewing a certificate now and then: a secret update in an app namespace."""
        def run(h0: int, h1: int) -> None:
            em, rng = self.em, self.rng
            for t in arrivals(rng, h0, h1, 1 / 16):
                ns, name = rng.choice(CERT_SECRETS)
                em.request(t, a, "get", "secrets", ns, name)
                em.request(t + 400_000, a, "update", "secrets", ns, name)
                em.request(t + 600_000, a, "patch", "certificates", ns, name.replace("-tls", ""), "status",
                           group="cert-manager.io", query="fieldManager=cert-manager-certificates-issuing")
        return run

    def _cainjector(self, a: Actor):
        """cert-manager's CA injector patching webhook configurations (benign webhook writes)."""
        def run(h0: int, h1: int) -> None:
            em, rng = self.em, self.rng
            for t in arrivals(rng, h0, h1, 1 / 8):
                patch = o.ca_bundle_patch("webhook.cert-manager.io", "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"
                                          + rand_str(rng, 24, o.B64))
                for res in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
                    t += rng.randrange(10_000, 300_000)
                    kind = "ValidatingWebhookConfiguration" if res[0] == "v" else "MutatingWebhookConfiguration"
                    hook = o.webhook_config(kind, "cert-manager-webhook", "webhook.cert-manager.io",
                                            {"service": {"name": "cert-manager-webhook", "namespace": "cert-manager",
                                                         "path": "/validate" if res[0] == "v" else "/mutate", "port": 443},
                                             "caBundle": patch["webhooks"][0]["clientConfig"]["caBundle"]},
                                            "Fail", ["*"], ["CREATE", "UPDATE"])
                    em.request(t, a, "patch", res, "", "cert-manager-webhook", group="admissionregistration.k8s.io",
                               req=patch, resp=o.stored(hook, self.object_uid(kind, "", "cert-manager-webhook"),
                                                        em.next_rv(), em.ts_s(self.c.start - 60 * DAY_US)),
                               query="fieldManager=cert-manager-cainjector")
        return run

    def _eks_reconcile(self, h0: int, h1: int) -> None:
        """eks:addon-manager re-applies managed add-ons (benign DaemonSet/Deployment writes in
        kube-system from AWS Lambda addresses)."""
        em, rng, c = self.em, self.rng, self.c
        for t in arrivals(rng, h0, h1, 0.5 * c.fixed):
            a = self.eks["eks:addon-manager"].via([rng.choice(c.lambda_ips["eks:addon-manager"])])
            for kind, res, name in (("DaemonSet", "daemonsets", "aws-node"), ("DaemonSet", "daemonsets", "kube-proxy"),
                                    ("Deployment", "deployments", "coredns")):
                t += rng.randrange(100_000, 3 * SECOND)
                w = c.wl[name]
                em.request(t, a, "get", res, "kube-system", name, group="apps")
                patch = o.apply_patch(kind, "apps/v1", name, "kube-system", o.image_spec(w.containers[0], w.image),
                                      {"eks.amazonaws.com/component": name})
                em.request(t + 80_000, a, "patch", res, "kube-system", name, group="apps", req=patch,
                           resp=self.stored_workload(t + 80_000, w), query="fieldManager=eks&force=true")
            sa = o.apply_patch("ServiceAccount", "v1", "aws-node", "kube-system", {})
            del sa["spec"]
            em.request(t + 200_000, a, "patch", "serviceaccounts", "kube-system", "aws-node",
                       query="fieldManager=eks&force=true", req=sa,
                       resp=o.stored(o.service_account("aws-node", "kube-system"), c.sa_uids[("kube-system", "aws-node")],
                                     em.next_rv(), em.ts_s(c.start - 90 * DAY_US)))

    def _health_checks(self, h0: int, h1: int) -> None:
        """Anonymous health probes from inside the VPC (allowed by system:public-info-viewer)."""
        em, rng, c = self.em, self.rng, self.c
        for i, probe in enumerate(self.probes):
            for t in ticks(h0, h1, int(120 * SECOND / c.fixed), i * 17 * SECOND):
                em.request(t + rng.randrange(2 * SECOND), probe, "get", uri=rng.choice(("/readyz", "/livez", "/healthz")))
        for t in ticks(h0, h1, int(5 * MINUTE / c.fixed), 41 * SECOND):
            em.request(t, self.version_probe, "get", uri="/version")

    # ---- application service accounts -----------------------------------------------------
    def _apps(self) -> None:
        """Application service accounts: config and secret reads, leader election, and the
        misconfigured ETL job that is denied a cluster-wide secret list every few minutes."""
        wl = self.c.wl
        leader = wl["payments-worker"].pods[0]
        self._leader_lease(leader.actor, "payments", "payments-worker-leader", leader.name, 30, 60 * SECOND / self.c.scale)
        for p in wl["checkout-api"].pods + wl["cart"].pods:
            self._every(5 * MINUTE / p.workload.thin, self._get(p.actor, "configmaps", "checkout", "feature-flags"))
        for p in wl["web-bff"].pods:
            self._every(15 * MINUTE / p.workload.thin, self._get(p.actor, "secrets", "web", "bff-session-key"))
        for p in wl["payments-api"].pods:
            self._every(30 * MINUTE / p.workload.thin, self._get(p.actor, "secrets", "payments", "payments-stripe-api-key"), 0.2)
        etl = wl["etl-runner"].pods[0].actor
        self._every(5 * MINUTE, lambda t: self.em.request(t, etl, "list", "secrets", query="limit=500", code=None), 0.5)
        self._every(HOUR, self._get(etl, "configmaps", "data", "etl-config"), 0.2)
        self._every(HOUR, self._get(wl["reporting"].pods[0].actor, "secrets", "data", "warehouse-credentials"), 0.3)


def user_binding(user: str) -> str:
    """Allow reason of a system user bound to the ClusterRole of the same name."""
    return binding_reason("ClusterRoleBinding", user, "ClusterRole", user, "User", user)


GC_TYPES = [("pods", "", "v1"), ("services", "", "v1"), ("configmaps", "", "v1"), ("secrets", "", "v1"),
            ("serviceaccounts", "", "v1"), ("persistentvolumeclaims", "", "v1"), ("endpoints", "", "v1"),
            ("limitranges", "", "v1"), ("resourcequotas", "", "v1"), ("podtemplates", "", "v1"),
            ("deployments", "apps", "v1"), ("replicasets", "apps", "v1"), ("daemonsets", "apps", "v1"),
            ("statefulsets", "apps", "v1"), ("controllerrevisions", "apps", "v1"), ("jobs", "batch", "v1"),
            ("cronjobs", "batch", "v1"), ("roles", "rbac.authorization.k8s.io", "v1"),
            ("rolebindings", "rbac.authorization.k8s.io", "v1"), ("clusterroles", "rbac.authorization.k8s.io", "v1"),
            ("clusterrolebindings", "rbac.authorization.k8s.io", "v1"), ("ingresses", "networking.k8s.io", "v1"),
            ("networkpolicies", "networking.k8s.io", "v1"), ("poddisruptionbudgets", "policy", "v1"),
            ("leases", "coordination.k8s.io", "v1"), ("endpointslices", "discovery.k8s.io", "v1"),
            ("certificates", "cert-manager.io", "v1"), ("applications", "argoproj.io", "v1alpha1"),
            ("targetgroupbindings", "elbv2.k8s.aws", "v1beta1")]
