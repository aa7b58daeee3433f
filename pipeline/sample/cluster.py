"""The simulated EKS cluster: nodes, workloads, pods, identities and what each may do.

Everything here is drawn once from the seed so the same identities, addresses and user agents
recur every day: that stability is what lets a detector learn per-identity baselines.
"""

from __future__ import annotations

import random
import string
import zlib
from dataclasses import dataclass, field

from .emit import DAY, HOUR, READ_VERBS, STREAMING, Actor

ACCOUNT = "111122223333"
EKS_SERVICE_ACCOUNT = "444455556666"
REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2"]
K8S_PATCH = ["v1.29.8", "v1.29.10", "v1.29.13"]
APP_NAMESPACES = ["payments", "checkout", "web", "data"]
OFFICE_IPS = [f"198.51.100.{i}" for i in (10, 11, 12, 13)]
VPN_IPS = [f"203.0.113.{i}" for i in (66, 67, 70)]
SELF_REVIEWS = frozenset({"selfsubjectaccessreviews", "selfsubjectrulesreviews", "selfsubjectreviews"})
RBAC_RESOURCES = frozenset({"roles", "rolebindings", "clusterroles", "clusterrolebindings"})

DISCOVERY = ('RBAC: allowed by ClusterRoleBinding "system:discovery" of ClusterRole "system:discovery" '
             'to Group "system:authenticated"')
BASIC_USER = ('RBAC: allowed by ClusterRoleBinding "system:basic-user" of ClusterRole "system:basic-user" '
              'to Group "system:authenticated"')
PUBLIC_INFO = ('RBAC: allowed by ClusterRoleBinding "system:public-info-viewer" of ClusterRole '
               '"system:public-info-viewer" to Group "system:unauthenticated"')
ANONYMOUS = {"username": "system:anonymous", "groups": ["system:unauthenticated"]}

ENGINEER_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
                  "ken", "lena", "mike", "nora", "oscar", "priya", "quinn", "raj", "sara", "tomas"]
# (UTC offset hours, label): the company's home zones and where remote engineers sit.
ZONES = [(-8, "US/Pacific"), (-5, "US/Eastern"), (0, "Europe/London"), (1, "Europe/Berlin"),
         (5.5, "Asia/Kolkata"), (10, "Australia/Sydney")]
KUBECTL = [("v1.28.4", "bae2c62"), ("v1.29.2", "4b8e819"), ("v1.29.7", "4e4a18878")]
# Public ranges that look like residential broadband for engineers' homes.
HOME_PREFIXES = ["73.", "24.", "86.", "92.", "81.", "49.", "101.", "174."]

_HASH = "bcdfghjklmnpqrstvwxz2456789"


def uuid4(rng: random.Random) -> str:
    x = rng.getrandbits(128) & ~(0xF << 76) & ~(0x3 << 62) | (0x4 << 76) | (0x2 << 62)
    h = "%032x" % x
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def rand_str(rng: random.Random, n: int, alphabet: str = _HASH) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def access_key(rng: random.Random) -> str:
    return "ASIA" + rand_str(rng, 16, string.ascii_uppercase + "234567")


def role_id(rng: random.Random) -> str:
    return "AROA" + rand_str(rng, 17, string.ascii_uppercase + "234567")


def public_ip(rng: random.Random, prefixes: list[str] | None = None) -> str:
    """A routable, non-documentation IPv4 address (optionally under one of `prefixes`)."""
    if prefixes:
        p = rng.choice(prefixes)
        parts = p.rstrip(".").split(".")
        parts += [str(rng.randint(1, 254)) for _ in range(4 - len(parts))]
        return ".".join(parts)
    while True:
        a = rng.randint(1, 223)
        b = rng.randint(0, 255)
        if a in (10, 127, 0, 100, 169, 172, 192, 198, 203):
            continue
        return f"{a}.{b}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def sized(base: int, scale: float, minimum: int = 1) -> tuple[int, float]:
    """How many of something a cluster at `scale` has, and the rate factor that keeps total
    volume proportional to `scale` when the count is held at its minimum."""
    want = base * scale
    n = max(minimum, round(want))
    return n, min(1.0, want / n)


