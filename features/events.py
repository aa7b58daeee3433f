"""Normalise raw audit.k8s.io Events into typed, flat rows (the archive's schema).

Pure: dicts in, Arrow tables out. Each column is declared once in ``EVENT_COLUMNS``
with its type and why it is kept; the archive, the Athena DDL and the docs read
the same list. Secret material never survives normalisation: request and response
bodies are reduced to the few facts rules need (a pod's privileges, a binding's
role and subjects, a ConfigMap's key names), never values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    why: str


EVENT_COLUMNS: tuple[Column, ...] = (
    Column("time", TIMESTAMP, "stageTimestamp: when the stage happened; windows and partitions use it"),
    Column("received_time", TIMESTAMP, "requestReceivedTimestamp, for latency and ordering"),
    Column("audit_id", pa.string(), "auditID: joins the stages of one request; dedup key with stage"),
    Column("stage", pa.string(), "RequestReceived/ResponseStarted/ResponseComplete/Panic; exec shows as ResponseStarted 101"),
    Column("level", pa.string(), "audit level the policy logged at"),
    Column("user", pa.string(), "user.username: the identity acting"),
    Column("groups", pa.list_(pa.string()), "user.groups: system:masters or system:nodes change what is normal"),
    Column("impersonated_user", pa.string(), "impersonatedUser.username: acting as someone else"),
    Column("source_ip", pa.string(), "last sourceIPs entry: the connection address, not client-settable"),
    Column("claimed_ip", pa.string(), "first sourceIPs entry when there are several: X-Forwarded-For, client-settable, display only"),
    Column("user_agent", pa.string(), "userAgent: client family changes (kubectl to curl) betray stolen credentials"),
    Column("verb", pa.string(), "get/list/watch/create/update/patch/delete/deletecollection"),
    Column("resource", pa.string(), "objectRef.resource"),
    Column("subresource", pa.string(), "objectRef.subresource: exec, attach, portforward, token, status"),
    Column("namespace", pa.string(), "objectRef.namespace"),
    Column("name", pa.string(), "objectRef.name"),
    Column("api_group", pa.string(), "objectRef.apiGroup"),
    Column("code", pa.int32(), "responseStatus.code: 401/403 denials, 101 exec upgrades"),
    Column("decision", pa.string(), "annotation authorization.k8s.io/decision: allow or forbid"),
    Column("authz_reason", pa.string(), "annotation authorization.k8s.io/reason: which binding allowed it"),
    Column("request_uri", pa.string(), "requestURI: non-resource paths, exec commands, cluster-wide lists"),
    Column("arn", pa.string(), "user.extra.arn: the IAM principal behind an EKS identity"),
    Column("session_name", pa.string(), "user.extra.sessionName"),
    Column("access_key_id", pa.string(), "user.extra.accessKeyId: a new key for the same user is a lead"),
    Column("sa_pod_name", pa.string(), "service-account token's bound pod (authentication.kubernetes.io/pod-name)"),
    Column("truncated", pa.bool_(), "annotation audit.k8s.io/truncated: body was stripped for size"),
    Column("exec_command", pa.string(), "command= parameters of an exec/attach requestURI, decoded and joined"),
    Column("pod_privileged", pa.bool_(), "a created workload's container runs privileged"),
    Column("pod_host_namespaces", pa.string(), "hostPID/hostNetwork/hostIPC set on a created workload, comma-joined"),
    Column("pod_host_paths", pa.string(), "hostPath volume paths of a created workload, comma-joined"),
    Column("pod_capabilities", pa.string(), "added Linux capabilities of a created workload, comma-joined"),
    Column("pod_images", pa.string(), "container images of a created workload, comma-joined"),
    Column("role_ref", pa.string(), "a binding's roleRef as Kind/name"),
    Column("subjects", pa.string(), "a binding's subjects as Kind:namespace/name, comma-joined"),
    Column("role_verbs", pa.string(), "verbs granted by a created/updated Role or ClusterRole, comma-joined"),
    Column("role_resources", pa.string(), "resources granted by a created/updated Role or ClusterRole, comma-joined"),
    Column("service_type", pa.string(), "spec.type of a created Service (NodePort, LoadBalancer)"),
    Column("csr_signer", pa.string(), "spec.signerName of a CertificateSigningRequest"),
    Column("csr_usages", pa.string(), "spec.usages of a CertificateSigningRequest, comma-joined"),
    Column("configmap_keys", pa.string(), "data key names of a written ConfigMap (values are never kept)"),
    Column("configmap_credentials", pa.bool_(), "a written ConfigMap's data looks like it holds credentials (values masked)"),
    Column("grants_masters", pa.bool_(), "a written aws-auth ConfigMap maps someone into system:masters"),
    Column("ingress_tls", pa.bool_(), "a created Ingress declares spec.tls"),
    Column("cw_event_id", pa.string(), "CloudWatch Logs event id when read from CloudWatch/Firehose: first dedup key"),
)
EVENT_SCHEMA = pa.schema([pa.field(c.name, c.type) for c in EVENT_COLUMNS])
COLUMN_NAMES = tuple(c.name for c in EVENT_COLUMNS)
_STRING_COLUMNS = frozenset(c.name for c in EVENT_COLUMNS if c.type == pa.string())

SENSITIVE_HOST_PATHS = frozenset(
    {
        "/", "/proc", "/var/run/docker.sock", "/etc", "/root", "/var/run/crio/crio.sock",
        "/run/containerd/containerd.sock", "/home/admin", "/var/lib/kubelet", "/var/lib/kubelet/pki",
        "/etc/kubernetes", "/etc/kubernetes/manifests", "/var/run", "/run", "/var/lib/docker", "/dev",
    }
)
_CREDENTIAL_KEY = re.compile(r"aws_access_key_id|aws_secret|secret_?key|passw(or)?d|passphrase|token|api_?key|private_?key", re.I)
_CREDENTIAL_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")


class BadEvent(ValueError):
    """A parsed JSON value that is not a usable audit event; ``reason`` is the quarantine bucket."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    return None


