"""What a write really changed: the object as stored, and the facts about it that rules judge.

EKS logs writes at RequestResponse level, so a create/update/patch carries the object as stored in
its ``responseObject``, whatever patch style produced it; ``effective_object`` prefers that, and
otherwise reads the request body: a JSON patch (``kubectl patch --type=json``, a list of RFC 6902
operations) becomes a sparse object by applying its add/replace operations onto an empty skeleton,
so the same fact extractors read every shape. Merge patches, strategic merge patches and
server-side apply bodies are objects already.

Then the facts: ``pod_spec_facts`` (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
CronJob, and pods/ephemeralcontainers bodies), ``service_facts``, ``ingress_facts`` and
``role_facts``; ``body_facts`` dispatches on the resource (and to features.csr for
CertificateSigningRequests). Bodies are attacker input: patch size, pointer depth and indices are
bounded, nothing recurses over a body, inputs are never mutated, and every column is declared once
in ``COLUMNS``. Pure: decoded JSON in, dicts of columns out.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow as pa

from features import csr
from features.derived import DerivedColumn, bounded, joined, text

MAX_PATCH_OPS = 1_000
MAX_POINTER_SEGMENTS = 32
MAX_ARRAY_INDEX = 1_000
MAX_CONTAINERS = 256
MAX_ITEMS = 256  # volumes, ports, rules, hosts read per object

WRITE_VERBS = ("create", "update", "patch")
WORKLOADS = ("pods", "deployments", "statefulsets", "daemonsets", "replicasets", "jobs", "cronjobs")
CONTAINER_KINDS = ("containers", "initContainers", "ephemeralContainers")

# The capabilities that let a container escape to, or act as, its node. NET_RAW is left out: it is in the
# container runtime's default set (containerd, the EKS AMIs' runtime), so adding it changes nothing.
DANGEROUS_CAPABILITIES: dict[str, str] = {
    "ALL": "every capability: the same as privileged for most escapes",
    "SYS_ADMIN": "mount, namespaces, cgroups: the classic container escape",
    "SYS_PTRACE": "trace and inject into other processes (with hostPID, the node's)",
    "SYS_MODULE": "load kernel modules: code in the node's kernel",
    "SYS_RAWIO": "raw I/O ports and /dev/mem: read the node's memory and disks",
    "SYS_BOOT": "reboot the node, load a new kernel (kexec)",
    "SYSLOG": "read the kernel log, which leaks kernel addresses",
    "BPF": "load eBPF programs: read any process's memory and traffic",
    "PERFMON": "performance monitoring, with BPF enough to trace the node",
    "NET_ADMIN": "reconfigure networking: intercept or redirect other pods' traffic",
    "DAC_READ_SEARCH": "open any file by handle (shocker): read the host's files",
}

# Host paths a pod should not mount, with why; ``subtree`` paths are sensitive with everything under them,
# the others only exactly (a pod mounting /var/lib/mysql is not mounting /var).
@dataclass(frozen=True)
class HostPath:
    path: str
    subtree: bool
    why: str


SENSITIVE_HOST_PATHS: tuple[HostPath, ...] = (
    HostPath("/", False, "the node's whole filesystem"),
    HostPath("/etc", True, "the node's configuration: users, sudoers, cron, systemd units"),
    HostPath("/etc/kubernetes", True, "kubelet configuration and kubeconfigs"),
    HostPath("/etc/kubernetes/pki", True, "cluster and kubelet keys"),
    HostPath("/var", False, "everything variable on the node: runtime state, logs, kubelet"),
    HostPath("/var/run", False, "runtime sockets and pid files"),
    HostPath("/run", False, "runtime sockets and pid files"),
    HostPath("/var/lib", False, "every service's state on the node"),
    HostPath("/var/lib/kubelet", True, "every pod's volumes, tokens and secrets on the node, and the kubelet's own credentials"),
    HostPath("/var/lib/docker", True, "the Docker runtime's images and container filesystems"),
    HostPath("/var/lib/containerd", True, "containerd's images and container filesystems"),
    HostPath("/run/containerd", True, "containerd's socket and state: start any container on the node"),
    HostPath("/var/run/containerd", True, "containerd's socket and state: start any container on the node"),
    HostPath("/run/crio", True, "CRI-O's socket"),
    HostPath("/var/run/crio", True, "CRI-O's socket"),
    HostPath("/var/log", True, "the node's and every pod's logs"),
    HostPath("/root", True, "root's home: SSH keys, shell history, credentials"),
    HostPath("/home", True, "users' homes: SSH keys, credentials"),
    HostPath("/proc", True, "every process on the node: environments, memory, namespaces"),
    HostPath("/sys", True, "kernel and cgroup controls"),
    HostPath("/dev", True, "the node's devices and disks"),
    HostPath("/boot", True, "the node's kernel and boot loader"),
    HostPath("/usr", False, "the node's binaries"),
)
_EXACT = {h.path: h for h in SENSITIVE_HOST_PATHS}
_SUBTREES = tuple(h.path for h in SENSITIVE_HOST_PATHS if h.subtree)
# Container runtime sockets by file name, wherever they are mounted from.
RUNTIME_SOCKETS = ("docker.sock", "containerd.sock", "crio.sock", "dockershim.sock", "cri-dockerd.sock")
# Trust stores under /etc that agents commonly mount read-only: public certificates, not credentials.
_BENIGN_ETC = ("/etc/ssl", "/etc/pki/ca-trust", "/etc/ca-certificates", "/etc/machine-id", "/etc/localtime", "/etc/os-release")

COLUMNS: tuple[DerivedColumn, ...] = (
    DerivedColumn("write_body_source", pa.string(), "responseObject, requestObject",
                  "which body the write facts come from: response (the object as stored), request, or json_patch (a "
                  "JSON patch applied onto an empty object): a rule can tell 'is privileged' from 'was made privileged'"),
    DerivedColumn("write_body_issues", pa.string(), "requestObject (JSON patch)",
                  "what a JSON patch held that the sparse object cannot show (PATCH_ISSUES), comma-joined"),
    # Pod specs (the first five replace events.py's columns of the same names, with the same meaning).
    DerivedColumn("pod_privileged", pa.bool_(), "pod spec containers[*] (and init, ephemeral) securityContext.privileged",
                  "a written workload's container runs privileged: it owns the node"),
    DerivedColumn("pod_host_namespaces", pa.string(), "pod spec hostPID/hostNetwork/hostIPC",
                  "host namespaces the workload joins, comma-joined: the node's processes, network or IPC"),
    DerivedColumn("pod_host_paths", pa.string(), "pod spec volumes[*].hostPath.path",
                  "every hostPath the workload mounts, comma-joined"),
    DerivedColumn("pod_capabilities", pa.string(), "containers[*].securityContext.capabilities.add",
                  "added Linux capabilities, as written, comma-joined"),
    DerivedColumn("pod_images", pa.string(), "containers[*].image (and init, ephemeral)", "the images the workload runs"),
    DerivedColumn("pod_service_account", pa.string(), "pod spec serviceAccountName (or serviceAccount)",
                  "the identity the workload's pods act as: a kube-system workload naming a powerful account is persistence"),
    DerivedColumn("pod_automount_token", pa.bool_(), "pod spec automountServiceAccountToken",
                  "the explicit setting, null when unset: true puts the account's token into every container"),
    DerivedColumn("pod_host_ports", pa.string(), "containers[*].ports[*].hostPort",
                  "ports opened on the node's own address, comma-joined: a listener outside network policy"),
    DerivedColumn("pod_privilege_escalation", pa.bool_(), "containers[*].securityContext.allowPrivilegeEscalation",
                  "a container explicitly allowed to gain privileges (setuid binaries, file capabilities)"),
    DerivedColumn("pod_runs_as_root", pa.bool_(), "pod and container securityContext runAsUser / runAsNonRoot",
                  "a container whose effective runAsUser is 0, or whose runAsNonRoot is explicitly false with no other user"),
    DerivedColumn("pod_dangerous_capabilities", pa.string(), "containers[*].securityContext.capabilities.add",
                  "added capabilities in DANGEROUS_CAPABILITIES, normalised (upper case, no CAP_ prefix), comma-joined"),
    DerivedColumn("pod_unconfined", pa.string(), "seccompProfile/appArmorProfile (pod, container) and their annotations",
                  "seccomp and/or apparmor set to Unconfined: the kernel attack surface a container escape needs"),
    DerivedColumn("pod_proc_mount_unmasked", pa.bool_(), "containers[*].securityContext.procMount",
                  "procMount Unmasked exposes the host's /proc paths that are masked by default"),
    DerivedColumn("pod_sensitive_host_paths", pa.string(), "volumes[*].hostPath.path, containers' volumeMounts readOnly",
                  "hostPaths in SENSITIVE_HOST_PATHS or a runtime socket, cleaned (trailing /, //, ..), ':ro' when every mount "
                  "of it is read-only; comma-joined"),
    DerivedColumn("pod_privileged_containers", pa.string(), "containers, initContainers, ephemeralContainers",
                  "kind/name of each container that is privileged, adds a dangerous capability or unmasks /proc: shows "
                  "whether the risky one is the debug container a kubectl debug added"),
    DerivedColumn("workload_owner", pa.string(), "metadata.ownerReferences[controller=true] of a written workload",
                  "Kind/name of the controller that made this object (a Job's CronJob, a Pod's ReplicaSet): the copy restates its "
                  "template's facts, so rules can judge the template's author and leave the controller's copies to the model"),
    # Services, ingresses, roles.
    DerivedColumn("service_type", pa.string(), "spec.type of a Service (replaces events.py's)", "NodePort and LoadBalancer expose the service"),
    DerivedColumn("service_lb_scheme", pa.string(), "spec.type, spec.loadBalancerClass, aws-load-balancer-scheme/-internal/-type annotations",
                  "internet-facing or internal for a LoadBalancer Service, as the controller that owns it would decide"),
    DerivedColumn("service_lb_scheme_declared", pa.bool_(), "the same annotations",
                  "whether the scheme was written in an annotation (true) or is the controller's default (false)"),
    DerivedColumn("service_node_ports", pa.string(), "spec.ports[*].nodePort", "ports opened on every node, comma-joined"),
    DerivedColumn("service_external_ips", pa.string(), "spec.externalIPs",
                  "addresses the service claims on every node: intercepts traffic to them (CVE-2020-8554)"),
    DerivedColumn("ingress_tls", pa.bool_(), "spec.tls of an Ingress (replaces events.py's)", "an Ingress without TLS serves in clear text"),
    DerivedColumn("ingress_hosts", pa.string(), "spec.rules[*].host, spec.tls[*].hosts", "the host names the Ingress answers for"),
    DerivedColumn("ingress_class", pa.string(), "spec.ingressClassName, kubernetes.io/ingress.class annotation", "which controller serves it"),
    DerivedColumn("ingress_scheme", pa.string(), "alb.ingress.kubernetes.io/scheme annotation",
                  "internet-facing or internal for an ALB Ingress (the AWS Load Balancer Controller's default is internal)"),
    DerivedColumn("role_dangerous_grants", pa.string(), "rules[*] verbs x apiGroups x resources of a Role/ClusterRole",
                  "the GRANTS a written role makes, each judged per rule with RBAC's matching (wildcards, */subresource)"),
    # Permission checks (kubectl auth can-i).
    DerivedColumn("access_review_grants", pa.string(), "spec.resourceAttributes verb, group, resource, subresource of a "
                  "SelfSubjectAccessReview", "the GRANTS the caller asked whether it holds: can-i impersonate, escalate or mint "
                  "tokens is someone learning what stolen credentials can take, where can-i get pods is an engineer's routine"),
    DerivedColumn("access_review_allowed", pa.bool_(), "status.allowed of the SelfSubjectAccessReview as answered",
                  "whether the API server said yes: the answer the prober got"),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
# Columns events.py declares today that COLUMNS takes over (same name, type and meaning, more complete).
REPLACES_EVENT_COLUMNS = ("pod_privileged", "pod_host_namespaces", "pod_host_paths", "pod_capabilities", "pod_images",
                          "service_type", "ingress_tls")

PATCH_ISSUES: dict[str, str] = {
    "remove_op": "a remove operation: it may drop a restriction (runAsNonRoot, a seccomp profile) the sparse object cannot show",
    "unresolved_op": "a move/copy from a path the patch did not set: the value is in the stored object, unknown here",
    "bad_op": "an operation that is not an object, has an unknown op, or lacks its value",
    "bad_pointer": "a path that is not an RFC 6901 pointer, or an index with leading zeros",
    "deep_pointer": f"a path with more than {MAX_POINTER_SEGMENTS} segments: skipped",
    "index_clamped": f"an array index above {MAX_ARRAY_INDEX}: appended instead",
    "too_many_ops": f"more than {MAX_PATCH_OPS:,} operations: the rest were not applied",
    "root_not_object": "an operation replacing the whole document with something that is not an object",
}

# --------------------------------------------------------------------------- the effective object


def _is_stored(obj, code) -> bool:
    kind = obj.get("kind") if isinstance(obj, dict) else None
    return (isinstance(kind, str) and bool(kind) and kind != "Status" and not kind.endswith("List")
            and (code is None or 200 <= code < 300))


def effective_object(verb: str | None, request_object, response_object, code: int | None = None) -> tuple[dict | None, dict]:
    """The object a write produced, and its ``write_body_source`` / ``write_body_issues`` columns.

    The response when it is the stored object (a dict whose kind is not Status or a list, and a 2xx or
    unknown code) of a create/update/patch; else the request body, a JSON patch applied onto an empty
    object. The shape decides, not a content type (the audit event carries none): RFC 6902 documents
    are arrays, merge/strategic/apply bodies objects."""
    if verb in WRITE_VERBS and _is_stored(response_object, code):
        return response_object, {"write_body_source": "response", "write_body_issues": None}
    if isinstance(request_object, list):
        obj, issues = apply_json_patch(request_object)
        return obj, {"write_body_source": "json_patch", "write_body_issues": joined(issues)}
    if isinstance(request_object, dict):
        return request_object, {"write_body_source": "request", "write_body_issues": None}
    return None, {"write_body_source": None, "write_body_issues": None}


def _pointer(path, issues: set[str]) -> list[str] | None:
    """RFC 6901: '/'-separated, ~1 is '/', then ~0 is '~'; '' is the whole document."""
    if not isinstance(path, str) or (path and not path.startswith("/")):
        issues.add("bad_pointer")
        return None
    if path == "":
        return []
    segments = path[1:].split("/", MAX_POINTER_SEGMENTS + 1)
    if len(segments) > MAX_POINTER_SEGMENTS:
        issues.add("deep_pointer")
        return None
    return [s.replace("~1", "/").replace("~0", "~") for s in segments]


def _index(segment: str, issues: set[str]) -> int | None:
    """An array index segment: '-' (append, None) or digits without leading zeros; -1 when invalid."""
    if segment == "-":
        return None
    if segment.isdigit() and segment.isascii() and (segment == "0" or not segment.startswith("0")):
        value = int(segment)
        if value > MAX_ARRAY_INDEX:
            issues.add("index_clamped")
            return None
        return value
    issues.add("bad_pointer")
    return -1


def _is_index(segment: str) -> bool:
    return segment == "-" or (segment.isdigit() and segment.isascii())


class _Skeleton:
    """The sparse object a JSON patch builds. Containers taken from operation values are copied (shallowly)
    before anything is written into them, so the request body is never changed."""

    def __init__(self):
        self.root: dict = {}
        self.owned: set[int] = {id(self.root)}

    def _own(self, parent, key, child):
        if id(child) in self.owned:
            return child
        copy = dict(child) if isinstance(child, dict) else list(child)
        self.owned.add(id(copy))
        parent[key] = copy
        return copy

    def _child(self, container, segment: str, next_segment: str, issues: set[str]):
        fresh = [] if _is_index(next_segment) else {}
        if isinstance(container, dict):
            child = container.get(segment)
            if not isinstance(child, (dict, list)):
                container[segment] = child = fresh
                self.owned.add(id(child))
                return child
            return self._own(container, segment, child)
        index = _index(segment, issues)
        if index == -1:
            return None
        if index is None or index >= len(container):
            container.extend({} for _ in range(max(0, (index or 0) - len(container))))
            container.append(fresh)
            self.owned.add(id(fresh))
            return fresh
        child = container[index]
        if not isinstance(child, (dict, list)):
            container[index] = child = fresh
            self.owned.add(id(child))
            return child
        return self._own(container, index, child)

    def get(self, segments: list[str]):
        node = self.root
        for segment in segments:
            if isinstance(node, dict) and segment in node:
                node = node[segment]
            elif isinstance(node, list) and segment.isdigit() and segment.isascii() and int(segment) < len(node):
                node = node[int(segment)]
            else:
                return _MISSING
        return node

    def set(self, segments: list[str], value, insert: bool, issues: set[str]) -> None:
        if not segments:
            if isinstance(value, dict):
                self.root = dict(value)
                self.owned = {id(self.root)}
            else:
                issues.add("root_not_object")
            return
        node = self.root
        for position, segment in enumerate(segments[:-1]):
            node = self._child(node, segment, segments[position + 1], issues)
            if node is None:
                return
        last = segments[-1]
        if isinstance(node, dict):
            node[last] = value
            return
        index = _index(last, issues)
        if index == -1:
            return
        if index is None or index >= len(node):
            node.extend({} for _ in range(max(0, (index or 0) - len(node))))
            node.append(value)
        elif insert:
            node.insert(index, value)
        else:
            node[index] = value


_MISSING = object()


def apply_json_patch(operations: list) -> tuple[dict, set[str]]:
    """A JSON patch (RFC 6902) applied onto an empty object: add and replace set their value (creating
    the objects and arrays on the way: an array where the next segment is an index or '-'); copy/move
    resolve only from what the patch itself set; remove and test change nothing. Returns the sparse
    object and the PATCH_ISSUES met."""
    skeleton, issues = _Skeleton(), set()
    for count, operation in enumerate(operations):
        if count >= MAX_PATCH_OPS:
            issues.add("too_many_ops")
            break
        kind = operation.get("op") if isinstance(operation, dict) else None
        if kind in ("add", "replace"):
            if "value" not in operation:
                issues.add("bad_op")
                continue
            segments = _pointer(operation.get("path"), issues)
            if segments is not None:
                skeleton.set(segments, operation["value"], kind == "add", issues)
        elif kind in ("copy", "move"):
            source, segments = _pointer(operation.get("from"), issues), _pointer(operation.get("path"), issues)
            value = skeleton.get(source) if source is not None else _MISSING
            if value is _MISSING or segments is None:
                issues.add("unresolved_op")
            else:
                skeleton.set(segments, value, True, issues)
        elif kind == "remove":
            issues.add("remove_op")
        elif kind != "test":
            issues.add("bad_op")
    return skeleton.root, issues


# --------------------------------------------------------------------------- pod specs
_POD_SPEC_KEYS = frozenset(CONTAINER_KINDS + ("volumes", "hostNetwork", "hostPID", "hostIPC", "serviceAccountName",
                                              "serviceAccount", "automountServiceAccountToken", "securityContext"))


def _get(obj, *path):
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _items(value, limit: int = MAX_ITEMS) -> list[dict]:
    return [v for v in value[:limit] if isinstance(v, dict)] if isinstance(value, list) else []


def pod_template(obj) -> tuple[dict | None, dict]:
    """The pod spec and pod annotations inside a Pod, a workload's template, a CronJob's job template, or an
    (old, v1alpha1-v1beta1) EphemeralContainers body; (None, {}) when the object holds none."""
    if not isinstance(obj, dict):
        return None, {}
    if isinstance(obj.get("ephemeralContainers"), list) and "spec" not in obj:
        return {"ephemeralContainers": obj["ephemeralContainers"]}, {}
    for template in (_get(obj, "spec", "jobTemplate", "spec", "template"), _get(obj, "spec", "template")):
        if isinstance(template, dict) and isinstance(template.get("spec"), dict):
            annotations = _get(template, "metadata", "annotations")
            return template["spec"], annotations if isinstance(annotations, dict) else {}
    spec = obj.get("spec")
    if isinstance(spec, dict) and _POD_SPEC_KEYS.intersection(spec):
        annotations = _get(obj, "metadata", "annotations")
        return spec, annotations if isinstance(annotations, dict) else {}
    return None, {}


def _capability(value) -> str | None:
    name = text(value)
    if not name:
        return None
    name = name.strip().upper()
    return name[4:] if name.startswith("CAP_") else name


def clean_host_path(path: str) -> str:
    """A hostPath as the node resolves it: '//', '/./', '..' and a trailing '/' removed."""
    cleaned = posixpath.normpath("/" + path.lstrip("/")) if path else path
    return "/" if cleaned == "//" else cleaned


def sensitive_host_path(path: str) -> bool:
    """Whether a (cleaned) hostPath is in SENSITIVE_HOST_PATHS, under one of their subtrees, or a runtime socket."""
    if path in _EXACT or posixpath.basename(path) in RUNTIME_SOCKETS:
        return True
    if any(path == b or path.startswith(b + "/") for b in _BENIGN_ETC):
        return False
    return any(path.startswith(prefix + "/") for prefix in _SUBTREES)


def _unconfined(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == "unconfined"


def pod_spec_facts(obj) -> dict:
    """The pod-spec columns of a written workload (see COLUMNS); {} when ``obj`` holds no pod spec."""
    spec, annotations = pod_template(obj)
    if spec is None:
        return {}
    pod_context = spec.get("securityContext") if isinstance(spec.get("securityContext"), dict) else {}
    containers = [(kind, c) for kind in CONTAINER_KINDS for c in _items(spec.get(kind), MAX_CONTAINERS)]
    privileged = escalation = root = unmasked = False
    capabilities, dangerous, host_ports, risky, unconfined = [], set(), [], [], set()
    mounts_rw: dict[str, bool] = {}
    if _unconfined(_get(pod_context, "seccompProfile", "type")) or _unconfined(annotations.get("seccomp.security.alpha.kubernetes.io/pod")):
        unconfined.add("seccomp")
    if _unconfined(_get(pod_context, "appArmorProfile", "type")):
        unconfined.add("apparmor")
    for kind, container in containers:
        context = container.get("securityContext") if isinstance(container.get("securityContext"), dict) else {}
        name = text(container.get("name")) or ""
        added = _get(context, "capabilities", "add")
        added = [a for a in added[:MAX_ITEMS] if a not in (None, "")] if isinstance(added, list) else []
        capabilities.extend(text(a) or "" for a in added)
        mine = {c for c in map(_capability, added) if c in DANGEROUS_CAPABILITIES}
        dangerous |= mine
        is_privileged = context.get("privileged") is True
        is_unmasked = context.get("procMount") == "Unmasked"
        privileged, unmasked = privileged or is_privileged, unmasked or is_unmasked
        escalation = escalation or context.get("allowPrivilegeEscalation") is True
        user = context.get("runAsUser", pod_context.get("runAsUser"))
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        root = root or (type(user) is int and user == 0) or (non_root is False and user is None)
        if is_privileged or mine or is_unmasked:
            risky.append(f"{kind}/{name}")
        for port in _items(container.get("ports")):
            if isinstance(port.get("hostPort"), int) and not isinstance(port.get("hostPort"), bool) and port["hostPort"] > 0:
                host_ports.append(port["hostPort"])
        if _unconfined(_get(context, "seccompProfile", "type")) or \
                _unconfined(annotations.get(f"container.seccomp.security.alpha.kubernetes.io/{name}")):
            unconfined.add("seccomp")
        if _unconfined(_get(context, "appArmorProfile", "type")) or \
                _unconfined(annotations.get(f"container.apparmor.security.beta.kubernetes.io/{name}")):
            unconfined.add("apparmor")
        for mount in _items(container.get("volumeMounts")):
            volume = text(mount.get("name"))
            if volume is not None:
                mounts_rw[volume] = mounts_rw.get(volume, False) or mount.get("readOnly") is not True
    host_paths, sensitive = [], []
    for volume in _items(spec.get("volumes")):
        path = text(_get(volume, "hostPath", "path"))
        if path is None:
            continue
        host_paths.append(path)
        cleaned = clean_host_path(path)
        if sensitive_host_path(cleaned):
            read_only = text(volume.get("name")) in mounts_rw and not mounts_rw[text(volume.get("name"))]
            sensitive.append(cleaned + (":ro" if read_only else ""))
    automount = spec.get("automountServiceAccountToken")
    return {
        "pod_privileged": privileged,
        "pod_host_namespaces": joined(k for k in ("hostPID", "hostNetwork", "hostIPC") if spec.get(k) is True),
        "pod_host_paths": joined(host_paths),
        "pod_capabilities": joined(capabilities),
        "pod_images": joined(text(c.get("image")) for _, c in containers),
        "pod_service_account": bounded(text(spec.get("serviceAccountName")) or text(spec.get("serviceAccount")), 256),
        "pod_automount_token": automount if isinstance(automount, bool) else None,
        "pod_host_ports": joined(host_ports),
        "pod_privilege_escalation": escalation,
        "pod_runs_as_root": root,
        "pod_dangerous_capabilities": joined(dangerous),
        "pod_unconfined": joined(unconfined),
        "pod_proc_mount_unmasked": unmasked,
        "pod_sensitive_host_paths": joined(sensitive),
        "pod_privileged_containers": joined(risky),
    }


def workload_owner(obj) -> str | None:
    """Kind/name of the object's controlling owner reference, or None (made by a person, CI or an operator directly)."""
    for owner in _items(_get(obj, "metadata", "ownerReferences"), 16):
        if owner.get("controller") is True:
            return bounded(f"{text(owner.get('kind')) or ''}/{text(owner.get('name')) or ''}", 256)
    return None


