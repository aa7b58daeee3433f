"""Human and internet traffic: engineers with kubectl, the CI deploy role, and anonymous
internet scanners.

Engineers keep their own time zones, working hours, addresses, client and habits (some
routinely exec into their own team's pods); they also make the ordinary mistakes (403s, 404s)
and now and then work from home or a hotel. Each session is drawn from its own seeded stream,
so one engineer's day does not depend on anyone else's.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

from . import objects as o
from .background import Background, arrivals, escape, poisson
from .cluster import ANONYMOUS, APP_NAMESPACES, PUBLIC_INFO, Cluster, Engineer, access_key, public_ip, rand_str
from .emit import DAY, HOUR, MINUTE, US, Actor, exec_query

SECOND = US
HELM_UA = "Helm/3.14.2"
SCANNER_UAS = ["Mozilla/5.0 zgrab/0.x", "python-requests/2.31.0", "Go-http-client/1.1", "curl/7.88.1",
               "Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)", "masscan/1.3",
               "Expanse, a Palo Alto Networks company, searches across the global IPv4 space multiple times per day "
               "to identify customers' presences on the Internet. If you would like to be excluded from our scans, "
               "please send IP addresses/domains to: scaninfo@paloaltonetworks.com",
               "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
               "l9explore/1.2.2", "Custom-AsyncHttpClient", "fasthttp"]
# Recurring research-scanner ranges plus random internet hosts.
SCANNER_PREFIXES = ["162.142.125.", "167.94.138.", "167.94.146.", "198.235.24.", "205.210.31.", "71.6.199.", "184.105.247."]
PLATFORM_NAMESPACES = ["default", "kube-system", "monitoring", "argocd", *APP_NAMESPACES]
SCAN_PATHS = ["/", "/", "/version", "/api", "/apis", "/.env", "/.git/config", "/healthz", "/metrics", "/robots.txt",
              "/favicon.ico", "/wp-login.php", "/actuator/health", "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php",
              "/owa/auth/logon.aspx", "/cgi-bin/luci/;stok=/locale", "/server-status", "/api/v1/namespaces",
              "/api/v1/pods", "/api/v1/namespaces/kube-system/secrets", "/apis/apps/v1/deployments", "/openapi/v2",
              "/api/v1/nodes", "/swagger-ui.html", "/.aws/credentials", "/config.json"]


def scanner_request(em, t: int, actor: Actor, path: str) -> str:
    """An anonymous probe: resource paths become list requests, the rest stay non-resource."""
    parts = path.strip("/").split("/")
    if path in ("/version", "/healthz", "/livez", "/readyz"):
        return em.request(t, actor, "get", uri=path, reason=PUBLIC_INFO)
    if parts[0] == "api" and len(parts) >= 3 and parts[1] == "v1":
        rest = parts[2:]
        ns = rest[1] if rest[0] == "namespaces" and len(rest) >= 3 else ""
        res = rest[-1]
        return em.request(t, actor, "list", res, ns, uri=path, code=403)
    if parts[0] == "apis" and len(parts) >= 4:
        return em.request(t, actor, "list", parts[-1], group=parts[1], version=parts[2], uri=path, code=403)
    return em.request(t, actor, "get", uri=path, code=403)


class People:
    """Engineers, CI and scanners; `hour(h0, h1)` writes requests whose sessions start in [h0, h1)."""

    def __init__(self, cluster: Cluster, bg: Background, seed: int):
        self.c, self.bg, self.em, self.seed = cluster, bg, bg.em, seed
        self.rng = random.Random(f"auditsift-people-{seed}")
        self.release = {"payments": 37, "checkout": 21}
        self.scanners = [public_ip(self.rng, SCANNER_PREFIXES) for _ in range(12)]

    def hour(self, h0: int, h1: int) -> None:
        day0 = self.c.start + (h0 - self.c.start) // DAY * DAY
        for eng in self.c.engineers:
            for t, rng in self._sessions(eng, day0):
                if h0 <= t < h1:
                    self._session(eng, t, rng, day0)
        for t, rng in self._ci_runs(day0):
            if h0 <= t < h1:
                self._ci_run(t, rng)
        self._scanners(h0, h1)

    # ---- engineers ----------------------------------------------------------------------
    def _sessions(self, eng: Engineer, day0: int) -> list[tuple[int, random.Random]]:
        """Sessions starting in the UTC day, planned per local working day."""
        out = []
        local_day0 = int((day0 / US + eng.tz * 3600) // 86400)
        for ld in (local_day0 - 1, local_day0, local_day0 + 1):
            rng = random.Random(f"{self.seed}-{eng.short}-{ld}")
            work_start = (ld * 86400 - eng.tz * 3600) * US
            on_weekday = datetime.fromtimestamp(ld * 86400, timezone.utc).weekday() < 5
            n = poisson(rng, 2.6 * eng.activity) if on_weekday else (1 if rng.random() < 0.12 else 0)
            for _ in range(n):
                h = rng.uniform(eng.hours[0], eng.hours[1] - 0.5) if on_weekday else rng.uniform(10, 20)
                t = int(work_start + h * HOUR)
                if day0 <= t < day0 + DAY:
                    out.append((t, random.Random(f"{self.seed}-{eng.short}-{t}")))
        return out

    def _where(self, eng: Engineer, rng: random.Random) -> list[str]:
        r = rng.random()
        if r < 0.86:
            ip = rng.choice(eng.ips)
            return [eng.proxy_ip, ip] if eng.proxy_ip and ip.startswith("198.51.100.") else [ip]
        if r < 0.97:
            return [eng.home_ip]
        return [public_ip(rng)]

    def _session(self, eng: Engineer, t: int, rng: random.Random, day0: int) -> None:
        key = access_key(random.Random(f"{self.seed}-{eng.short}-key-{day0}"))
        a = eng.actor(key, self._where(eng, rng))
        em, c = self.em, self.c
        last_discovery = -1 << 62
        for _ in range(max(2, int(rng.uniform(4, 32) * eng.activity))):
            if t - last_discovery > 10 * MINUTE:
                em.request(t, a, "get", uri="/api?timeout=32s", code=None)
                em.request(t + rng.randrange(3000, 40_000), a, "get", uri="/apis?timeout=32s", code=None)
                last_discovery = t
                t += 60_000
            ns = rng.choice(eng.namespaces if not eng.platform or rng.random() < 0.5 else PLATFORM_NAMESPACES)
            pods = c.pods_in(ns)
            pod = rng.choice(pods) if pods else None
            cmd = rng.choices(COMMANDS, WEIGHTS_PLATFORM if eng.platform else WEIGHTS_DEV)[0]
            t = cmd(self, t, a, rng, eng, ns, pod)
            t += int(rng.lognormvariate(3.0, 0.9) * SECOND)
        if rng.random() < 0.1:
            other = rng.choice([n for n in APP_NAMESPACES if n not in eng.namespaces] or APP_NAMESPACES)
            secret = rng.choice(c.secrets.get(other, ["db"]))
            em.request(t, a, "get", "secrets", other, secret, code=None)

    def _get_pods(self, t, a, rng, eng, ns, pod):
        self.em.request(t, a, "list", "pods", ns, query="limit=500", code=None)
        return t

    def _get_all(self, t, a, rng, eng, ns, pod):
        res, group = rng.choice((("pods", ""), ("deployments", "apps"), ("nodes", ""), ("namespaces", ""), ("services", "")))
        self.em.request(t, a, "list", res, group=group, query="limit=500", code=None)
        return t

    def _describe(self, t, a, rng, eng, ns, pod):
        if pod is None:
            return t
        if rng.random() < 0.08:
            typo = f"{pod.workload.name}-{rand_str(rng, 5)}"
            self.em.request(t, a, "get", "pods", ns, typo, code=404, reason=a.authorize("get", "pods", "", ns, typo, ""))
            return t
        self.em.request(t, a, "get", "pods", ns, pod.name, code=None)
        return t

    def _logs(self, t, a, rng, eng, ns, pod):
        if pod is None:
            return t
        self.em.request(t, a, "get", "pods", ns, pod.name, code=None)
        self.em.request(t + 40_000, a, "get", "pods", ns, pod.name, "log",
                        query=f"container={pod.workload.containers[0]}&tailLines={rng.choice((50, 100, 500))}", code=None)
        return t

    def _deploys(self, t, a, rng, eng, ns, pod):
        self.em.request(t, a, "list", "deployments", ns, group="apps", query="limit=500", code=None)
        return t

    def _configmap(self, t, a, rng, eng, ns, pod):
        self.em.request(t, a, "get", "configmaps", ns, rng.choice(self.c.configmaps[ns]), code=None)
        return t

    def _secret(self, t, a, rng, eng, ns, pod):
        names = self.c.secrets.get(ns)
        if names:
            self.em.request(t, a, "get", "secrets", ns, rng.choice(names), code=None)
        return t

    def _restart(self, t, a, rng, eng, ns, pod):
        deps = [w for w in self.c.workloads if w.ns == ns and w.kind == "Deployment"]
        if not deps:
            return t
        wl = rng.choice(deps)
        self.em.request(t, a, "get", "deployments", ns, wl.name, group="apps", code=None)
        patch = o.restart_patch(self.em.ts_s(t))
        aid_ok = a.authorize("patch", "deployments", "", ns, wl.name, "apps")
        stored = self.bg.stored_workload(t + 60_000, wl, annotations=patch["spec"]["template"]["metadata"]["annotations"])
        self.em.request(t + 60_000, a, "patch", "deployments", ns, wl.name, group="apps", query="fieldManager=kubectl-rollout",
                        req=patch, resp=stored, code=None)
        if aid_ok is not None:
            self.bg.rollout(t + 100_000, wl)
        return t + 20 * SECOND

    def _exec(self, t, a, rng, eng, ns, pod):
        if pod is None or not eng.execs or ns not in eng.namespaces:
            return self._logs(t, a, rng, eng, ns, pod)
        cmd = rng.choice((["sh"], ["/bin/bash"], ["sh", "-c", "env | sort"], ["python", "manage.py", "shell"],
                          ["cat", "/app/config/settings.yaml"]))
        interactive = len(cmd) == 1
        self.em.request(t, a, "get", "pods", ns, pod.name, code=None)
        dur = rng.randrange(MINUTE, 25 * MINUTE) if interactive else rng.randrange(SECOND, 5 * SECOND)
        self.em.request(t + 80_000, a, "create", "pods", ns, pod.name, "exec", code=None,
                        query=exec_query(cmd, pod.workload.containers[0], stdin=interactive, tty=interactive), duration=dur)
        return t + (dur if interactive else 0)

    def _port_forward(self, t, a, rng, eng, ns, pod):
        if pod is None or ns not in eng.namespaces:
            return t
        self.em.request(t, a, "get", "services", ns, pod.workload.name, code=None)
        self.em.request(t + 20_000, a, "list", "pods", ns, query="labelSelector=" + escape(f"app={pod.workload.name}"), code=None)
        self.em.request(t + 50_000, a, "create", "pods", ns, pod.name, "portforward", code=None,
                        duration=rng.randrange(2 * MINUTE, 40 * MINUTE))
        return t + SECOND

    def _top(self, t, a, rng, eng, ns, pod):
        self.em.request(t, a, "list", "pods", ns, group="metrics.k8s.io", version="v1beta1", code=None)
        return t

    def _nodes(self, t, a, rng, eng, ns, pod):
        self.em.request(t, a, "list", "nodes", query="limit=500", code=None)
        if rng.random() < 0.5:
            self.em.request(t + 2 * SECOND, a, "get", "nodes", "", rng.choice(self.c.nodes).name, code=None)
        return t

    def _rbac_read(self, t, a, rng, eng, ns, pod):
        res = rng.choice(("clusterrolebindings", "rolebindings", "clusterroles"))
        self.em.request(t, a, "list", res, ns if res == "rolebindings" else "", group="rbac.authorization.k8s.io",
                        query="limit=500", code=None)
        return t

    def _aws_auth_read(self, t, a, rng, eng, ns, pod):
        self.em.request(t, a, "get", "configmaps", "kube-system", "aws-auth", code=None)
        return t

    def _can_i(self, t, a, rng, eng, ns, pod):
        verb, res = rng.choice((("create", "deployments"), ("get", "secrets"), ("delete", "pods")))
        allowed = a.authorize(verb, res, "", ns, "", "") is not None
        spec = {"resourceAttributes": {"namespace": ns, "verb": verb, "resource": res}}
        body = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": spec}
        self.em.request(t, a, "create", "selfsubjectaccessreviews", group="authorization.k8s.io", code=None, req=body,
                        resp={**body, "status": {"allowed": allowed}})
        return t

    def _scale(self, t, a, rng, eng, ns, pod):
        deps = [w for w in self.c.workloads if w.ns == ns and w.kind == "Deployment"]
        if not deps:
            return t
        wl = rng.choice(deps)
        body = {"spec": {"replicas": wl.replicas + rng.choice((0, 1))}}
        self.em.request(t, a, "patch", "deployments", ns, wl.name, "scale", group="apps", req=body, resp=o.scale_status(
            body["spec"]["replicas"], f"app={wl.name}"), code=None)
        return t

    # ---- CI -------------------------------------------------------------------------------
    def _ci_runs(self, day0: int) -> list[tuple[int, random.Random]]:
        """A few deploys each workday in the company's hours, now and then one at a weekend."""
        rng = random.Random(f"{self.seed}-ci-{day0}")
        hq = self.c.hq_tz
        workday = datetime.fromtimestamp((day0 + 12 * HOUR) / US, timezone.utc).weekday() < 5
        n = poisson(rng, 3.5) if workday else (1 if rng.random() < 0.2 else 0)
        out = []
        for _ in range(n):
            t = day0 + int((rng.uniform(8, 19) - hq) % 24 * HOUR)
            out.append((t, random.Random(f"{self.seed}-ci-{t}")))
        return out

    def _ci_run(self, t: int, rng: random.Random) -> None:
        """`helm upgrade --install --wait`: release history in secrets, patches, then polling."""
        em, c = self.em, self.c
        a = c.ci_actor(rng, HELM_UA)
        ns = app = rng.choice(("payments", "checkout"))
        v = self.release[app] = self.release[app] + 1
        em.request(t, a, "get", uri="/version?timeout=32s")
        em.request(t + 30_000, a, "get", uri="/api?timeout=32s")
        em.request(t + 45_000, a, "get", uri="/apis?timeout=32s")
        t += 300_000
        em.request(t, a, "list", "secrets", ns, query="labelSelector=" + escape(f"name={app},owner=helm"))
        em.request(t + 40_000, a, "get", "secrets", ns, f"sh.helm.release.v1.{app}.v{v - 1}")
        deps = [w for w in c.workloads if w.ns == ns and w.kind == "Deployment"]
        t += 900_000
        for w in deps:
            em.request(t, a, "get", "deployments", ns, w.name, group="apps")
            t += rng.randrange(20_000, 90_000)
        em.request(t, a, "get", "configmaps", ns, f"{ns}-config" if f"{ns}-config" in c.configmaps[ns] else c.configmaps[ns][-1])
        em.request(t + 50_000, a, "create", "secrets", ns, code=201)
        t += 400_000
        em.request(t, a, "patch", "configmaps", ns, c.configmaps[ns][-1])
        em.request(t + 60_000, a, "patch", "services", ns, deps[0].name,
                   req=o.apply_patch("Service", "v1", deps[0].name, ns, {"ports": [{"port": 80, "targetPort": 8080}]}),
                   resp=self.bg.stored_service(t + 60_000, ns, deps[0].name))
        if rng.random() < 0.25:
            rb = o.binding("RoleBinding", f"{deps[0].name}", "Role", deps[0].sa, [o.subject("ServiceAccount", deps[0].sa, ns)], ns)
            em.request(t + 90_000, a, "patch", "rolebindings", ns, deps[0].name, group="rbac.authorization.k8s.io", req=rb,
                       resp=o.stored(rb, self.bg.object_uid("RoleBinding", ns, deps[0].name), em.next_rv(),
                                     em.ts_s(c.start - 60 * HOUR)))
        for w in deps:
            t += rng.randrange(50_000, 300_000)
            image = w.image.rsplit(":", 1)[0] + f":1.{v}.{rng.randint(0, 9)}"
            patch = o.image_patch(w.containers[0], image)
            em.request(t, a, "patch", "deployments", ns, w.name, group="apps", req=patch,
                       resp=self.bg.stored_workload(t, w, image=image))
            self.bg.rollout(t + 50_000, w)
        for _ in range(rng.randint(8, 30)):
            t += 2 * SECOND + rng.randrange(200_000)
            em.request(t, a, "get", "deployments", ns, rng.choice(deps).name, group="apps")
        em.request(t + 100_000, a, "update", "secrets", ns, f"sh.helm.release.v1.{app}.v{v - 1}")
        em.request(t + 150_000, a, "update", "secrets", ns, f"sh.helm.release.v1.{app}.v{v}")

    # ---- internet scanners -----------------------------------------------------------------
    def _scanners(self, h0: int, h1: int) -> None:
        """Unauthenticated probes of the public endpoint: mostly 403s, /version allowed, a few
        invalid bearer tokens (401), and now and then a short noisy burst from one host."""
        em, rng = self.em, self.rng
        for t in arrivals(rng, h0, h1, 9):
            ip = rng.choice(self.scanners) if rng.random() < 0.4 else public_ip(rng)
            actor = Actor("system:anonymous", ANONYMOUS, [ip], rng.choice(SCANNER_UAS))
            for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
                path = rng.choice(SCAN_PATHS)
                if rng.random() < 0.02:
                    em.unauthenticated(t, [ip], actor.ua, "get", uri=path)
                else:
                    scanner_request(em, t, actor, path)
                t += rng.randrange(100_000, 5 * SECOND)
        if rng.random() < 0.05 * (h1 - h0) / HOUR:
            t = h0 + rng.randrange(h1 - h0)
            actor = Actor("system:anonymous", ANONYMOUS, [public_ip(rng)], rng.choice(SCANNER_UAS[:4]))
            for _ in range(rng.randint(12, 35)):
                scanner_request(em, t, actor, rng.choice(SCAN_PATHS))
                t += rng.randrange(200_000, 6 * SECOND)


COMMANDS = [People._get_pods, People._get_all, People._describe, People._logs, People._deploys, People._configmap,
            People._secret, People._restart, People._exec, People._port_forward, People._top, People._nodes,
            People._rbac_read, People._aws_auth_read, People._can_i, People._scale]
WEIGHTS_DEV = [30, 6, 14, 16, 10, 5, 3, 3, 8, 2, 4, 2, 0.3, 0, 0.15, 1]
WEIGHTS_PLATFORM = [18, 14, 10, 10, 10, 5, 3, 3, 3, 1, 5, 8, 3, 1, 0.3, 2]
