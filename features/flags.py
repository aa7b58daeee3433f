"""Event flags: one boolean per audit event, each declared once with what it reads and why it matters.

Flags are the vocabulary shared by window features (counted per entity and window),
rules (conditions name flags) and the report (evidence ordering). ``add_flags`` adds
every registered flag as a column to a DataFrame of normalised events.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from features.addresses import AddressBook, user_agent_family
from features.columns import EventColumns
from features.events import EVENT_SCHEMA
from features.writes import GRANTS

READ_VERBS = ("get", "list", "watch")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
RBAC_RESOURCES = ("roles", "rolebindings", "clusterroles", "clusterrolebindings")
WEBHOOK_RESOURCES = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
WORKLOAD_RESOURCES = ("pods", "deployments", "daemonsets", "statefulsets", "replicasets", "jobs", "cronjobs")
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
HEALTH_PATHS = re.compile(r"^/(?:healthz|livez|readyz|version)(?:/|\?|$)")
ADMIN_ROLES = re.compile(r"^ClusterRole/(?:cluster-admin|admin|system:masters|system:kube-controller-manager)$|^Role/admin$")
SUSPICIOUS_EXEC = re.compile(
    r"/var/run/secrets|serviceaccount/token|169\.254\.169\.254|/dev/tcp/|\bnc\b.*\s-e\b|\bncat\b|\bsocat\b|"
    r"\bbash\s+-i\b|(?:curl|wget)[^|]*\|\s*(?:ba)?sh\b|base64\s+(?:-d|--decode)|\btar\s+-?c|chmod\s+\+x|/etc/shadow|"
    r"kubeconfig|\.aws/credentials|\bxmrig\b|\bnmap\b",
    re.I,
)
# url:<host> webhook targets other than loopback and in-cluster service DNS names.
EXTERNAL_WEBHOOK_URL = re.compile(r"(?:^|,)url:(?!(?:127\.\d+\.\d+\.\d+|localhost|::1|[^,]*\.svc(?:\.cluster\.local)?)(?:,|$))")


@dataclass(frozen=True)
class FlagContext:
    """What flags need beyond the events: address intelligence and the managed-identity allow-list."""

    addresses: AddressBook
    allow_identities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EventFlag:
    name: str
    reads: str
    why: str
    compute: Callable[["FlagInputs"], np.ndarray]


class FlagInputs(EventColumns):
    """The events as flags read them (see ``EventColumns``: a predicate runs once per distinct value),
    the helper columns of ``prepare`` and the flags computed so far: a flag may read earlier ones."""

    def __init__(self, events: pa.Table | pd.DataFrame, hour: dict[str, np.ndarray] | None = None):
        super().__init__(events)
        self.helpers: dict[str, np.ndarray] = {}
        self.flags: dict[str, np.ndarray] = {}
        self.hour = hour or {}  # for a batch of an hour: flags judged over the whole hour (features.aggregate.hour_requests)
        self.flags_read: set[str] = set()  # the earlier flags read (``_f``), as ``read`` names the columns


def _isin(d: FlagInputs, column: str, values) -> np.ndarray:
    wanted = frozenset(values)
    return d.where(column, lambda v: v is not None and v in wanted, ("in", wanted))


def _eq(d: FlagInputs, column: str, value) -> np.ndarray:
    return d.where(column, lambda v: v is not None and v == value, ("==", value))


def _contains(d: FlagInputs, column: str, pattern: str) -> np.ndarray:
    search = re.compile(pattern).search
    return d.where(column, lambda v: search(v if v is not None else "") is not None, ("re", pattern))


def _true(d: FlagInputs, column: str) -> np.ndarray:
    return d.where(column, lambda v: v is not None and bool(v))


def _isna(d: FlagInputs, column: str) -> np.ndarray:
    return d.missing(column)


def _number(d: FlagInputs, column: str, missing: int) -> np.ndarray:
    codes, values = d.encoded(column)
    return np.array([missing if value is None else value for value in values])[codes]


def _node_registered_by_other(d: FlagInputs) -> np.ndarray:
    """Node creations whose user is not system:node:<the Node's name> (each (user, name) pair judged once)."""
    rows = np.flatnonzero(_eq(d, "resource", "nodes") & _eq(d, "verb", "create") & _isna(d, "subresource"))
    result = np.zeros(d.rows, dtype=bool)
    (user_codes, users), (name_codes, names) = d.encoded("user"), d.encoded("name")  # read whatever the rows: traced
    if rows.size:
        pairs = {}
        for row in rows.tolist():
            key = (user_codes[row], name_codes[row])
            if key not in pairs:
                user, name = users[key[0]], names[key[1]]
                pairs[key] = user is None or name is None or user != f"system:node:{name}"
            result[row] = pairs[key]
    return result