def _joined(values) -> str | None:
    items = sorted({str(v) for v in values if v not in (None, "")})
    return ",".join(items) if items else None


def _pod_spec(obj: dict) -> dict | None:
    """The pod spec inside a Pod, a workload template or a CronJob's job template."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return None
    for path in (("template", "spec"), ("jobTemplate", "spec", "template", "spec")):
        inner = spec
        for key in path:
            inner = inner.get(key) if isinstance(inner, dict) else None
        if isinstance(inner, dict):
            return inner
    return spec if "containers" in spec else None


def _workload_facts(spec: dict, row: dict) -> None:
    containers = []
    for key in ("containers", "initContainers", "ephemeralContainers"):
        value = spec.get(key)
        if isinstance(value, list):
            containers.extend(c for c in value if isinstance(c, dict))
    privileged = False
    capabilities = []
    for container in containers:
        context = container.get("securityContext") or {}
        if isinstance(context, dict):
            privileged = privileged or context.get("privileged") is True
            caps = context.get("capabilities") or {}
            if isinstance(caps, dict) and isinstance(caps.get("add"), list):
                capabilities.extend(caps["add"])
    row["pod_privileged"] = privileged
    row["pod_host_namespaces"] = _joined(k for k in ("hostPID", "hostNetwork", "hostIPC") if spec.get(k) is True)
    volumes = spec.get("volumes") if isinstance(spec.get("volumes"), list) else []
    row["pod_host_paths"] = _joined(
        (v.get("hostPath") or {}).get("path") for v in volumes if isinstance(v, dict) and isinstance(v.get("hostPath"), dict)
    )
    row["pod_capabilities"] = _joined(capabilities)
    row["pod_images"] = _joined(c.get("image") for c in containers)


_WORKLOADS = ("pods", "deployments", "daemonsets", "statefulsets", "replicasets", "jobs", "cronjobs")
_BINDINGS = ("clusterrolebindings", "rolebindings")
_ROLES = ("clusterroles", "roles")
# Resources whose request body ``_request_facts`` reads; every other body is dropped unread.
BODY_RESOURCES = frozenset(_WORKLOADS + _BINDINGS + _ROLES + ("services", "certificatesigningrequests", "configmaps", "ingresses"))


def _request_facts(resource: str | None, name: str | None, obj: dict, row: dict) -> None:
    """Reduce a request body to the facts rules need; never copy values of Secrets or ConfigMaps."""
    if resource in _WORKLOADS:
        spec = _pod_spec(obj)
        if spec:
            _workload_facts(spec, row)
    elif resource in _BINDINGS:
        ref = obj.get("roleRef")
        if isinstance(ref, dict):
            row["role_ref"] = f"{ref.get('kind', '')}/{ref.get('name', '')}"
        subjects = obj.get("subjects")
        if isinstance(subjects, list):
            row["subjects"] = _joined(
                f"{s.get('kind', '')}:{s.get('namespace') or ''}/{s.get('name', '')}" for s in subjects if isinstance(s, dict)
            )
    elif resource in _ROLES:
        rules = obj.get("rules")
        if isinstance(rules, list):
            rules = [r for r in rules if isinstance(r, dict)]
            row["role_verbs"] = _joined(v for r in rules for v in (r.get("verbs") or []))
            row["role_resources"] = _joined(v for r in rules for v in (r.get("resources") or []))
    elif resource == "services":
        spec = obj.get("spec")
        if isinstance(spec, dict):
            row["service_type"] = _text(spec.get("type"))
    elif resource == "certificatesigningrequests":
        spec = obj.get("spec")
        if isinstance(spec, dict):
            row["csr_signer"] = _text(spec.get("signerName"))
            usages = spec.get("usages")
            row["csr_usages"] = _joined(usages) if isinstance(usages, list) else None
    elif resource == "configmaps":
        data = obj.get("data")
        if isinstance(data, dict):
            row["configmap_keys"] = _joined(data.keys())
            row["configmap_credentials"] = any(
                _CREDENTIAL_KEY.search(str(k)) or (isinstance(v, str) and _CREDENTIAL_VALUE.search(v)) for k, v in data.items()
            )
            if name == "aws-auth":
                row["grants_masters"] = any(isinstance(v, str) and "system:masters" in v for v in data.values())
    elif resource == "ingresses":
        spec = obj.get("spec")
        if isinstance(spec, dict):
            row["ingress_tls"] = bool(spec.get("tls"))


def _exec_command(uri: str | None) -> str | None:
    if not uri or "command=" not in uri:
        return None
    commands = parse_qs(urlsplit(uri).query).get("command")
    return " ".join(commands) if commands else None


def synthetic_audit_id(raw: dict) -> str:
    """A stable id for an event that lacks auditID (hand-written or re-exported events):
    a hash of its canonical JSON, so identical copies still deduplicate."""
    import hashlib

    import orjson

    return "sha256-" + hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:32]


def normalize_event(raw, cw_event_id: str | None = None, default_time: str | None = None, repairs: dict | None = None) -> dict:
    """One raw audit event (already JSON-decoded) to a flat row; raises BadEvent with a reason.

    Tolerates what real pipelines deliver: ``code`` as a digit string and
    ``sourceIPs`` as a bare string are repaired; v1beta1 events (``timestamp``
    instead of ``stageTimestamp``) are read; unknown extra fields are ignored; an
    event without auditID gets a content-hash id. A failed authentication (401) carries
    ``"user": {}``: it is kept with no username (the source address still counts). A
    missing or null ``user`` is kept the same way and counted in ``repairs``.
    ``default_time`` stands in for a missing timestamp (used for hand-written rule test
    events; the archive passes none).
    """
    if not isinstance(raw, dict):
        raise BadEvent("not_an_object", type(raw).__name__)
    api_version = raw.get("apiVersion")
    if raw.get("kind") not in ("Event", None) or (api_version is not None and not str(api_version).startswith("audit.k8s.io/")):
        raise BadEvent("not_an_audit_event", f"kind={raw.get('kind')!r} apiVersion={api_version!r}")
    user = raw.get("user")
    if not isinstance(user, dict):
        if repairs is not None:
            repairs["user_missing"] = repairs.get("user_missing", 0) + 1
        user = {}
    time = (
        raw.get("stageTimestamp") or raw.get("timestamp") or raw.get("requestReceivedTimestamp") or raw.get("p_event_time")
        or default_time
    )
    if not isinstance(time, str):
        raise BadEvent("missing_timestamp")
    audit_id = raw.get("auditID")
    if not isinstance(audit_id, str) or not audit_id:
        audit_id = synthetic_audit_id(raw)

    ips = raw.get("sourceIPs")
    if isinstance(ips, str):
        ips = [ips]
        if repairs is not None:
            repairs["source_ips_as_string"] = repairs.get("source_ips_as_string", 0) + 1
    elif not isinstance(ips, list):
        ips = []
    ips = [ip for ip in ips if isinstance(ip, str) and ip]
    status = raw.get("responseStatus")
    code = status.get("code") if isinstance(status, dict) else None
    if isinstance(code, str):
        code = int(code) if code.isdigit() else None
        if repairs is not None:
            repairs["code_as_string"] = repairs.get("code_as_string", 0) + 1
    elif not isinstance(code, int) or isinstance(code, bool) or not (0 <= code < 1000):
        code = None
    ref = raw.get("objectRef") if isinstance(raw.get("objectRef"), dict) else {}
    extra = user.get("extra") if isinstance(user.get("extra"), dict) else {}
    annotations = raw.get("annotations") if isinstance(raw.get("annotations"), dict) else {}
    impersonated = raw.get("impersonatedUser")
    groups = user.get("groups")
    resource = _text(ref.get("resource"))
    name = _text(ref.get("name"))
    uri = _text(raw.get("requestURI"))
    subresource = _text(ref.get("subresource"))

    row = {
        "time": time,
        "received_time": _text(raw.get("requestReceivedTimestamp")),
        "audit_id": audit_id,
        "stage": _text(raw.get("stage")) or "ResponseComplete",
        "level": _text(raw.get("level")),
        "user": _text(user.get("username")),
        "groups": [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else [],
        "impersonated_user": _text(impersonated.get("username")) if isinstance(impersonated, dict) else None,
        "source_ip": ips[-1] if ips else None,
        "claimed_ip": ips[0] if len(ips) > 1 else None,
        "user_agent": _text(raw.get("userAgent")),
        "verb": _text(raw.get("verb")),
        "resource": resource,
        "subresource": subresource,
        "namespace": _text(ref.get("namespace")),
        "name": name,
        "api_group": _text(ref.get("apiGroup")),
        "code": code,
        "decision": _text(annotations.get("authorization.k8s.io/decision")),
        "authz_reason": _text(annotations.get("authorization.k8s.io/reason")),
        "request_uri": uri,
        "arn": _first(extra.get("arn")),
        "session_name": _first(extra.get("sessionName")),
        "access_key_id": _first(extra.get("accessKeyId")),
        "sa_pod_name": _first(extra.get("authentication.kubernetes.io/pod-name")),
        "truncated": annotations.get("audit.k8s.io/truncated") == "true",
        "exec_command": _exec_command(uri) if subresource in ("exec", "attach") else None,
        "cw_event_id": cw_event_id,
    }
    body = raw.get("requestObject")
    if isinstance(body, dict) and resource:
        _request_facts(resource, name, body, row)
    return row


def _first(value) -> str | None:
    if isinstance(value, list):
        return _text(value[0]) if value else None
    return _text(value)


class EventTableBuilder:
    """Accumulates normalised rows column-wise and emits Arrow tables of EVENT_SCHEMA.

    Timestamps are parsed in one vectorised Arrow cast per batch; a row whose
    timestamp does not parse is reported back (index, reason) for quarantine.
    """

    def __init__(self):
        self._columns: dict[str, list] = {name: [] for name in COLUMN_NAMES}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, row: dict) -> None:
        get = row.get
        for name, values in self._columns.items():
            values.append(get(name))
        self._size += 1

    def build(self) -> tuple[pa.Table, list[int]]:
        """The table of good rows and the indices (in append order) of rows with bad timestamps."""
        columns = self._columns
        times, bad = _parse_times(columns["time"])
        received, _ = _parse_times(columns["received_time"], allow_null=True)
        arrays = []
        for column in EVENT_COLUMNS:
            if column.name == "time":
                arrays.append(times)
            elif column.name == "received_time":
                arrays.append(received)
            else:
                arrays.append(pa.array(columns[column.name], type=column.type))
        table = pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)
        if bad:
            rejected = set(bad)
            table = table.filter(pa.array([i not in rejected for i in range(len(table))]))
        self.__init__()
        return table, bad


def _parse_times(values: list, allow_null: bool = False) -> tuple[pa.Array, list[int]]:
    strings = pa.array(values, type=pa.string())
    try:
        return pc.cast(strings, TIMESTAMP), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    parsed = []
    bad = []
    for index, value in enumerate(values):
        moment = parse_time(value) if value is not None else None
        parsed.append(moment)
        if moment is None and not allow_null:
            bad.append(index)
    return pa.array(parsed, type=TIMESTAMP), bad


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: str) -> datetime | None:
    """Parse the timestamp spellings seen in audit exports; zone-less times are UTC. None if unparseable."""
    try:
        moment = datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def empty_event_table() -> pa.Table:
    return EVENT_SCHEMA.empty_table()