def binding_reason(kind: str, binding: str, role_kind: str, role: str, subject_kind: str, subject: str) -> str:
    return f'RBAC: allowed by {kind} "{binding}" of {role_kind} "{role}" to {subject_kind} "{subject}"'


def access_policy_reason(principal: str, username: str, policy: str, ns: str = "") -> str:
    pol = f"arn:aws:eks::aws:cluster-access-policy/{policy}"
    if ns:
        return f'EKS Access Policy: allowed by RoleBinding "{principal}+{pol}/{ns}" of ClusterRole "{pol}" to User "{username}"'
    return f'EKS Access Policy: allowed by ClusterRoleBinding "{principal}+{pol}" of ClusterRole "{pol}" to User "{username}"'


def admin_authz(reason: str):
    """Cluster admin: everything is allowed."""
    def authz(verb, res, sub, ns, name, group):
        if not res:
            return DISCOVERY
        return BASIC_USER if res in SELF_REVIEWS else reason
    return authz


def dev_authz(view: str, edit: dict[str, str]):
    """A developer's access entry: edit (incl. secrets, exec) in their namespaces, view elsewhere."""
    def authz(verb, res, sub, ns, name, group):
        if not res:
            return DISCOVERY
        if res in SELF_REVIEWS:
            return BASIC_USER
        if ns in edit and res not in RBAC_RESOURCES:
            return edit[ns]
        if verb in READ_VERBS and res != "secrets" and res not in RBAC_RESOURCES and sub not in STREAMING \
                and res != "certificatesigningrequests":
            return view
        return None
    return authz


def rules_authz(rules: list[tuple[frozenset | None, frozenset | None, str | None]], reason_for):
    """RBAC from (verbs, resources, namespace) rules; None means any. `reason_for(ns)` names
    the binding that allowed the request."""
    def authz(verb, res, sub, ns, name, group):
        if not res:
            return DISCOVERY
        if res in SELF_REVIEWS:
            return BASIC_USER
        full = f"{res}/{sub}" if sub else res
        for verbs, resources, namespace in rules:
            if (verbs is None or verb in verbs) and (resources is None or full in resources) \
                    and (namespace is None or namespace == ns):
                return reason_for(ns)
        return None
    return authz


@dataclass
class Workload:
    ns: str
    name: str
    kind: str
    replicas: int
    sa: str
    containers: list[str]
    image: str
    configmaps: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    host_network: bool = False
    thin: float = 1.0
    pods: list[Pod] = field(default_factory=list)
    rs_hash: str = ""


@dataclass
class Node:
    name: str
    ip: str
    uid: str
    instance: str
    actor: Actor
    active: tuple[int, int]
    pods: list[Pod] = field(default_factory=list)


@dataclass
class Pod:
    name: str
    uid: str
    workload: Workload
    node: Node
    ip: str
    actor: Actor | None = None


@dataclass
class Engineer:
    """A human with kubectl: working hours in their own zone, a few habitual addresses."""

    short: str
    username: str
    tz: float
    hours: tuple[int, int]
    platform: bool
    namespaces: list[str]
    os_arch: str
    kubectl: str
    ips: list[str]
    home_ip: str
    proxy_ip: str
    role_arn: str
    role: str
    role_id: str
    execs: bool
    activity: float
    authorize: object = None

    def user(self, key: str) -> dict:
        """EKS's view of an access-entry user: the IAM session behind it sits in `extra`."""
        s = self.short
        return {"username": self.username, "uid": f"aws-iam-authenticator:{ACCOUNT}:{self.role_id}",
                "groups": ["system:authenticated"],
                "extra": {"accessKeyId": [key],
                          "arn": [f"arn:aws:sts::{ACCOUNT}:assumed-role/{self.role}/{s}"],
                          "canonicalArn": [self.role_arn], "principalId": [f"{self.role_id}:{s}"],
                          "sessionName": [s]}}

    def actor(self, key: str, ips: list[str], ua: str | None = None) -> Actor:
        return Actor(self.username, self.user(key), ips, ua or self.kubectl, "", self.authorize)