def _node_takeover(d: FlagInputs) -> np.ndarray:
    """A pod spec that can take its node over: privileged, host namespaces, a sensitive hostPath, a dangerous
    capability (features.writes.SENSITIVE_HOST_PATHS and DANGEROUS_CAPABILITIES) or /proc unmasked."""
    return (_true(d, "pod_privileged") | ~_isna(d, "pod_host_namespaces") | ~_isna(d, "pod_sensitive_host_paths")
            | ~_isna(d, "pod_dangerous_capabilities") | _true(d, "pod_proc_mount_unmasked"))


# The features.writes GRANTS whose mere check is worth a rule (Grant.takes_cluster).
ESCALATION_GRANTS = tuple(grant.name for grant in GRANTS if grant.takes_cluster)


def controller_copy(d: FlagInputs) -> np.ndarray:
    """A controller's copy of a template: an owner (workload_owner) and a controller identity writing it (a service
    account, as kube-controller-manager's per-controller accounts and the operators' own are, or the controller
    manager itself). ownerReferences are in the body the client sends, so an owner on a workload a person's
    credentials wrote is not a copy. Reads the ``service_account`` flag: events ``flag_events`` has flagged."""
    return ~_isna(d, "workload_owner") & (_f(d, "service_account") | _eq(d, "user", "system:kube-controller-manager"))


def workload_write(d: FlagInputs) -> np.ndarray:
    """A workload created, updated or patched, its subresources included."""
    return _isin(d, "resource", WORKLOAD_RESOURCES) & _isin(d, "verb", ("create", "update", "patch"))


def _written_template(d: FlagInputs) -> np.ndarray:
    """A workload created, updated or patched by its author, not a controller's copy of a template
    (``controller_copy``); subresources are left out (a pods/ephemeralcontainers response is the whole pod:
    ephemeral_privileged judges it)."""
    return workload_write(d) & _isna(d, "subresource") & ~controller_copy(d)


def _f(d: FlagInputs, name: str) -> np.ndarray:
    """A flag computed earlier in the registry, or a boolean helper column of ``prepare``."""
    flag = d.flags.get(name)
    if flag is None:
        return d.helpers[name]
    d.flags_read.add(name)
    return flag


def _audit_id_reused(d: FlagInputs) -> np.ndarray:
    """Rows whose auditID more than one request has (``EventColumns.requests``); for a batch of an hour, the whole
    hour's answer (``FlagInputs.hour``)."""
    if "audit_id_reused" in d.hour:
        return d.hour["audit_id_reused"]
    ids, requests = d.codes("audit_id"), d.requests()
    reused = np.zeros(d.rows, dtype=bool)
    if requests is not ids:  # requests() gives the auditID codes themselves when no auditID has two requests
        pairs = np.unique(np.column_stack([ids, requests]), axis=0)
        reused = (np.bincount(pairs[:, 0], minlength=int(ids.max()) + 1) > 1)[ids]
    return reused