# --------------------------------------------------------------------------- services and ingresses
SCHEME_ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer-scheme"
INTERNAL_ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer-internal"
TYPE_ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer-type"
# Load balancer classes of the AWS Load Balancer Controller and EKS Auto Mode: both default to internal.
AWS_LB_CLASSES = ("service.k8s.aws/nlb", "eks.amazonaws.com/nlb")
ALB_SCHEME_ANNOTATION = "alb.ingress.kubernetes.io/scheme"


def service_facts(obj) -> dict:
    """Type, load balancer scheme, node ports and external IPs of a written Service; {} without a spec.

    The scheme follows whoever provisions the load balancer: the AWS Load Balancer Controller (and EKS Auto
    Mode) makes it internal unless ``aws-load-balancer-scheme: internet-facing``; the legacy in-tree
    controller makes it internet-facing unless ``aws-load-balancer-internal`` is set to anything but "false"."""
    spec = obj.get("spec") if isinstance(obj, dict) else None
    if not isinstance(spec, dict):
        return {}
    annotations = _get(obj, "metadata", "annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    service_type = text(spec.get("type"))
    scheme = declared = None
    if service_type == "LoadBalancer":
        controller = spec.get("loadBalancerClass") in AWS_LB_CLASSES or \
            (text(annotations.get(TYPE_ANNOTATION)) or "").lower() in ("external", "nlb-ip")
        written = (text(annotations.get(SCHEME_ANNOTATION)) or "").strip().lower()
        internal = text(annotations.get(INTERNAL_ANNOTATION))
        if written in ("internet-facing", "internal"):
            scheme, declared = written, True
        elif internal is not None:
            is_internal = internal.strip().lower() == "true" if controller else internal.strip().lower() != "false"
            scheme, declared = ("internal" if is_internal else "internet-facing"), True
        else:
            scheme, declared = ("internal" if controller else "internet-facing"), False
    ports = _items(spec.get("ports"))
    external = spec.get("externalIPs")
    return {
        "service_type": bounded(service_type, 64),
        "service_lb_scheme": scheme,
        "service_lb_scheme_declared": declared,
        "service_node_ports": joined(p.get("nodePort") for p in ports if isinstance(p.get("nodePort"), int)),
        "service_external_ips": joined(text(a) for a in external[:MAX_ITEMS]) if isinstance(external, list) else None,
    }


def ingress_facts(obj) -> dict:
    """TLS, hosts, class and ALB scheme of a written Ingress; {} without a spec."""
    spec = obj.get("spec") if isinstance(obj, dict) else None
    if not isinstance(spec, dict):
        return {}
    annotations = _get(obj, "metadata", "annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    tls = _items(spec.get("tls"))
    hosts = [text(r.get("host")) for r in _items(spec.get("rules"))]
    hosts += [text(h) for t in tls if isinstance(t.get("hosts"), list) for h in t["hosts"][:MAX_ITEMS]]
    ingress_class = text(spec.get("ingressClassName")) or text(annotations.get("kubernetes.io/ingress.class"))
    scheme = (text(annotations.get(ALB_SCHEME_ANNOTATION)) or "").strip().lower() or None
    if scheme is None and ingress_class == "alb":
        scheme = "internal"
    return {
        "ingress_tls": bool(spec.get("tls")),
        "ingress_hosts": joined(hosts),
        "ingress_class": bounded(ingress_class, 128),
        "ingress_scheme": bounded(scheme, 64),
    }


# --------------------------------------------------------------------------- roles
ANY_VERB = ("*",)


@dataclass(frozen=True)
class Grant:
    name: str
    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]  # ANY_VERB: any verb at all grants it
    why: str
    # Whether merely asking about it (kubectl auth can-i) is worth a flag (features.flags.escalation_rights_check): it
    # hands over the cluster, where reading secrets or exec in one's own namespace is what engineers check every day.
    takes_cluster: bool = True


_RBAC = "rbac.authorization.k8s.io"
GRANTS: tuple[Grant, ...] = (
    Grant("rbac_write", (_RBAC,), ("roles", "rolebindings", "clusterroles", "clusterrolebindings"), ("create", "update", "patch"),
          "writing roles and bindings is granting oneself anything"),
    Grant("escalate_or_bind", (_RBAC,), ("roles", "clusterroles"), ("escalate", "bind"),
          "escalate and bind skip RBAC's check that one holds what one grants"),
    Grant("impersonate", ("", "authentication.k8s.io"), ("users", "groups", "serviceaccounts", "uids"), ("impersonate",),
          "acting as any user or group, system:masters included"),
    Grant("token_create", ("",), ("serviceaccounts/token",), ("create",), "minting tokens for any service account in scope"),
    Grant("nodes_proxy", ("",), ("nodes/proxy",), ANY_VERB,
          "the kubelet API of every node: exec in any pod without a pods/exec record (GET is enough for a websocket)"),
    Grant("pods_exec", ("",), ("pods/exec", "pods/attach"), ("create", "get"), "a shell in any pod in scope", takes_cluster=False),
    Grant("secrets_read", ("",), ("secrets",), ("get", "list", "watch"), "every credential stored in scope", takes_cluster=False),
    Grant("webhook_write", ("admissionregistration.k8s.io",), ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"),
          ("create", "update", "patch"), "an admission webhook sees and can change every object written"),
    Grant("csr_approve", ("certificates.k8s.io",), ("certificatesigningrequests/approval",), ("update", "patch"),
          "approving certificate requests: client certificates that cannot be revoked"),
)


def _resource_matches(rule_resources: list, resource: str) -> bool:
    """RBAC's ResourceMatches: '*', the exact resource/subresource, or '*/subresource'."""
    sub = resource.split("/", 1)[1] if "/" in resource else None
    return any(r == "*" or r == resource or (sub is not None and r == "*/" + sub) for r in rule_resources)


def role_facts(obj) -> dict:
    """The GRANTS a Role or ClusterRole makes (plus wildcard_verbs / wildcard_resources); {} without rules."""
    rules = obj.get("rules") if isinstance(obj, dict) else None
    if not isinstance(rules, list):
        return {}
    found = set()
    for rule in _items(rules):
        verbs, groups, resources = (
            [v for v in (rule.get(k) or [])[:MAX_ITEMS] if isinstance(v, str)] if isinstance(rule.get(k), list) else []
            for k in ("verbs", "apiGroups", "resources")
        )
        if "*" in verbs:
            found.add("wildcard_verbs")
        if "*" in resources:
            found.add("wildcard_resources")
        for grant in GRANTS:
            if (("*" in groups or any(g in groups for g in grant.groups))
                    and any(_resource_matches(resources, r) for r in grant.resources)
                    and ("*" in verbs or (grant.verbs == ANY_VERB and verbs) or any(v in verbs for v in grant.verbs))):
                found.add(grant.name)
    return {"role_dangerous_grants": joined(found)}


def access_review_facts(obj) -> dict:
    """The GRANTS one SelfSubjectAccessReview asks about, matched as RBAC would match a rule made of the check
    (its '*' verb, group or resource matches every grant), and the answer; {} without resourceAttributes
    (a nonResourceAttributes check asks about a URL path, never a grant)."""
    attrs = _get(obj, "spec", "resourceAttributes")
    if not isinstance(attrs, dict):
        return {}
    verb, group, resource, sub = (value if isinstance(value := attrs.get(key), str) else "" for key in ("verb", "group", "resource", "subresource"))
    target = [f"{resource}/{sub}" if sub else resource]
    found = {grant.name for grant in GRANTS
             if (group == "*" or group in grant.groups) and any(_resource_matches(target, r) for r in grant.resources)
             and (verb == "*" or grant.verbs == ANY_VERB or verb in grant.verbs) and verb}
    allowed = _get(obj, "status", "allowed")
    return {"access_review_grants": joined(found), "access_review_allowed": allowed if isinstance(allowed, bool) else None}


# --------------------------------------------------------------------------- dispatch


def body_facts(resource: str | None, subresource: str | None, obj, requester: str | None = None,
               requester_groups=()) -> dict:
    """The columns of this module (and features.csr) for one written object, by resource. Subresources
    are skipped (a pods/status update's response is the whole pod, and would restate its privileges on
    every kubelet heartbeat) except pods/ephemeralcontainers (kubectl debug) and the CSR approval."""
    if not isinstance(obj, dict) or not resource:
        return {}
    if resource in WORKLOADS and (subresource is None or (resource == "pods" and subresource == "ephemeralcontainers")):
        facts = pod_spec_facts(obj)
        return {**facts, "workload_owner": workload_owner(obj)} if facts else facts
    if subresource is None and resource == "services":
        return service_facts(obj)
    if subresource is None and resource == "ingresses":
        return ingress_facts(obj)
    if subresource is None and resource in ("roles", "clusterroles"):
        return role_facts(obj)
    if subresource is None and resource == "selfsubjectaccessreviews":
        return access_review_facts(obj)
    if resource == "certificatesigningrequests" and subresource in (None, "approval"):
        return csr.csr_facts(obj, requester, requester_groups, approval=subresource == "approval")
    return {}