WORKLOADS = [
    # ns, name, kind, replicas at scale 1, service account, containers, configmaps, secrets, hostNetwork
    ("kube-system", "coredns", "Deployment", 2, "coredns", ["coredns"], ["coredns"], [], False),
    ("kube-system", "aws-node", "DaemonSet", 0, "aws-node", ["aws-node", "aws-eks-nodeagent"], ["amazon-vpc-cni"], [], True),
    ("kube-system", "kube-proxy", "DaemonSet", 0, "kube-proxy", ["kube-proxy"], ["kube-proxy", "kube-proxy-config"], [], True),
    ("kube-system", "ebs-csi-node", "DaemonSet", 0, "ebs-csi-node-sa", ["ebs-plugin", "node-driver-registrar", "liveness-probe"], [], [], False),
    ("kube-system", "ebs-csi-controller", "Deployment", 2, "ebs-csi-controller-sa", ["ebs-plugin", "csi-provisioner", "csi-attacher", "csi-resizer", "liveness-probe"], [], [], False),
    ("kube-system", "metrics-server", "Deployment", 1, "metrics-server", ["metrics-server"], [], [], False),
    ("kube-system", "aws-load-balancer-controller", "Deployment", 2, "aws-load-balancer-controller", ["aws-load-balancer-controller"], [], ["aws-load-balancer-tls"], False),
    ("monitoring", "prometheus-server", "StatefulSet", 1, "prometheus", ["prometheus", "config-reloader"], ["prometheus-server"], [], False),
    ("monitoring", "kube-state-metrics", "Deployment", 1, "kube-state-metrics", ["kube-state-metrics"], [], [], False),
    ("monitoring", "grafana", "Deployment", 1, "grafana", ["grafana"], ["grafana"], ["grafana-admin"], False),
    ("argocd", "argocd-application-controller", "StatefulSet", 1, "argocd-application-controller", ["argocd-application-controller"], ["argocd-cm", "argocd-rbac-cm"], ["argocd-secret"], False),
    ("argocd", "argocd-server", "Deployment", 1, "argocd-server", ["argocd-server"], ["argocd-cm"], ["argocd-secret"], False),
    ("argocd", "argocd-repo-server", "Deployment", 1, "argocd-repo-server", ["argocd-repo-server"], ["argocd-cm"], [], False),
    ("cert-manager", "cert-manager", "Deployment", 1, "cert-manager", ["cert-manager-controller"], [], [], False),
    ("cert-manager", "cert-manager-cainjector", "Deployment", 1, "cert-manager-cainjector", ["cert-manager-cainjector"], [], [], False),
    ("ingress-nginx", "ingress-nginx-controller", "Deployment", 2, "ingress-nginx", ["controller"], ["ingress-nginx-controller"], ["ingress-nginx-admission"], False),
    ("payments", "payments-api", "Deployment", 3, "payments-api", ["api", "envoy"], ["payments-config"], ["payments-db-credentials", "payments-stripe-api-key"], False),
    ("payments", "payments-worker", "Deployment", 2, "payments-worker", ["worker"], ["payments-config"], ["payments-db-credentials"], False),
    ("checkout", "checkout-api", "Deployment", 3, "checkout-api", ["api"], ["checkout-config", "feature-flags"], ["checkout-db", "checkout-redis"], False),
    ("checkout", "cart", "Deployment", 2, "cart", ["cart"], ["feature-flags"], ["checkout-redis"], False),
    ("web", "frontend", "Deployment", 3, "frontend", ["nginx", "frontend"], ["frontend-config"], [], False),
    ("web", "web-bff", "Deployment", 2, "web-bff", ["bff"], ["frontend-config"], ["bff-session-key", "web-oauth-client"], False),
    ("data", "etl-runner", "Deployment", 1, "etl-runner", ["runner"], ["etl-config"], ["warehouse-credentials", "etl-s3-access"], False),
    ("data", "reporting", "Deployment", 1, "reporting", ["reporting"], ["etl-config"], ["warehouse-credentials", "reporting-smtp"], False),
]