FLAGS: tuple[EventFlag, ...] = (
    EventFlag("allowed", "annotations decision, responseStatus.code", "the request succeeded: attacks that work matter most",
              lambda d: (_eq(d, "decision", "allow") | (_isna(d, "decision") & (_number(d, "code", 999) < 400)))),
    EventFlag("denied_401", "responseStatus.code", "unauthenticated: bad or stolen-then-revoked credentials, scanners",
              lambda d: _eq(d, "code", 401)),
    EventFlag("denied_403", "responseStatus.code, decision", "forbidden: an identity reaching beyond its permissions (probing)",
              lambda d: _eq(d, "code", 403) | _eq(d, "decision", "forbid")),
    EventFlag("not_found_404", "responseStatus.code", "guessing object names", lambda d: _eq(d, "code", 404)),
    EventFlag("conflict_409", "responseStatus.code", "racing writes; odd for humans", lambda d: _eq(d, "code", 409)),
    EventFlag("server_error", "responseStatus.code", "5xx: malformed or abusive requests", lambda d: (_number(d, "code", 0) >= 500)),
    EventFlag("read", "verb", "get/list/watch", lambda d: _isin(d, "verb", READ_VERBS)),
    EventFlag("write", "verb", "create/update/patch/delete", lambda d: _isin(d, "verb", WRITE_VERBS)),
    EventFlag("list_or_watch", "verb", "bulk reads: enumeration", lambda d: _isin(d, "verb", ("list", "watch"))),
    EventFlag("delete", "verb", "destruction or clean-up of traces", lambda d: _isin(d, "verb", ("delete", "deletecollection"))),
    EventFlag("health_check", "requestURI", "health and version probes are noise, excluded from anonymous rules",
              lambda d: _contains(d, "request_uri", HEALTH_PATHS.pattern)),
    EventFlag("anonymous", "user.username", "system:anonymous / system:unauthenticated: no credentials at all",
              lambda d: _isin(d, "user", ("system:anonymous", "system:unauthenticated"))),
    EventFlag("system_identity", "user.username", "control-plane, node, kube-system and EKS identities: very regular behaviour",
              lambda d: _contains(d, "user", r"^(?:system:node:|system:kube-|system:serviceaccount:kube-system:|system:apiserver|eks:)")),
    EventFlag("node_identity", "user.username", "kubelet credentials: stolen from a node they escalate quickly",
              lambda d: _contains(d, "user", r"^system:node:")),
    EventFlag("service_account", "user.username", "workload identity: normally used only from inside the cluster",
              lambda d: _contains(d, "user", r"^system:serviceaccount:")),
    EventFlag("managed_identity", "user.username, rules.allow_identities", "EKS managed identities on the allow-list",
              lambda d: _f(d, "allow_listed")),
    EventFlag("source_public", "sourceIPs (last)", "a request from the internet rather than the VPC",
              lambda d: _eq(d, "src_class", "public")),
    EventFlag("source_aws", "sourceIPs (last), ip-ranges.json", "from AWS-owned space (Lambda, other accounts' EC2)",
              lambda d: _eq(d, "src_class", "aws")),
    EventFlag("source_private", "sourceIPs (last)", "from the VPC or a private network", lambda d: _eq(d, "src_class", "private")),
    EventFlag("source_threat_list", "sourceIPs (last), threat list", "the address is on the user-supplied threat list",
              lambda d: _f(d, "src_threat")),
    EventFlag("scripted_client", "userAgent", "curl/python/Go clients: credentials used outside kubectl and controllers",
              lambda d: _isin(d, "ua_family", ("curl", "wget", "python", "go-http", "scanner", "none", "other"))),
    EventFlag("secret_read", "objectRef.resource, verb", "reading Secrets is how credentials are stolen",
              lambda d: _eq(d, "resource", "secrets") & _isin(d, "verb", READ_VERBS)),
    EventFlag("secret_denied", "objectRef.resource, code", "denied Secret reads: probing for credentials",
              lambda d: _eq(d, "resource", "secrets") & _isin(d, "verb", READ_VERBS) & (_eq(d, "code", 403) | _eq(d, "code", 401))),
    EventFlag("secret_list_cluster_wide", "objectRef.resource, namespace, verb", "listing every Secret in the cluster at once (dump)",
              lambda d: _eq(d, "resource", "secrets") & _isin(d, "verb", ("list", "watch")) & _isna(d, "namespace")),
    EventFlag("secret_kube_system", "objectRef.resource, namespace", "kube-system Secrets hold control-plane and add-on credentials",
              lambda d: _eq(d, "resource", "secrets") & _isin(d, "verb", READ_VERBS) & _eq(d, "namespace", "kube-system")),
    EventFlag("secret_write", "objectRef.resource, verb", "Secrets created or deleted: planting or destroying credentials",
              lambda d: _eq(d, "resource", "secrets") & _isin(d, "verb", WRITE_VERBS)),
    EventFlag("token_request", "objectRef.subresource", "TokenRequest API: minting a service-account token to keep access",
              lambda d: _eq(d, "resource", "serviceaccounts") & _eq(d, "subresource", "token") & _eq(d, "verb", "create")),
    EventFlag("csr_create", "objectRef.resource, requestObject.spec", "CSR for a client certificate: a long-lived credential",
              lambda d: _eq(d, "resource", "certificatesigningrequests") & _eq(d, "verb", "create")),
    EventFlag("aws_auth_read", "objectRef name/namespace", "aws-auth maps IAM to Kubernetes identities: recon for escalation",
              lambda d: _eq(d, "resource", "configmaps") & _eq(d, "name", "aws-auth") & _isin(d, "verb", READ_VERBS)),
    EventFlag("aws_auth_write", "objectRef name/namespace, verb", "rewriting aws-auth grants any IAM principal cluster access",
              lambda d: _eq(d, "resource", "configmaps") & _eq(d, "name", "aws-auth") & _eq(d, "namespace", "kube-system") & _isin(d, "verb", WRITE_VERBS)),
    EventFlag("kube_system_configmap_read", "objectRef", "kube-system ConfigMaps describe the control plane",
              lambda d: _eq(d, "resource", "configmaps") & _eq(d, "namespace", "kube-system") & _isin(d, "verb", READ_VERBS)),
    EventFlag("configmap_credentials", "requestObject.data keys (values masked)", "credentials planted in a ConfigMap",
              lambda d: _true(d, "configmap_credentials")),
    EventFlag("rbac_write", "objectRef.resource, verb", "changing RBAC is how access is escalated and kept",
              lambda d: _isin(d, "resource", RBAC_RESOURCES) & _isin(d, "verb", WRITE_VERBS)),
    EventFlag("admin_binding", "requestObject.roleRef", "binding cluster-admin/admin: full control handed out",
              lambda d: _isin(d, "resource", ("clusterrolebindings", "rolebindings")) & _isin(d, "verb", ("create", "update", "patch"))
              & (_contains(d, "role_ref", ADMIN_ROLES.pattern) | _contains(d, "subjects", r"Group:/system:masters"))),
    EventFlag("anonymous_binding", "requestObject.subjects", "granting rights to system:anonymous opens the API to the internet",
              lambda d: _isin(d, "resource", ("clusterrolebindings", "rolebindings")) & _contains(d, "subjects", r"system:(?:anonymous|unauthenticated)")),
    EventFlag("default_sa_binding", "requestObject.subjects", "rights for a default service account reach every pod in the namespace",
              lambda d: _isin(d, "resource", ("clusterrolebindings", "rolebindings")) & _contains(d, "subjects", r"ServiceAccount:[^,]*/default(?:,|$)")),
    EventFlag("dangerous_role", "requestObject.rules", "wildcards or escalate/bind/impersonate verbs, pods/exec or nodes/proxy grants",
              lambda d: _isin(d, "resource", ("roles", "clusterroles")) & _isin(d, "verb", ("create", "update", "patch"))
              & (_contains(d, "role_verbs", r"(?:^|,)(?:\*|escalate|bind|impersonate)(?:,|$)") | _contains(d, "role_resources", r"(?:^|,)(?:\*|pods/exec|nodes/proxy|secrets)(?:,|$)"))),
    EventFlag("system_role_change", "objectRef.name", "modifying a built-in system: ClusterRole",
              lambda d: _isin(d, "resource", ("clusterroles", "clusterrolebindings")) & _isin(d, "verb", WRITE_VERBS) & _contains(d, "name", r"^system:")),
    EventFlag("impersonation", "impersonatedUser", "acting as another identity hides who really did it",
              lambda d: ~_isna(d, "impersonated_user") | _eq(d, "verb", "impersonate")),
    EventFlag("webhook_write", "objectRef.resource", "admission webhooks see or change every object: persistence and interception",
              lambda d: _isin(d, "resource", WEBHOOK_RESOURCES) & _isin(d, "verb", WRITE_VERBS)),
    EventFlag("webhook_external_url", "requestObject.webhooks[].clientConfig.url",
              "a webhook that posts objects to an address outside the cluster hands every matching secret and pod spec to it",
              lambda d: _contains(d, "webhook_targets", EXTERNAL_WEBHOOK_URL.pattern)),
    EventFlag("webhook_weakened", "requestObject.webhooks[].rules, failurePolicy",
              "emptying a webhook's rules or failing a policy webhook open lets through what it was installed to block",
              lambda d: _isin(d, "resource", WEBHOOK_RESOURCES) & _true(d, "webhook_weakened")),
    EventFlag("exec", "objectRef.subresource", "exec/attach: a shell in a running container",
              lambda d: _isin(d, "subresource", ("exec", "attach"))),
    EventFlag("exec_kube_system", "objectRef.subresource, namespace", "a shell in, or a tunnel to, a control-plane add-on pod",
              lambda d: _isin(d, "subresource", ("exec", "attach", "portforward")) & _isin(d, "namespace", SYSTEM_NAMESPACES)),
    EventFlag("exec_suspicious_command", "requestURI command= parameters", "reverse shells, token reads, metadata endpoint, tar copies",
              lambda d: _isin(d, "subresource", ("exec", "attach")) & _contains(d, "exec_command", SUSPICIOUS_EXEC.pattern)),
    EventFlag("portforward", "objectRef.subresource", "tunnelling into a pod from outside", lambda d: _eq(d, "subresource", "portforward")),
    EventFlag("ephemeral_container", "objectRef.subresource", "debug containers added to a running pod",
              lambda d: _eq(d, "subresource", "ephemeralcontainers") & _isin(d, "verb", ("create", "update", "patch"))),
    EventFlag("workload_create", "objectRef.resource, verb", "new workloads: where an attacker runs code",
              lambda d: _isin(d, "resource", WORKLOAD_RESOURCES) & _isin(d, "verb", ("create",)) & _isna(d, "subresource")),
    EventFlag("pod_in_system_namespace", "objectRef.namespace", "pods created directly in kube-system blend in with add-ons",
              lambda d: _eq(d, "resource", "pods") & _eq(d, "verb", "create") & _isin(d, "namespace", ("kube-system", "kube-public")) & _isna(d, "subresource")),
    EventFlag("privileged_workload", "pod_privileged, pod_host_namespaces, pod_sensitive_host_paths, pod_dangerous_capabilities",
              "privileged, host namespaces, sensitive hostPath or dangerous capabilities (features.writes' lists): node takeover",
              lambda d: _isin(d, "resource", WORKLOAD_RESOURCES) & _isin(d, "verb", ("create", "update", "patch")) & _node_takeover(d)),
    EventFlag("persistence_workload", "objectRef.resource, verb", "CronJobs and DaemonSets run code again and everywhere",
              lambda d: _isin(d, "resource", ("cronjobs", "daemonsets")) & _eq(d, "verb", "create")),
    EventFlag("nodeport_service", "requestObject.spec.type", "exposing a service on every node's address",
              lambda d: _eq(d, "resource", "services") & _eq(d, "verb", "create") & _eq(d, "service_type", "NodePort")),
    EventFlag("permission_review", "objectRef.resource", "kubectl auth can-i: checking what stolen credentials can do",
              lambda d: _isin(d, "resource", ("selfsubjectaccessreviews", "selfsubjectrulesreviews", "subjectaccessreviews"))),
    EventFlag("escalation_rights_check", "access_review_grants",
              "kubectl auth can-i about a right that takes the cluster (ESCALATION_GRANTS): RBAC writes, escalate/bind, "
              "impersonation, minting tokens, the kubelet API, webhooks, CSR approval",
              lambda d: _contains(d, "access_review_grants", rf"(?:^|,)(?:{'|'.join(ESCALATION_GRANTS)})(?:,|$)")),
    EventFlag("anonymous_allowed", "user.username, decision, requestURI", "an unauthenticated request that succeeded (health checks excluded)",
              lambda d: _f(d, "anonymous") & _f(d, "allowed") & ~_f(d, "health_check")),
    EventFlag("events_delete", "objectRef.resource, verb", "deleting Events erases the cluster's own record",
              lambda d: _eq(d, "resource", "events") & _isin(d, "verb", ("delete", "deletecollection"))),
    EventFlag("deletecollection", "verb", "bulk deletion", lambda d: _eq(d, "verb", "deletecollection")),
    EventFlag("system_from_public", "user.username, sourceIPs", "control-plane or node identities never call from the internet",
              lambda d: _f(d, "system_identity") & _f(d, "source_public")),
    EventFlag("audit_id_reused", "auditID, requestReceivedTimestamp, user.username, sourceIPs (last), verb, requestURI",
              "different requests logged under one auditID (within the events judged together: an archived hour): the client set "
              "the Audit-ID header and reused it, which hides one request behind another wherever events are keyed by auditID",
              lambda d: _audit_id_reused(d)),
    EventFlag("service_account_from_outside", "user.username, sourceIPs", "a pod's token used from outside the VPC: stolen token",
              lambda d: _f(d, "service_account") & (_f(d, "source_public") | _f(d, "source_aws"))),
    EventFlag("sensitive_write_unread", "salvage marker, objectRef, verb",
              "a write to a workload, RBAC object, webhook configuration, CSR or kube-system ConfigMap (aws-auth) whose body "
              "could not be read (cut by CloudWatch, or bytes orjson refuses): the facts body rules judge are unknown",
              lambda d: _isin(d, "salvage", ("body_unreadable", "truncated")) & _isin(d, "verb", ("create", "update", "patch"))
              & (_isin(d, "resource", WORKLOAD_RESOURCES + RBAC_RESOURCES + WEBHOOK_RESOURCES + ("certificatesigningrequests",))
                 | (_eq(d, "resource", "configmaps") & _eq(d, "namespace", "kube-system")))),
    EventFlag("node_registered_by_other", "objectRef.resource, objectRef.name, verb, user.username",
              "a Node object created by anyone but that node's own kubelet (system:node:<name>): a machine added to the cluster",
              _node_registered_by_other),
    # --- issue 17: the request decoders' facts (features.commands, features.writes, features.csr)
    EventFlag("exec_reverse_shell", "exec_intents", "a command wiring a shell to the network: interactive control from outside",
              lambda d: _contains(d, "exec_intents", r"(?:^|,)reverse_shell:")),
    EventFlag("exec_credential_read", "exec_intents", "a command reading tokens, keys, kubeconfigs, process environments or AWS credentials",
              lambda d: _contains(d, "exec_intents", r"(?:^|,)credential_read:(?!env_dump)")),
    EventFlag("exec_env_dump", "exec_intents", "a command printing the whole environment: weak alone, engineers do it to debug",
              lambda d: _contains(d, "exec_intents", r"(?:^|,)credential_read:env_dump")),
    EventFlag("exec_metadata_endpoint", "exec_intents", "a command reaching the instance metadata or pod credential endpoints",
              lambda d: _contains(d, "exec_intents", r"(?:^|,)metadata_endpoint:")),
    EventFlag("exec_payload", "exec_intents", "download-and-run or decoded execution: code the audit log does not show",
              lambda d: _contains(d, "exec_intents", r"(?:^|,)(?:download_exec|encoded_exec):")),
    EventFlag("exec_copy_out", "exec_intents", "tar cf - in a container: kubectl cp copying files out",
              lambda d: _contains(d, "exec_intents", r"(?:^|,)archive_copy:from_pod")),
    EventFlag("exec_tooling", "exec_intents", "package installs, history or log clearing, obfuscated command lines",
              lambda d: _contains(d, "exec_intents", r"(?:^|,)(?:package_install|history_clear|obfuscation):")),
    EventFlag("kubelet_execution", "proxy_resource, proxy_class (requestURI nodes/{name}/proxy/run|exec|attach|portForward|cri)",
              "commands in any pod of a node through the kubelet API, with no pods/exec record",
              lambda d: _eq(d, "proxy_resource", "nodes") & _eq(d, "proxy_class", "execution")),
    EventFlag("kubelet_read", "proxy_resource, proxy_class (requestURI nodes/{name}/proxy/pods|logs|configz|debug|checkpoint|...)",
              "reading every pod spec, log, profile or memory dump of a node through the kubelet API",
              lambda d: _eq(d, "proxy_resource", "nodes") & _isin(d, "proxy_class", ("read", "other"))),
    EventFlag("service_proxy", "proxy_resource, proxy_class (requestURI pods|services/{name}/proxy/...)",
              "reaching a pod's or service's own HTTP endpoints through the API server",
              lambda d: _isin(d, "proxy_resource", ("pods", "services")) & _eq(d, "proxy_class", "application")),
    EventFlag("ephemeral_privileged", "objectRef.subresource, pod_privileged_containers",
              "kubectl debug adding a privileged or capability-laden debug container",
              lambda d: _eq(d, "subresource", "ephemeralcontainers") & _contains(d, "pod_privileged_containers", r"(?:^|,)ephemeralContainers/")),
    EventFlag("host_escape_workload", "pod_privileged, pod_host_namespaces, pod_sensitive_host_paths, pod_dangerous_capabilities, "
              "pod_proc_mount_unmasked, workload_owner, user",
              "a workload written by its author (not a controller's copy) that can take its node over",
              lambda d: _written_template(d) & _node_takeover(d)),
    EventFlag("weakened_workload", "pod_runs_as_root, pod_privilege_escalation, pod_unconfined, pod_host_ports, workload_owner, user",
              "a written workload that drops a hardening (root, escalation, unconfined profiles, host ports)",
              lambda d: _written_template(d) & (_true(d, "pod_runs_as_root") | _true(d, "pod_privilege_escalation")
                                                | ~_isna(d, "pod_unconfined") | ~_isna(d, "pod_host_ports"))),
    EventFlag("system_namespace_workload_identity", "namespace, pod_service_account, pod_host_namespaces, workload_owner, user",
              "a kube-system workload written that names a service account or joins the host network: persistence among the add-ons",
              lambda d: _written_template(d) & _eq(d, "namespace", "kube-system")
              & (~_isna(d, "pod_service_account") | _contains(d, "pod_host_namespaces", "hostNetwork"))),
    EventFlag("internet_facing_service", "service_lb_scheme, service_type, service_external_ips",
              "a Service written to be reachable from the internet, on every node, or on claimed external addresses",
              lambda d: _eq(d, "resource", "services") & _isin(d, "verb", ("create", "update", "patch")) & (
                  _eq(d, "service_lb_scheme", "internet-facing") | _eq(d, "service_type", "NodePort") | ~_isna(d, "service_external_ips"))),
    EventFlag("ingress_without_tls", "ingress_tls", "an Ingress written that serves in clear text",
              lambda d: _eq(d, "resource", "ingresses") & _isin(d, "verb", ("create", "update", "patch")) & _eq(d, "ingress_tls", False)),
    EventFlag("role_dangerous_grant", "role_dangerous_grants", "a Role or ClusterRole written that grants an escalation path",
              lambda d: _isin(d, "resource", ("roles", "clusterroles")) & _isin(d, "verb", ("create", "update", "patch"))
              & ~_isna(d, "role_dangerous_grants")),
    EventFlag("csr_risky", "csr_risks", "a CertificateSigningRequest for an unrevocable API-server client certificate or a privileged identity",
              lambda d: _eq(d, "resource", "certificatesigningrequests") & _eq(d, "verb", "create") & ~_isna(d, "csr_risks")),
    EventFlag("csr_client_approved", "csr_decision, csr_approved_signer, csr_risks",
              "approving a client certificate for the API server, or a request with a risky subject: a credential minted",
              lambda d: _eq(d, "csr_decision", "Approved") & (_eq(d, "csr_approved_signer", "kubernetes.io/kube-apiserver-client")
                                                              | ~_isna(d, "csr_risks"))),
)
FLAG_NAMES = tuple(f.name for f in FLAGS)
FLAG_BY_NAME = {f.name: f for f in FLAGS}


