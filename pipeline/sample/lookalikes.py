"""Benign traffic that looks like the attack families: what a detector must not flag.

Every day of every seed carries each of these, so `make evaluate` measures the false flags
they cost: Argo CD and engineers patching Deployments (merge and JSON patch, nothing
privileged), a non-privileged `kubectl debug`, internal load balancers, kubelet-serving CSRs,
Prometheus scraping the kubelets through `nodes/proxy`, the kubelet reading CoreDNS's
ConfigMap for the pods that mount it, and engineers exec'ing harmless commands. Each day's
plan comes from its own seeded stream, so the rest of the background does not shift with it.
"""

from __future__ import annotations

import functools
import random

from . import objects as o
from .background import Background, Reflector, escape
from .cluster import APP_NAMESPACES, Cluster, Engineer, access_key, rand_str
from .emit import DAY, HOUR, MINUTE, US, Actor, Template, exec_query

SECOND = US
KUBELET_PATHS = ("/metrics", "/metrics/cadvisor")


class LookAlikes:
    """`hour(h0, h1)` writes the look-alike requests that start in [h0, h1) into the background's emitter."""

    def __init__(self, cluster: Cluster, bg: Background, seed: int):
        self.c, self.bg, self.em, self.seed = cluster, bg, bg.em, seed
        self.rng = rng = random.Random(f"auditsift-lookalikes-{seed}")
        self.prom = cluster.wl["prometheus-server"].pods[0].actor
        self.argo = cluster.wl["argocd-application-controller"].pods[0].actor
        # Prometheus's kubernetes-nodes and cadvisor jobs: every node's kubelet through the API server.
        self.scrapes = []
        for node in cluster.all_nodes():
            for path in KUBELET_PATHS:
                tpl = Template(self.em, self.prom, "get", "nodes", name=node.name, sub="proxy",
                               path=f"/api/v1/nodes/{node.name}/proxy{path}")
                period = int(60 * SECOND / cluster.node_thin)  # Prometheus's default scrape_interval
                self.scrapes.append((tpl, period, rng.randrange(period), node.active))
        # The kubelet of each node running CoreDNS watches its ConfigMap for the pods' volume.
        for node in {p.node.name: p.node for p in cluster.wl["coredns"].pods}.values():
            bg.reflectors.append(Reflector(rng, node.actor, "configmaps", "", "v1", "kube-system",
                                           "fieldSelector=" + escape("metadata.name=coredns"),
                                           max(node.active[0], cluster.start), node.active[1], 0.01,
                                           0.3 * cluster.node_thin))
        self.devs = [e for e in cluster.engineers if e.namespaces]

    def hour(self, h0: int, h1: int) -> None:
        rng = self.rng
        for tpl, period, phase, (lo, hi) in self.scrapes:
            start, end = max(h0, lo), min(h1, hi)
            k0 = -(-(start - phase) // period)
            for t in range(phase + k0 * period, end, period):
                tpl.emit(t + int(rng.random() * 2 * SECOND), duration=0)
        day0 = self.c.start + (h0 - self.c.start) // DAY * DAY
        for t, fn, drng in self._plan(day0):
            if h0 <= t < h1:
                fn(t, drng)

    def _plan(self, day0: int) -> list:
        """The day's look-alikes: each kind at least once, at times of its own stream."""
        rng = random.Random(f"auditsift-lookalikes-{self.seed}-{day0}")
        out = []

        def add(fn, lo: int, hi: int, style: str = ""):
            for _ in range(rng.randint(lo, hi)):
                t = day0 + int(rng.uniform(1, 23) * HOUR)
                drng = random.Random(f"auditsift-lookalike-{self.seed}-{fn.__name__}{style}-{t}")
                out.append((t, functools.partial(fn, style=style) if style else fn, drng))
        for style in ("json", "merge"):
            add(self._argocd_patch, 1, 2, style)
            add(self._engineer_patch, 1, 2, style)
        add(self._debug, 1, 2)
        add(self._internal_lb, 1, 2)
        add(self._serving_csr, 1, 2)
        add(self._engineer_exec, 2, 4)
        return out

    def _engineer(self, rng: random.Random, t: int) -> tuple[Engineer, Actor]:
        eng = rng.choice(self.devs)
        key = access_key(random.Random(f"{self.seed}-{eng.short}-key-{t - (t - self.c.start) % DAY}"))
        ips = rng.choice(eng.ips)
        return eng, eng.actor(key, [eng.proxy_ip, ips] if eng.proxy_ip and ips.startswith("198.51.100.") else [ips])

    def _deployment(self, rng: random.Random, namespaces) -> object:
        return rng.choice([w for w in self.c.workloads if w.kind == "Deployment" and w.pods and w.ns in namespaces])

    def _argocd_patch(self, t: int, rng: random.Random, style: str) -> None:
        """Argo CD syncing replicas or an annotation with a merge or JSON patch."""
        em, wl = self.em, self._deployment(rng, ("web", "data", "monitoring"))
        replicas = max(1, wl.replicas + rng.choice((-1, 0, 1)))
        if style == "json":
            patch = [{"op": "replace", "path": "/spec/replicas", "value": replicas}]
        else:
            patch = {"metadata": {"annotations": {"argocd.argoproj.io/tracking-id":
                                                  f"{wl.ns}:apps/Deployment:{wl.ns}/{wl.name}"}},
                     "spec": {"replicas": replicas}}
        em.request(t, self.argo, "get", "deployments", wl.ns, wl.name, group="apps")
        em.request(t + 40_000, self.argo, "patch", "deployments", wl.ns, wl.name, group="apps", req=patch,
                   resp=self.bg.stored_workload(t, wl))

    def _engineer_patch(self, t: int, rng: random.Random, style: str) -> None:
        """An engineer's `kubectl patch` (merge or --type=json) changing an image or resources in
        their own namespace, and the rollout that follows."""
        em = self.em
        eng, a = self._engineer(rng, t)
        wl = self._deployment(rng, eng.namespaces)
        image = wl.image.rsplit(":", 1)[0] + f":1.{rng.randint(40, 90)}.{rng.randint(0, 9)}"
        if style == "json":
            patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}]
        else:
            patch = {"spec": {"template": {"spec": {"containers": [
                {"name": wl.containers[0], "image": image,
                 "resources": {"limits": {"memory": f"{rng.choice((512, 768, 1024))}Mi"}}}]}}}}
        em.request(t, a, "get", "deployments", wl.ns, wl.name, group="apps", code=None)
        em.request(t + 80_000, a, "patch", "deployments", wl.ns, wl.name, group="apps", query="fieldManager=kubectl-patch", req=patch,
                   resp=self.bg.stored_workload(t, wl, image=image), code=None)
        self.bg.rollout(t + 150_000, wl, em, rng)

    def _debug(self, t: int, rng: random.Random) -> None:
        """`kubectl debug -it POD --image=busybox`: a busybox ephemeral container, no privileges."""
        em = self.em
        eng, a = self._engineer(rng, t)
        wl = self._deployment(rng, eng.namespaces)
        pod = rng.choice(wl.pods)
        name = f"debugger-{rand_str(rng, 5, 'abcdefghijklmnopqrstuvwxyz0123456789')}"
        ec = o.ephemeral_container(name, rng.choice(("busybox", "busybox:1.36")), wl.containers[0])
        stored = o.stored(o.pod(o.meta(pod.name, wl.ns, labels={"app": wl.name}),
                                {**self.bg.template_spec(wl), "nodeName": pod.node.name, "ephemeralContainers": [ec]}),
                          pod.uid, em.next_rv(), em.ts_s(self.c.start))
        em.request(t, a, "get", "pods", wl.ns, pod.name, code=None)
        em.request(t + 200_000, a, "patch", "pods", wl.ns, pod.name, "ephemeralcontainers",
                   req={"spec": {"ephemeralContainers": [ec]}}, resp=stored, code=None)
        em.request(t + 3 * SECOND, a, "create", "pods", wl.ns, pod.name, "attach", code=None,
                   query=f"container={name}&stdin=true&stdout=true&tty=true",
                   duration=rng.randrange(MINUTE, 10 * MINUTE))

    def _internal_lb(self, t: int, rng: random.Random) -> None:
        """The CI role creating a preview environment's internal load balancer (and removing an
        old one); the load-balancer controller reads it."""
        em, c = self.em, self.c
        a = c.ci_actor(rng, "Helm/3.14.2")
        wl = self._deployment(rng, APP_NAMESPACES)
        name = f"{wl.name}-internal-{rand_str(rng, 4, 'abcdefghijklmnopqrstuvwxyz')}"
        body = o.service(name, wl.ns, {"app": wl.name}, [{"name": "http", "port": 80, "protocol": "TCP",
                                                           "targetPort": 8080}], "LoadBalancer", {
            "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal",
            "service.beta.kubernetes.io/aws-load-balancer-type": "external",
            "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip"})
        ip = f"172.20.{rng.randrange(256)}.{rng.randrange(2, 254)}"
        uid = em.uid()
        em.request(t, a, "create", "services", wl.ns, req=body,
                   resp=o.service_stored(body, uid, em.next_rv(), em.ts_s(t), ip, [30000 + rng.randrange(2768)]))
        lbc = c.wl["aws-load-balancer-controller"].pods[0].actor
        em.request(t + 400_000, lbc, "get", "services", wl.ns, name)
        old = f"{wl.name}-internal-{rand_str(rng, 4, 'abcdefghijklmnopqrstuvwxyz')}"
        em.request(t + 2 * SECOND, a, "delete", "services", wl.ns, old, req=o.delete_options(),
                   resp=o.status_success("services", old, em.uid()))

    def _serving_csr(self, t: int, rng: random.Random) -> None:
        """A kubelet rotating its serving certificate (kubelet-serving, auto-approved)."""
        node = rng.choice(self.c.nodes)
        self.bg.serving_csr(t, node, self.em, rng)

    def _engineer_exec(self, t: int, rng: random.Random) -> None:
        """An engineer running a harmless command in one of their team's pods."""
        em = self.em
        eng, a = self._engineer(rng, t)
        wl = self._deployment(rng, eng.namespaces)
        pod = rng.choice(wl.pods)
        cmd = rng.choice((["ls", "-la", "/app"], ["sh", "-c", "env | grep -i database"], ["cat", "/etc/hosts"],
                          ["sh", "-c", "env | grep REDIS"], ["ls", "/tmp"]))
        em.request(t, a, "get", "pods", wl.ns, pod.name, code=None)
        em.request(t + 90_000, a, "create", "pods", wl.ns, pod.name, "exec", code=None,
                   query=exec_query(cmd, wl.containers[0]), duration=rng.randrange(SECOND, 4 * SECOND))