EXTRA_SECRETS = {
    "kube-system": ["sh.helm.release.v1.aws-load-balancer-controller.v4", "sh.helm.release.v1.metrics-server.v2"],
    "monitoring": ["alertmanager-main", "prometheus-k8s-tls", "sh.helm.release.v1.kube-prometheus-stack.v12"],
    "argocd": ["argocd-initial-admin-secret", "repo-gitops-creds", "cluster-prod-eks", "argocd-redis", "argocd-server-tls"],
    "cert-manager": ["cert-manager-webhook-ca", "letsencrypt-prod-account-key"],
    "payments": ["payments-tls", "sh.helm.release.v1.payments.v37"],
    "checkout": ["checkout-tls", "sh.helm.release.v1.checkout.v21"],
    "web": ["frontend-tls"],
    "default": ["registry-pull-secret"],
}
EXTRA_CONFIGMAPS = {
    "kube-system": ["aws-auth", "extension-apiserver-authentication", "kube-apiserver-legacy-service-account-token-tracking"],
}
# Secrets cert-manager issues and renews (benign cross-namespace secret access).
CERT_SECRETS = [("payments", "payments-tls"), ("checkout", "checkout-tls"), ("web", "frontend-tls"),
                ("argocd", "argocd-server-tls"), ("monitoring", "prometheus-k8s-tls"),
                ("kube-system", "aws-load-balancer-tls"), ("ingress-nginx", "ingress-nginx-admission")]
NAMESPACES = ["default", "kube-system", "kube-public", "kube-node-lease", "monitoring", "argocd", "cert-manager",
              "ingress-nginx", *APP_NAMESPACES]