HELPER_COLUMNS = ("src_class", "src_threat", "ua_family", "allow_listed")


def prepare(d: FlagInputs, context: FlagContext) -> None:
    """The helper columns flags read: address class, threat hit, client family, allow-list membership,
    each judged once per distinct address, client or user."""
    d.derive("src_class", "source_ip", lambda ip: context.addresses.classify(ip)[0])
    d.helpers["src_threat"] = d.where("source_ip", lambda ip: context.addresses.classify(ip)[1])
    d.derive("ua_family", "user_agent", user_agent_family)
    d.helpers["allow_listed"] = d.where("user", lambda user: user is not None and user in context.allow_identities)


def flag_events(events: pa.Table | pd.DataFrame, context: FlagContext, hour: dict[str, np.ndarray] | None = None,
                only: frozenset[str] | None = None) -> FlagInputs:
    """Every registered flag of ``events`` (an Arrow table or a DataFrame), in ``.flags`` in registry order;
    nothing is converted to pandas (``frame_with_flags`` does that where a DataFrame is wanted). ``hour``: for a
    batch of an hour, the flags judged over the whole hour (``FlagInputs.hour``). ``only``: just these flags, which
    must hold every flag they read (``with_needs``), as a busy hour's first pass counts its threshold groups."""
    inputs = FlagInputs(events, hour)
    prepare(inputs, context)
    for flag in FLAGS:
        if only is None or flag.name in only:
            inputs.flags[flag.name] = np.asarray(flag.compute(inputs), dtype=bool)
    return inputs


@cache
def flag_columns(only: frozenset[str] | None = None) -> frozenset[str]:
    """The event columns ``flag_events`` reads: every registered flag (or those ``only`` names) and helper, traced over
    no events. A flag combines its tests with &, | and ~, never ``and``/``or``, so it reads all its columns whatever
    the values; the features stage reads only these from the archive, with the aggregates' and rules' own."""
    return frozenset(flag_events(EVENT_SCHEMA.empty_table(), FlagContext(AddressBook()), only=only).read)


@cache
def _traced() -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """Per flag, traced over no events: the event columns its value depends on, and the earlier flags (``_f``), each
    directly or through the flags it reads. Each flag is traced on inputs of its own after ``prepare`` (a column
    registers as read once per ``FlagInputs``), so the columns the helpers read (``prepare``: source_ip, user_agent,
    user) are not listed under a flag that reads them too."""
    computed = flag_events(EVENT_SCHEMA.empty_table(), FlagContext(AddressBook())).flags
    reads: dict[str, frozenset[str]] = {}
    needs: dict[str, frozenset[str]] = {}
    for flag in FLAGS:
        inputs = FlagInputs(EVENT_SCHEMA.empty_table())
        prepare(inputs, FlagContext(AddressBook()))
        inputs.flags = dict(computed)
        before = set(inputs.read)
        flag.compute(inputs)
        reads[flag.name] = frozenset(inputs.read - before).union(*(reads[name] for name in inputs.flags_read))
        needs[flag.name] = frozenset(inputs.flags_read).union(*(needs[name] for name in inputs.flags_read))
    return reads, needs