class Cluster:
    """Topology and identities of one simulated cluster, fixed by (seed, scale, time span)."""

    def __init__(self, seed: int, scale: float, start: int, end: int):
        rng = random.Random(f"auditsift-cluster-{seed}")
        self.seed, self.scale, self.start, self.end = seed, scale, start, end
        self.region = rng.choice(REGIONS)
        self.name = rng.choice(["prod", "prod-eks", "main", "platform"]) + "-" + rand_str(rng, 4, "abcdefghjkmnpqrstuvwxyz")
        self.version = rng.choice(K8S_PATCH)
        self.commit = "%07x" % rng.getrandbits(28)
        self.kubelet_ua = f"kubelet/{self.version} (linux/amd64) kubernetes/{self.commit}"
        self.fixed = min(1.0, scale)
        self.ecr = f"602401143452.dkr.ecr.{self.region}.amazonaws.com"
        self.cp_ips = [f"172.16.{rng.randint(0, 255)}.{rng.randint(2, 254)}" for _ in range(3)]
        self.subnets = [0, 32, 64]
        self.node_role = "eks-node-group-role-" + rand_str(rng, 6, "0123456789abcdef")
        self.node_role_id = role_id(rng)
        self.lambda_ips = {
            "eks:addon-manager": [public_ip(rng, ["35.163.", "44.234.", "52.88."]) for _ in range(4)],
            "eks:node-manager": [public_ip(rng, ["34.212.", "54.190.", "52.43."]) for _ in range(4)],
        }
        self.ci_ip = public_ip(rng, ["3.21.", "18.118.", "52.15."])
        self.secrets: dict[str, list[str]] = {ns: list(v) for ns, v in EXTRA_SECRETS.items()}
        self.configmaps: dict[str, list[str]] = {ns: ["kube-root-ca.crt"] for ns in NAMESPACES}
        for ns, names in EXTRA_CONFIGMAPS.items():
            self.configmaps[ns] += names
        self.nodes: list[Node] = []
        self.n_nodes, self.node_thin = sized(4, scale, 2)
        for i in range(self.n_nodes):
            self.nodes.append(self._node(rng, (start - DAY, end + DAY)))
        self.churn_nodes: list[Node] = []
        for day in range(start, end, DAY):
            day_rng = random.Random(f"auditsift-churn-{seed}-{day}")
            if day_rng.random() < 0.45:
                t0 = day + day_rng.randint(6, 15) * HOUR + day_rng.randrange(HOUR)
                self.churn_nodes.append(self._node(day_rng, (t0, t0 + day_rng.randint(2, 7) * HOUR)))
        self.workloads: list[Workload] = []
        for ns, name, kind, replicas, sa, containers, cms, secrets, host in WORKLOADS:
            image = self._image(name)
            n, thin = sized(replicas, scale) if kind != "DaemonSet" else (0, self.node_thin)
            wl = Workload(ns, name, kind, n, sa, containers, image, cms, secrets, host, thin,
                          rs_hash=rand_str(rng, rng.choice((9, 10))))
            self.workloads.append(wl)
            for c in cms:
                if c not in self.configmaps[ns]:
                    self.configmaps[ns].append(c)
            for s in secrets:
                self.secrets.setdefault(ns, [])
                if s not in self.secrets[ns]:
                    self.secrets[ns].append(s)
        self.sa_uids = {(w.ns, w.sa): uuid4(rng) for w in self.workloads}
        for wl in self.workloads:
            self._place(rng, wl)
        self.wl = {w.name: w for w in self.workloads}
        self.engineers = self._engineers(rng)
        self.ci = self._ci(rng)
        self.controller_ua = f"kube-controller-manager/{self.version} (linux/amd64) kubernetes/{self.commit}"
        self.scheduler_ua = f"kube-scheduler/{self.version} (linux/amd64) kubernetes/{self.commit}"

    def _image(self, name: str) -> str:
        """Container image: EKS add-ons from the regional EKS ECR, apps from the account's ECR."""
        eks = {"coredns": "eks/coredns:v1.11.1-eksbuild.9", "aws-node": "amazon-k8s-cni:v1.18.3-eksbuild.2",
               "kube-proxy": f"eks/kube-proxy:{self.version}-minimal-eksbuild.2",
               "ebs-csi-node": "eks/aws-ebs-csi-driver:v1.33.0", "ebs-csi-controller": "eks/aws-ebs-csi-driver:v1.33.0"}
        if name in eks:
            return f"{self.ecr}/{eks[name]}"
        if name.split("-")[0] in ("payments", "checkout", "cart", "frontend", "web", "etl", "reporting"):
            return f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{name}:1.{zlib.crc32(name.encode()) % 90}.{self.seed % 7}"
        return f"quay.io/{name.split('-')[0]}/{name}:v2.{len(name) % 9}.1"

    def _node(self, rng: random.Random, active: tuple[int, int]) -> Node:
        subnet = rng.choice(self.subnets)
        ip = f"10.0.{subnet + rng.randint(0, 31)}.{rng.randint(4, 254)}"
        name = f"ip-{ip.replace('.', '-')}.{self.region}.compute.internal"
        instance = "i-0" + "%016x" % rng.getrandbits(64)
        user = {"username": f"system:node:{name}", "uid": f"aws-iam-authenticator:{ACCOUNT}:{self.node_role_id}",
                "groups": ["system:nodes", "system:authenticated"],
                "extra": {"accessKeyId": [access_key(rng)],
                          "arn": [f"arn:aws:sts::{ACCOUNT}:assumed-role/{self.node_role}/{instance}"],
                          "canonicalArn": [f"arn:aws:iam::{ACCOUNT}:role/{self.node_role}"],
                          "principalId": [f"{self.node_role_id}:{instance}"], "sessionName": [instance]}}
        node = Node(name, ip, uuid4(rng), instance, Actor(user["username"], user, [ip], self.kubelet_ua), active)
        node.actor.authorize = self._node_authz(node)
        node.actor.deny_suffix = f": no relationship found between node '{name}' and this object"
        return node

    def _node_authz(self, node: Node):
        """The Node authorizer: a kubelet reads only objects its own pods reference."""
        def authz(verb, res, sub, ns, name, group):
            if not res:
                return DISCOVERY
            if res in ("secrets", "configmaps", "persistentvolumeclaims") or (res == "serviceaccounts" and sub == "token"):
                for p in node.pods:
                    wl = p.workload
                    if p.workload.ns != ns:
                        continue
                    if (res == "secrets" and name in wl.secrets) or (res == "configmaps" and name in (*wl.configmaps, "kube-root-ca.crt")) \
                            or (res == "serviceaccounts" and name == wl.sa):
                        return ""
                return None
            if verb in READ_VERBS and res in ("pods", "nodes", "services", "endpoints", "namespaces", "csidrivers", "runtimeclasses"):
                return ""
            if res == "leases" and ns == "kube-node-lease":
                return ""
            return None
        return authz

    def _place(self, rng: random.Random, wl: Workload) -> None:
        """Create the workload's pods on nodes, each with its service-account identity."""
        nodes = self.nodes
        if wl.kind == "DaemonSet":
            targets = list(nodes)
        else:
            targets = [nodes[(i + rng.randrange(len(nodes))) % len(nodes)] for i in range(wl.replicas)]
        for i, node in enumerate(targets):
            if wl.kind == "DaemonSet":
                name = f"{wl.name}-{rand_str(rng, 5)}"
            elif wl.kind == "StatefulSet":
                name = f"{wl.name}-{i}"
            else:
                name = f"{wl.name}-{wl.rs_hash}-{rand_str(rng, 5)}"
            ip = node.ip if wl.host_network else ".".join(node.ip.split(".")[:3]) + f".{rng.randint(4, 254)}"
            pod = Pod(name, uuid4(rng), wl, node, ip)
            pod.actor = self.sa_actor(rng, wl, pod)
            wl.pods.append(pod)
            node.pods.append(pod)

    def sa_actor(self, rng: random.Random, wl: Workload, pod: Pod) -> Actor:
        user = {"username": f"system:serviceaccount:{wl.ns}:{wl.sa}", "uid": self.sa_uids[(wl.ns, wl.sa)],
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{wl.ns}", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": [f"JTI={uuid4(rng)}"],
                          "authentication.kubernetes.io/node-name": [pod.node.name],
                          "authentication.kubernetes.io/node-uid": [pod.node.uid],
                          "authentication.kubernetes.io/pod-name": [pod.name],
                          "authentication.kubernetes.io/pod-uid": [pod.uid]}}
        return Actor(user["username"], user, [pod.ip], self.workload_ua(wl), self.sa_reason(wl),
                     self.sa_authz(wl))

    def workload_ua(self, wl: Workload) -> str:
        uas = {
            "coredns": "coredns/v0.0.0 (linux/amd64) kubernetes/$Format",
            "aws-node": "aws-k8s-agent/v0.0.0 (linux/amd64) kubernetes/$Format",
            "kube-proxy": f"kube-proxy/{self.version} (linux/amd64) kubernetes/{self.commit}",
            "ebs-csi-node": "aws-ebs-csi-driver/v0.0.0 (linux/amd64) kubernetes/$Format",
            "ebs-csi-controller": "csi-provisioner/v0.0.0 (linux/amd64) kubernetes/$Format",
            "metrics-server": "metrics-server/v0.7.1 (linux/amd64) kubernetes/$Format",
            "aws-load-balancer-controller": "aws-load-balancer-controller/v2.8.1 (linux/amd64) kubernetes/$Format",
            "prometheus-server": "Prometheus/2.53.1",
            "kube-state-metrics": "kube-state-metrics/v2.12.0 (linux/amd64) kubernetes/$Format",
            "grafana": "Grafana/11.1.0",
            "argocd-application-controller": "argocd-application-controller/v2.11.7+e4a0246 (linux/amd64) kubernetes/$Format",
            "argocd-server": "argocd-server/v2.11.7+e4a0246 (linux/amd64) kubernetes/$Format",
            "argocd-repo-server": "argocd-repo-server/v2.11.7+e4a0246 (linux/amd64) kubernetes/$Format",
            "cert-manager": "cert-manager-controller/v1.15.1 (linux/amd64) cert-manager/2ab2bd1e",
            "cert-manager-cainjector": "cert-manager-cainjector/v1.15.1 (linux/amd64) cert-manager/2ab2bd1e",
            "ingress-nginx-controller": "nginx-ingress-controller/v1.11.1 (linux/amd64) ingress-nginx/7c44f992",
            "payments-api": "Go-http-client/2.0",
            "payments-worker": "Go-http-client/2.0",
            "checkout-api": "fabric8-kubernetes-client/6.13.1",
            "cart": "fabric8-kubernetes-client/6.13.1",
            "web-bff": "node-fetch",
            "frontend": "node-fetch",
            "etl-runner": "OpenAPI-Generator/29.0.0/python",
            "reporting": "OpenAPI-Generator/29.0.0/python",
        }
        return uas[wl.name]

    def sa_reason(self, wl: Workload) -> str:
        subject = f"{wl.sa}/{wl.ns}"
        if wl.ns in APP_NAMESPACES:
            return binding_reason("RoleBinding", f"{wl.sa}/{wl.ns}", "Role", wl.sa, "ServiceAccount", subject)
        role = {"aws-node": "aws-node", "kube-proxy": "system:node-proxier", "coredns": "system:coredns",
                "prometheus": "prometheus-server", "kube-state-metrics": "kube-state-metrics"}.get(wl.sa, wl.sa)
        return binding_reason("ClusterRoleBinding", role, "ClusterRole", role, "ServiceAccount", subject)

    def sa_authz(self, wl: Workload):
        """What each service account's RBAC allows (used when attacks act as it)."""
        r = self.sa_reason(wl)
        reads = frozenset({"get", "list", "watch"})
        if wl.ns in APP_NAMESPACES:
            rules = [(reads, frozenset({"configmaps", "pods", "services", "endpoints"}), wl.ns),
                     (frozenset({"get"}), frozenset({"secrets"}), wl.ns),
                     (frozenset({"get", "create", "update"}), frozenset({"leases"}), wl.ns)]
        elif wl.sa in ("prometheus", "kube-state-metrics"):
            rules = [(reads, frozenset({"pods", "nodes", "services", "endpoints", "namespaces", "secrets", "configmaps",
                                        "deployments", "daemonsets", "statefulsets", "replicasets", "jobs", "cronjobs",
                                        "persistentvolumes", "persistentvolumeclaims", "ingresses", "nodes/metrics"}), None)]
        elif wl.sa == "argocd-application-controller":
            rules = [(None, None, None)]
        elif wl.sa == "cert-manager":
            rules = [(None, frozenset({"secrets", "events", "certificates", "issuers", "clusterissuers",
                                       "certificaterequests", "orders", "challenges", "leases"}), None),
                     (reads, frozenset({"pods", "services", "ingresses", "namespaces"}), None)]
        elif wl.sa == "aws-node":
            rules = [(reads, frozenset({"pods", "nodes", "namespaces", "eniconfigs", "cninodes"}), None),
                     (frozenset({"patch", "update"}), frozenset({"pods", "nodes"}), None)]
        elif wl.sa == "ingress-nginx":
            rules = [(reads, frozenset({"configmaps", "endpoints", "nodes", "pods", "secrets", "namespaces", "services",
                                        "ingresses", "ingressclasses", "endpointslices"}), None)]
        else:
            rules = [(reads, frozenset({"pods", "nodes", "services", "endpoints", "endpointslices", "namespaces",
                                        "persistentvolumes", "persistentvolumeclaims", "volumeattachments"}), None)]
        return rules_authz(rules, lambda ns: r)

    def _engineers(self, rng: random.Random) -> list[Engineer]:
        """4-8 engineers, most in the company's zone; one or two platform admins, the rest
        developers with edit rights in one or two app namespaces. About a third reach the
        office egress through a proxy that adds an X-Forwarded-For address."""
        hq = rng.choice(ZONES[:4])
        self.hq_tz = hq[0]
        names = rng.sample(ENGINEER_NAMES, rng.randint(4, 8))
        platform = set(rng.sample(names, rng.choice((1, 2))))
        role_ids = {"PlatformAdminRole": role_id(rng), "EngineerRole": role_id(rng)}
        out = []
        for short in names:
            tz = hq if rng.random() < 0.7 else rng.choice(ZONES)
            os_arch = rng.choices(["darwin/arm64", "darwin/amd64", "linux/amd64"], [6, 2, 2])[0]
            ver, commit = rng.choice(KUBECTL)
            is_platform = short in platform
            role = "PlatformAdminRole" if is_platform else "EngineerRole"
            role_arn = f"arn:aws:iam::{ACCOUNT}:role/{role}"
            nss = rng.sample(APP_NAMESPACES, rng.choice((1, 1, 2)))
            ips = rng.sample(VPN_IPS, 1) if tz != hq else rng.sample(OFFICE_IPS, 2)
            start_h = rng.choice((7, 8, 8, 9, 9, 10))
            home = public_ip(rng, HOME_PREFIXES)
            proxy = f"10.{rng.choice((8, 40))}.{rng.randint(0, 255)}.{rng.randint(2, 254)}" if rng.random() < 0.3 else ""
            eng = Engineer(short, f"{short}@corp.example", tz[0], (start_h, start_h + rng.choice((8, 9, 10))),
                           is_platform, nss, os_arch, f"kubectl/{ver} ({os_arch}) kubernetes/{commit}", ips, home,
                           proxy, role_arn, role, role_ids[role], rng.random() < 0.5, rng.uniform(0.6, 1.4))
            if is_platform:
                eng.authorize = admin_authz(access_policy_reason(role_arn, eng.username, "AmazonEKSClusterAdminPolicy"))
            else:
                eng.authorize = dev_authz(access_policy_reason(role_arn, eng.username, "AmazonEKSViewPolicy"),
                                          {ns: access_policy_reason(role_arn, eng.username, "AmazonEKSEditPolicy", ns)
                                           for ns in nss})
            out.append(eng)
        return out

    def _ci(self, rng: random.Random) -> dict:
        rid = role_id(rng)
        return {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/ci-deployer", "role_id": rid, "ip": self.ci_ip,
                "reason": access_policy_reason(f"arn:aws:iam::{ACCOUNT}:role/ci-deployer", "ci-deployer",
                                               "AmazonEKSClusterAdminPolicy")}

    def ci_actor(self, rng: random.Random, ua: str) -> Actor:
        """The CI deploy role: one STS session per pipeline run, always from the runners' NAT."""
        ci = self.ci
        session = f"gha-{rng.randint(7_000_000_000, 9_999_999_999)}"
        user = {"username": "ci-deployer", "uid": f"aws-iam-authenticator:{ACCOUNT}:{ci['role_id']}",
                "groups": ["system:authenticated"],
                "extra": {"accessKeyId": [access_key(rng)],
                          "arn": [f"arn:aws:sts::{ACCOUNT}:assumed-role/ci-deployer/{session}"],
                          "canonicalArn": [ci["role_arn"]], "principalId": [f"{ci['role_id']}:{session}"],
                          "sessionName": [session]}}
        return Actor("ci-deployer", user, [ci["ip"]], ua, ci["reason"], admin_authz(ci["reason"]))

    def all_nodes(self) -> list[Node]:
        return self.nodes + self.churn_nodes

    def system_actor(self, username: str, ua: str, reason: str, ip: str | None = None, extra: dict | None = None) -> Actor:
        user = {"username": username, "groups": ["system:authenticated"]}
        if extra:
            user["extra"] = extra
        return Actor(username, user, [ip or self.cp_ips[0]], ua, reason, admin_authz(reason))

    def controller(self, rng: random.Random, name: str) -> Actor:
        """A kube-controller-manager controller running with its own kube-system service account."""
        username = f"system:serviceaccount:kube-system:{name}"
        user = {"username": username, "uid": uuid4(rng),
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]}
        reason = binding_reason("ClusterRoleBinding", f"system:controller:{name}", "ClusterRole",
                                f"system:controller:{name}", "ServiceAccount", f"{name}/kube-system")
        return Actor(username, user, [self.cp_ips[0]], f"{self.controller_ua}/{username}", reason, admin_authz(reason))

    def secret_inventory(self) -> list[tuple[str, str]]:
        return [(ns, s) for ns, names in sorted(self.secrets.items()) for s in names]

    def pods_in(self, ns: str) -> list[Pod]:
        return [p for w in self.workloads if w.ns == ns for p in w.pods]