def flag_reads() -> dict[str, frozenset[str]]:
    """The event columns each flag's value depends on: those it reads, and those of the earlier flags it reads."""
    return _traced()[0]


def with_needs(names: Iterable[str]) -> frozenset[str]:
    """The flags among ``names`` and every earlier flag they read, directly or not: what ``flag_events(only=)`` must
    compute for them."""
    wanted = set(names) & set(FLAG_NAMES)
    return frozenset(wanted.union(*(_traced()[1][name] for name in wanted)))


def frame_with_flags(inputs: FlagInputs) -> pd.DataFrame:
    """The events of ``inputs`` as a DataFrame with the helper columns and every flag as a boolean column."""
    events = inputs.frame()
    helpers = {name: inputs.helpers[name] if name in inputs.helpers else inputs.series(name).set_axis(events.index)
               for name in HELPER_COLUMNS}
    events = events.assign(**helpers)
    replaced = {name: values for name, values in inputs.flags.items() if name in events.columns}
    added = {name: values for name, values in inputs.flags.items() if name not in replaced}
    return pd.concat([events.assign(**replaced), pd.DataFrame(added, index=events.index)], axis=1)


def add_flags(events: pd.DataFrame, context: FlagContext) -> pd.DataFrame:
    """The events with every registered flag as a boolean column (in registry order)."""
    return frame_with_flags(flag_events(events, context))
