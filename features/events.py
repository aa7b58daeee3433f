"""Normalise raw audit.k8s.io Events into typed, flat rows (the archive's schema).

Pure: dicts in, Arrow tables out. Each column is declared once in ``EVENT_COLUMNS``
with its type and why it is kept; the archive, the Athena DDL and the docs read
the same list; the request decoders' columns (features.commands, features.writes,
features.csr) are declared in those modules and joined here. Secret material never
survives normalisation: request and response bodies are reduced to the few facts rules
need (a pod's privileges, a binding's role and subjects, a ConfigMap's key names), never values.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import commands, csr, writes

try:
    import msgspec
except ImportError:  # pragma: no cover - a declared dependency; see _DECODE below
    msgspec = None

TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    """One archive column: its type, why it is kept, and where it comes from in an audit event.

    ``source`` holds the paths of keys it is read from (the first present one counts); ``read`` says
    how (READS). The per-line normaliser, the msgspec block decoder's struct and its field list are
    generated from these; the C decoder (features/_native/fastnorm.c) is checked against them by
    tests/features/test_event_schema.py."""

    name: str
    type: pa.DataType
    why: str
    source: tuple[tuple[str, ...], ...] = ()
    read: str = "body"


# How a column is read from its source. For each: what the per-line path keeps, and the JSON type the
# block decoders accept (any other type sends the line to the per-line path, which decides it).
READS: dict[str, str] = {
    "time": "the first non-empty of its sources; not a string: missing_timestamp (per-line) or the per-line path (block)",
    "id": "a non-empty string; else a hash of the event (per-line) or the per-line path (block)",
    "stage": 'a non-empty string, else "ResponseComplete"; block: string or null',
    "text": "a string (the per-line path also keeps a number or boolean as its text), else null; block: string or null",
    "first": "the first entry of a list (user.extra values are lists), or a bare string; block: list of strings/nulls, string or null",
    "strings": "the strings of a list, [] when absent; block: list of strings or null",
    "code": "an integer 0-999, else null (the per-line path repairs a digit string); block: integer or null",
    "true": 'whether the value is the string "true"; block: string or null',
    "last_ip": "the last non-empty entry of the list (the per-line path repairs a bare string); block: list of strings or null",
    "claimed_ip": "the first non-empty entry when there are several; block: as last_ip",
    "command": "decoded from the request URI by features.commands on the (rare) exec, attach and proxy rows, on every path "
               "(the block decoders' request_uri and subresource columns, then features.commands)",
    "body": "a fact of the written object (features.writes.effective_object: the responseObject as stored, else the request "
            "body) read by _request_facts / features.writes / features.csr, for BODY_RESOURCES only (never on the block path)",
    "record": "not in the event: set from the log record it came in (salvage, CloudWatch event id)",
}


def _at(*paths: str) -> tuple[tuple[str, ...], ...]:
    """Source paths written as dotted strings; ``/`` keeps an annotation key whole (``annotations/authorization.k8s.io/decision``)."""
    return tuple(tuple(path.split("/", 1)) if "/" in path else tuple(path.split(".")) for path in paths)


_BODY = _at("requestObject", "responseObject")
_URI = _at("requestURI", "objectRef.subresource")
# Columns the decoder modules declare (features.derived.DerivedColumn): joined into EVENT_COLUMNS below, declared there only.
_COMMAND_COLUMNS = {c.name: c for c in commands.COLUMNS}
_BODY_COLUMNS = writes.COLUMNS + csr.COLUMNS


def _derived(column, source: tuple, read: str) -> Column:
    return Column(column.name, column.type, f"{column.why} (reads {column.reads})", source, read)


EVENT_COLUMNS: tuple[Column, ...] = (
    Column("time", TIMESTAMP, "stageTimestamp: when the stage happened; windows and partitions use it",
           _at("stageTimestamp", "timestamp", "requestReceivedTimestamp", "p_event_time"), "time"),
    Column("received_time", TIMESTAMP, "requestReceivedTimestamp, for latency and ordering", _at("requestReceivedTimestamp"), "text"),
    Column("audit_id", pa.string(), "auditID: joins the stages of one request; the client may set it (Audit-ID header), so it identifies nothing alone",
           _at("auditID"), "id"),
    Column("stage", pa.string(), "RequestReceived/ResponseStarted/ResponseComplete/Panic; exec shows as ResponseStarted 101",
           _at("stage"), "stage"),
    Column("level", pa.string(), "audit level the policy logged at", _at("level"), "text"),
    Column("user", pa.string(), "user.username: the identity acting", _at("user.username"), "text"),
    Column("groups", pa.list_(pa.string()), "user.groups: system:masters or system:nodes change what is normal", _at("user.groups"), "strings"),
    Column("impersonated_user", pa.string(), "impersonatedUser.username: acting as someone else", _at("impersonatedUser.username"), "text"),
    Column("source_ip", pa.string(), "last sourceIPs entry: the connection address, not client-settable", _at("sourceIPs"), "last_ip"),
    Column("claimed_ip", pa.string(), "first sourceIPs entry when there are several: X-Forwarded-For, client-settable, display only",
           _at("sourceIPs"), "claimed_ip"),
    Column("user_agent", pa.string(), "userAgent: client family changes (kubectl to curl) betray stolen credentials", _at("userAgent"), "text"),
    Column("verb", pa.string(), "get/list/watch/create/update/patch/delete/deletecollection", _at("verb"), "text"),
    Column("resource", pa.string(), "objectRef.resource", _at("objectRef.resource"), "text"),
    Column("subresource", pa.string(), "objectRef.subresource: exec, attach, portforward, token, status", _at("objectRef.subresource"), "text"),
    Column("namespace", pa.string(), "objectRef.namespace", _at("objectRef.namespace"), "text"),
    Column("name", pa.string(), "objectRef.name", _at("objectRef.name"), "text"),
    Column("api_group", pa.string(), "objectRef.apiGroup", _at("objectRef.apiGroup"), "text"),
    Column("code", pa.int32(), "responseStatus.code: 401/403 denials, 101 exec upgrades", _at("responseStatus.code"), "code"),
    Column("decision", pa.string(), "annotation authorization.k8s.io/decision: allow or forbid",
           _at("annotations/authorization.k8s.io/decision"), "text"),
    Column("authz_reason", pa.string(), "annotation authorization.k8s.io/reason: which binding allowed it",
           _at("annotations/authorization.k8s.io/reason"), "text"),
    Column("request_uri", pa.string(), "requestURI: non-resource paths, exec commands, cluster-wide lists", _at("requestURI"), "text"),
    Column("arn", pa.string(), "user.extra.arn: the IAM principal behind an EKS identity", _at("user.extra.arn"), "first"),
    Column("session_name", pa.string(), "user.extra.sessionName", _at("user.extra.sessionName"), "first"),
    Column("access_key_id", pa.string(), "user.extra.accessKeyId: a new key for the same user is a lead", _at("user.extra.accessKeyId"), "first"),
    Column("sa_pod_name", pa.string(), "service-account token's bound pod (authentication.kubernetes.io/pod-name)",
           (("user", "extra", "authentication.kubernetes.io/pod-name"),), "first"),
    Column("truncated", pa.bool_(), "annotation audit.k8s.io/truncated: body was stripped for size", _at("annotations/audit.k8s.io/truncated"), "true"),
    _derived(_COMMAND_COLUMNS["exec_command"], _URI, "command"),
    Column("role_ref", pa.string(), "a binding's roleRef as Kind/name", _BODY),
    Column("subjects", pa.string(), "a binding's subjects as Kind:namespace/name, comma-joined", _BODY),
    Column("role_verbs", pa.string(), "verbs granted by a created/updated Role or ClusterRole, comma-joined", _BODY),
    Column("role_resources", pa.string(), "resources granted by a created/updated Role or ClusterRole, comma-joined", _BODY),
    Column("configmap_keys", pa.string(), "data key names of a written ConfigMap (values are never kept)", _BODY),
    Column("configmap_credentials", pa.bool_(), "a written ConfigMap's data looks like it holds credentials (values masked)", _BODY),
    Column("grants_masters", pa.bool_(), "a written aws-auth ConfigMap maps someone into system:masters", _BODY),
    Column("webhook_targets", pa.string(),
           "where a written admission webhook configuration sends objects: url:<host> or service:<namespace>/<name>, comma-joined", _BODY),
    Column("webhook_weakened", pa.bool_(),
           "a written webhook configuration leaves a webhook with no rules, or sets a validating webhook to failurePolicy Ignore", _BODY),
    Column("salvage", pa.string(),
           "why the event is incomplete when it was salvaged from a line that did not decode whole (SALVAGE_MARKERS), else null",
           read="record"),
    Column("cw_event_id", pa.string(), "CloudWatch Logs event id when read from CloudWatch/Firehose: which of an event's copies the archive keeps",
           read="record"),
    *(_derived(c, _URI, "command") for c in commands.COLUMNS if c.name != "exec_command"),
    *(_derived(c, _BODY, "body") for c in _BODY_COLUMNS),
)
# Fields read to decide whether a value is an audit event at all (kind Event, apiVersion audit.k8s.io/*).
GATE_FIELDS = ("kind", "apiVersion")
# The columns read from the event's envelope as it is (not its body, not its log record): what the block
# decoders (msgspec's and the C one) produce.
ENVELOPE_COLUMNS = tuple(c for c in EVENT_COLUMNS if c.read not in ("body", "record", "command"))
COMMAND_COLUMNS = tuple(c.name for c in EVENT_COLUMNS if c.read == "command")
# The subresources whose request URI features.commands decodes (exec/attach argv, what a proxy request reached).
COMMAND_SUBRESOURCES = ("exec", "attach", "proxy")
EVENT_SCHEMA = pa.schema([pa.field(c.name, c.type) for c in EVENT_COLUMNS])
COLUMN_NAMES = tuple(c.name for c in EVENT_COLUMNS)
_STRING_COLUMNS = frozenset(c.name for c in EVENT_COLUMNS if c.type == pa.string())
# What tells requests and events apart (docs/reliability.md, "Copies and reused audit IDs"). kube-apiserver takes the
# client's Audit-ID header as the auditID, so an auditID alone identifies nothing. A request is its auditID with what
# the server logs alike in each of its stages: when it received the request (its own clock, to the microsecond), the
# authenticated caller, the connection address and the request line. An event adds its stage, when the server logged
# it, the response code and the object. All are envelope columns, logged before any body: never a body fact or a
# column added later, so the copies of one event compare equal whichever release or reader archived them.
REQUEST_IDENTITY = ("audit_id", "received_time", "user", "source_ip", "verb", "request_uri")
EVENT_IDENTITY = REQUEST_IDENTITY + ("stage", "time", "code", "resource", "subresource", "namespace", "name", "api_group")

_CREDENTIAL_KEY = re.compile(r"aws_access_key_id|aws_secret|secret_?key|passw(or)?d|passphrase|token|api_?key|private_?key", re.I)
_CREDENTIAL_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")


# The ``salvage`` column: why an archived event is incomplete. A line that does not decode whole is read
# field by field (``pipeline.io.jsonscan.object_fields``) and archived with what could be read.
SALVAGE_MARKERS: dict[str, str] = {
    "truncated": "the line ends (or its structure breaks) before the event does, as CloudWatch cuts events over 256 KB "
                 "(`[Truncated...]`): every field after the cut is missing, usually the bodies, timestamps and annotations",
    "body_unreadable": "the requestObject of a resource whose body facts are read did not decode (kube-apiserver logs a "
                       "patch as the bytes the client sent: 1e400, a lone surrogate, nesting deeper than 1,024): its body facts are unknown",
    "value_unreadable": "another field normalisation reads did not decode (bytes that are not UTF-8, a lone surrogate); "
                        "kube-apiserver's encoder never writes one, so the line was altered after it was logged; the field is null",
}
# What makes a salvaged line an event: who (user; ``{}`` for a failed login, as always), did what (verb),
# in which request (auditID: the dedup key and what joins a request's stages), and when (its own
# timestamps or its log record's). kube-apiserver writes all four before anything a client controls
# except the request URI, so a line cut at 256 KB or holding an unreadable body always has them;
# a line without them is quarantined under its decode reason.
SALVAGE_REQUIRED = ("auditID", "verb", "user")
_TIME_FIELDS = ("stageTimestamp", "timestamp", "requestReceivedTimestamp", "p_event_time")
# The top-level fields ``normalize_event`` reads; a damaged field outside these (responseObject, the
# body of a resource no fact is read from, an unknown field) loses nothing the archive keeps.
READ_FIELDS = frozenset(GATE_FIELDS).union(path[0] for column in ENVELOPE_COLUMNS for path in column.source)


class SalvagedEvent(dict):
    """The top-level fields read from a line that did not decode whole, for ``normalize_event``.

    ``damaged`` names the fields whose value did not decode; ``cut`` says the line ended (or broke)
    before the event did; ``log_time`` is the time its log record carried (CloudWatch's timestamp of
    the log event, an export line's prefix), which dates an event cut before its own timestamps;
    ``reason`` is its quarantine reason if it is not usable; ``raw`` the line, for that sample.
    """

    __slots__ = ("damaged", "cut", "log_time", "reason", "raw")

    def __init__(self, fields: dict, damaged=(), cut: bool = False, log_time: str | None = None, reason: str = "invalid_json",
                 raw: bytes = b""):
        super().__init__(fields)
        self.damaged = tuple(damaged)
        self.cut = cut
        self.log_time = log_time
        self.reason = reason
        self.raw = raw

    def marker(self, resource: str | None) -> str | None:
        """The ``salvage`` marker (SALVAGE_MARKERS), or None when nothing the archive keeps was lost."""
        if self.cut:
            return "truncated"
        if ("requestObject" in self.damaged or "responseObject" in self.damaged) and resource in BODY_RESOURCES:
            return "body_unreadable"
        if any(name in READ_FIELDS for name in self.damaged):
            return "value_unreadable"
        return None

    def check_usable(self) -> None:
        """Raise BadEvent with the line's decode reason unless every field of SALVAGE_REQUIRED and a time were read."""
        missing = [name for name, kind in zip(SALVAGE_REQUIRED, (str, str, dict)) if not (isinstance(self.get(name), kind)
                                                                                         and (kind is dict or self[name]))]
        if not self.log_time and not any(isinstance(self.get(name), str) for name in _TIME_FIELDS):
            missing.append("a time")
        if missing:
            raise BadEvent(self.reason, "salvaged without " + ", ".join(missing))


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


_BINDINGS = ("clusterrolebindings", "rolebindings")
_ROLES = ("clusterroles", "roles")
_WEBHOOKS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
# Resources whose written object ``_request_facts`` and features.writes read; every other body is dropped unread.
BODY_RESOURCES = frozenset(
    writes.WORKLOADS + _BINDINGS + _ROLES + _WEBHOOKS + ("services", "certificatesigningrequests", "configmaps", "ingresses",
                                                         "selfsubjectaccessreviews")
)


def _request_facts(resource: str | None, name: str | None, obj: dict, row: dict) -> None:
    """Reduce a written object to the facts rules need beyond features.writes' (bindings, role verbs and resources,
    ConfigMaps, webhooks); never copy values of Secrets or ConfigMaps."""
    if resource in _BINDINGS:
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
    elif resource == "configmaps":
        data = obj.get("data")
        if isinstance(data, dict):
            row["configmap_keys"] = _joined(data.keys())
            row["configmap_credentials"] = any(
                _CREDENTIAL_KEY.search(str(k)) or (isinstance(v, str) and _CREDENTIAL_VALUE.search(v)) for k, v in data.items()
            )
            if name == "aws-auth":
                row["grants_masters"] = any(isinstance(v, str) and "system:masters" in v for v in data.values())
    elif resource in _WEBHOOKS:
        _webhook_facts(resource, obj, row)


def _webhook_facts(resource: str, obj: dict, row: dict) -> None:
    """Targets of an admission webhook configuration, and whether a write switches a webhook off.

    An attacker's webhook receives every matching object (secrets, pod specs) at an address of
    their choosing; neutering a policy webhook (no rules, fail open) lets what it blocked through.
    """
    hooks = obj.get("webhooks")
    if not isinstance(hooks, list):
        return
    hooks = [h for h in hooks if isinstance(h, dict)]
    targets = []
    for hook in hooks:
        client = hook.get("clientConfig")
        if not isinstance(client, dict):
            continue
        url, service = client.get("url"), client.get("service")
        if isinstance(url, str) and url:
            targets.append("url:" + _url_host(url))
        elif isinstance(service, dict):
            targets.append(f"service:{_text(service.get('namespace')) or ''}/{_text(service.get('name')) or ''}")
    row["webhook_targets"] = _joined(targets)
    row["webhook_weakened"] = any(
        hook.get("rules") == [] or (resource == "validatingwebhookconfigurations" and hook.get("failurePolicy") == "Ignore")
        for hook in hooks
    )


def _url_host(url: str) -> str:
    """Host of a URL, or the URL itself when it does not parse (an attacker may write anything)."""
    try:
        return urlsplit(url).hostname or url
    except ValueError:
        return url


def synthetic_audit_id(raw: dict) -> str:
    """A stable id for an event that lacks auditID (hand-written or re-exported events):
    a hash of its canonical JSON, so identical copies still deduplicate."""
    import hashlib

    import orjson

    try:
        text = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:  # nested deeper than orjson writes (254 levels; kube-apiserver logs deeper bodies as sent)
        text = canonical_json(raw)
    return "sha256-" + hashlib.sha256(text).hexdigest()[:32]


def canonical_json(value) -> bytes:
    """JSON text of a decoded value with sorted keys, built without recursion, so any depth a reader accepted works."""
    import orjson

    parts: list[bytes] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is bytes:  # a piece of syntax pushed below; decoded JSON never holds bytes
            parts.append(item)
        elif isinstance(item, dict):
            parts.append(b"{")
            stack.append(b"}")
            keys = sorted(map(str, item))
            for index in range(len(keys) - 1, -1, -1):
                stack += [item[keys[index]], orjson.dumps(keys[index]) + b":"] + ([b","] if index else [])
        elif isinstance(item, list):
            parts.append(b"[")
            stack.append(b"]")
            for index in range(len(item) - 1, -1, -1):
                stack += [item[index]] + ([b","] if index else [])
        else:
            parts.append(orjson.dumps(item, default=str))
    return b"".join(parts)


def normalize_event(raw, cw_event_id: str | None = None, default_time: str | None = None, repairs: dict | None = None) -> dict:
    """One raw audit event (already JSON-decoded) to a flat row; raises BadEvent with a reason.

    Tolerates what real pipelines deliver: ``code`` as a digit string and
    ``sourceIPs`` as a bare string are repaired; v1beta1 events (``timestamp``
    instead of ``stageTimestamp``) are read; unknown extra fields are ignored; an
    event without auditID gets a content-hash id. A failed authentication (401) carries
    ``"user": {}``: it is kept with no username (the source address still counts). A
    missing or null ``user`` is kept the same way and counted in ``repairs``.
    ``default_time`` stands in for a missing timestamp (used for hand-written rule test
    events; the archive passes none). A ``SalvagedEvent`` must hold SALVAGE_REQUIRED (else BadEvent
    with its decode reason), is dated by its log record when its own timestamps were lost, takes its
    objectRef from the request URI when that was lost, and is marked in ``salvage``.
    """
    if not isinstance(raw, dict):
        raise BadEvent("not_an_object", type(raw).__name__)
    api_version = raw.get("apiVersion")
    if raw.get("kind") not in ("Event", None) or (api_version is not None and not str(api_version).startswith("audit.k8s.io/")):
        raise BadEvent("not_an_audit_event", f"kind={raw.get('kind')!r} apiVersion={api_version!r}")
    salvaged = raw if isinstance(raw, SalvagedEvent) else None
    source = raw
    if salvaged is not None:
        salvaged.check_usable()
        default_time = salvaged.log_time or default_time
        if "objectRef" not in raw:
            source = {**raw, "objectRef": ref_from_uri(_text(raw.get("requestURI")))}
    if repairs is not None:
        if not isinstance(raw.get("user"), dict):
            repairs["user_missing"] = repairs.get("user_missing", 0) + 1
        if isinstance(raw.get("sourceIPs"), str):
            repairs["source_ips_as_string"] = repairs.get("source_ips_as_string", 0) + 1
        if isinstance(_dig(raw, ("responseStatus", "code")), str):
            repairs["code_as_string"] = repairs.get("code_as_string", 0) + 1
    row = {name: read(get(source)) for name, get, read in _LINE_PLAN}
    time = row["time"] or default_time
    if not isinstance(time, str):
        raise BadEvent("missing_timestamp")
    row["time"] = time
    if row["audit_id"] is None:
        row["audit_id"] = synthetic_audit_id(raw)
    row["salvage"] = salvaged.marker(row["resource"]) if salvaged is not None else None
    row["cw_event_id"] = cw_event_id
    request = raw.get("requestObject")
    if row["verb"] == "create" and isinstance(request, dict):
        _complete_ref(row, request)
    resource, subresource = row["resource"], row["subresource"]
    if subresource in COMMAND_SUBRESOURCES:
        row.update(commands.command_facts(row["request_uri"], request, subresource))
    if resource in BODY_RESOURCES and request is not None:
        # A write logs its request body with its response (RequestResponse level); without a request body there is
        # nothing written to judge, and the block decoders, which never read responseObject, agree.
        obj, body_columns = writes.effective_object(row["verb"], request, raw.get("responseObject"), row["code"])
        row.update(body_columns)
        if isinstance(obj, dict):
            _request_facts(resource, row["name"], obj, row)
            row.update(writes.body_facts(resource, subresource, obj, row["user"], row["groups"]))
    return row


def _complete_ref(row: dict, request: dict) -> None:
    """objectRef's namespace and name from a create's request body when the event lacks them, as kube-apiserver
    completes the audit ref from the request object's metadata (k8s.io/apiserver audit ``LogRequestObject``): an
    exporter or an older policy may log a create with the body but not the name, and incidents group by object.
    A generateName create has no name until it is stored, so it stays null here as in kube-apiserver's own record."""
    metadata = request.get("metadata")
    if not isinstance(metadata, dict):
        return
    for column, key in (("namespace", "namespace"), ("name", "name")):
        value = metadata.get(key)
        if not row[column] and isinstance(value, str) and value:
            row[column] = value


def _dig(value, path: tuple[str, ...]):
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _line_getter(paths: tuple[tuple[str, ...], ...]):
    """Reads a column's source from a raw event: the value at its path (None where a step is not an object), or for
    several paths (time's, exec_command's) the tuple of their values. The short paths, nearly all, get a direct lookup."""
    if len(paths) > 1:
        getters = [_line_getter((path,)) for path in paths]
        return lambda raw: tuple([get(raw) for get in getters])
    path = paths[0]
    if len(path) == 1:
        return lambda raw: raw.get(path[0])
    if len(path) == 2:
        outer, inner = path
        return lambda raw: value.get(inner) if isinstance(value := raw.get(outer), dict) else None
    if len(path) == 3:
        outer, middle, inner = path
        return lambda raw: (value.get(inner) if isinstance(value := raw.get(outer), dict) and isinstance(value := value.get(middle), dict)
                            else None)
    return lambda raw: _dig(raw, path)


def _first_truthy(values):
    return next((v for v in values if v), None)


def _line_ips(value) -> list[str]:
    ips = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [ip for ip in ips if isinstance(ip, str) and ip]


def _line_code(value) -> int | None:
    if isinstance(value, str):
        return int(value) if value.isdigit() else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1000 else None


# The per-line path's reader of each READS kind: the value at the column's source to the column's value.
_LINE_READS = {
    "time": _first_truthy,
    "id": lambda value: value if isinstance(value, str) and value else None,
    "stage": lambda value: _text(value) or "ResponseComplete",
    "text": _text,
    "first": lambda value: _first(value),  # defined below
    "strings": lambda value: [g for g in value if isinstance(g, str)] if isinstance(value, list) else [],
    "code": _line_code,
    "true": lambda value: value == "true",
    "last_ip": lambda value: (_line_ips(value) or [None])[-1],
    "claimed_ip": lambda value: ips[0] if len(ips := _line_ips(value)) > 1 else None,
    "record": lambda value: None,
}


_NAMESPACE_SUBRESOURCES = ("status", "finalize")


def ref_from_uri(uri: str | None) -> dict:
    """objectRef as kube-apiserver derives it from the request path (``RequestInfo``), for a salvaged
    event cut before its own objectRef (a long user agent comes first): a write to aws-auth stays one."""
    try:
        parts = [unquote(part) for part in urlsplit(uri or "").path.split("/") if part]
    except ValueError:
        return {}
    if parts[:1] == ["api"] and len(parts) > 2:
        ref, rest = {}, parts[2:]
    elif parts[:1] == ["apis"] and len(parts) > 3:
        ref, rest = {"apiGroup": parts[1]}, parts[3:]
    else:
        return {}
    if rest[0] == "namespaces" and len(rest) > 1:
        ref["namespace"] = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    ref.update(zip(("resource", "name", "subresource"), rest))
    return ref


def _first(value) -> str | None:
    if isinstance(value, list):
        return _text(value[0]) if value else None
    return _text(value)


# (name, source getter, reader) of each column the per-line path reads itself; command and body columns are filled
# by normalize_event from features.commands and features.writes.
_LINE_PLAN = tuple((column.name, _line_getter(column.source) if column.source else lambda raw: None, _LINE_READS[column.read])
                   for column in EVENT_COLUMNS if column.read not in ("body", "command"))


# Normalised rows before their timestamps are parsed: EVENT_SCHEMA with both times still text.
ROW_SCHEMA = pa.schema([pa.field(c.name, pa.string() if c.type == TIMESTAMP else c.type) for c in EVENT_COLUMNS])


class EventTableBuilder:
    """Accumulates normalised rows (dicts from ``normalize_event``, or tables of ROW_SCHEMA from
    ``normalize_json_lines``) in order and emits Arrow tables of EVENT_SCHEMA.

    Timestamps are parsed in one vectorised Arrow cast per batch; a row whose
    timestamp does not parse is reported back (index, reason) for quarantine.
    """

    def __init__(self):
        self._columns: dict[str, list] = {name: [] for name in COLUMN_NAMES}
        self._pending = 0
        self._parts: list[pa.Table] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, row: dict) -> None:
        get = row.get
        for name, values in self._columns.items():
            values.append(get(name))
        self._pending += 1
        self._size += 1

    def extend(self, table: pa.Table) -> None:
        """Add rows already normalised column-wise (ROW_SCHEMA), after those appended so far."""
        self._flush()
        self._parts.append(table)
        self._size += len(table)

    def _flush(self) -> None:
        if self._pending:
            self._parts.append(_columns_table(self._columns))
            self._columns = {name: [] for name in COLUMN_NAMES}
            self._pending = 0

    def build(self) -> tuple[pa.Table, list[int]]:
        """The table of good rows and the indices (in append order) of rows with bad timestamps."""
        self._flush()
        rows = pa.concat_tables(self._parts) if self._parts else ROW_SCHEMA.empty_table()
        times, bad = _parse_times(rows["time"])
        received, _ = _parse_times(rows["received_time"], allow_null=True)
        table = rows.set_column(0, EVENT_SCHEMA.field(0), times).set_column(1, EVENT_SCHEMA.field(1), received).combine_chunks()
        if bad:
            keep = np.ones(len(table), dtype=bool)
            keep[bad] = False
            table = table.filter(keep)
        self.__init__()
        return table, bad


def rows_table(rows: list[dict]) -> pa.Table:
    """Rows of ``normalize_event`` as a table of ROW_SCHEMA."""
    return _columns_table({name: [row.get(name) for row in rows] for name in COLUMN_NAMES})


def _columns_table(columns: dict[str, list]) -> pa.Table:
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in ROW_SCHEMA], schema=ROW_SCHEMA)


def _parse_times(strings: pa.ChunkedArray, allow_null: bool = False) -> tuple[pa.Array, list[int]]:
    try:
        return pc.cast(strings, TIMESTAMP), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    parsed = []
    bad = []
    for index, value in enumerate(strings.to_pylist()):
        moment = parse_time(value) if value is not None else None
        parsed.append(moment)
        if moment is None and not allow_null:
            bad.append(index)
    return pa.array(parsed, type=TIMESTAMP), bad


# The type each READS kind accepts on the block path, as msgspec decodes it: only the fields normalisation
# reads are decoded, each typed as EKS writes it; unknown fields (request and response bodies above all) are
# skipped without building Python objects, and a field of any other JSON type is a decode error, so that line
# takes the per-line path. The C decoder accepts the same types (tests/features/test_event_schema.py).
_BLOCK_TYPES = {
    "time": str | None, "id": str | None, "stage": str | None, "text": str | None, "true": str | None,
    "first": list[str | None] | str | None, "strings": list[str] | None, "code": int | None,
    "last_ip": list[str] | None, "claimed_ip": list[str] | None,
}


def _block_fields() -> dict:
    """The tree of event fields the block path decodes ({key: subtree or type}), from EVENT_COLUMNS and GATE_FIELDS."""
    tree: dict = {name: str | None for name in GATE_FIELDS}
    for column in ENVELOPE_COLUMNS:
        for path in column.source:
            node = tree
            for key in path[:-1]:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    raise TypeError(f"{column.name}: {'.'.join(path)} passes through a field read as a value")
            kind = _BLOCK_TYPES[column.read]
            if node.setdefault(path[-1], kind) != kind:
                raise TypeError(f"{column.name}: {'.'.join(path)} is read as two different types")
    return tree


def _attribute(key: str) -> str:
    return re.sub(r"\W", "_", key)


def _struct(name: str, tree: dict):
    """A msgspec Struct decoding exactly ``tree``'s fields (absent or null: None)."""
    fields = []
    for key, kind in tree.items():
        kind = _struct(name + "_" + _attribute(key), kind) | None if isinstance(kind, dict) else kind
        fields.append((_attribute(key), kind, None))
    return msgspec.defstruct(name, fields, rename={_attribute(key): key for key in tree}, gc=False)


# The columns the msgspec block loop in normalize_json_lines fills, in the order it names them.
_BLOCK_ORDER = ("time", "received_time", "audit_id", "stage", "level", "user", "groups", "impersonated_user", "source_ip",
                "claimed_ip", "user_agent", "verb", "resource", "subresource", "namespace", "name", "api_group", "code", "decision",
                "authz_reason", "request_uri", "arn", "session_name", "access_key_id", "sa_pod_name", "truncated")
if set(_BLOCK_ORDER) != {column.name for column in ENVELOPE_COLUMNS}:
    raise ImportError("features.events.normalize_json_lines does not read every ENVELOPE_COLUMNS column: "
                      f"add {sorted({c.name for c in ENVELOPE_COLUMNS} ^ set(_BLOCK_ORDER))} to its loop and _BLOCK_ORDER")
if msgspec is not None:
    _Event = _struct("_Event", {**_block_fields(), "requestObject": msgspec.Raw})
    _DECODE = msgspec.json.Decoder(_Event).decode
    _DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
else:  # pragma: no cover - msgspec is a declared dependency; without it every line takes the per-line path
    _DECODE, _DECODE_ERRORS = None, ()


NATIVE_SOURCES = ("fastnorm.c", "yyjson.c")  # in features/_native/, in the order setup.py digests them


def native_build_matches(module, sources: list[bytes] | None) -> bool:
    """Whether ``module`` (features._fastnorm) was compiled from ``sources`` (the NATIVE_SOURCES' bytes): true where
    there are none to compare (an installed wheel) or the module carries no digest (a build outside setup.py, such as
    ``make fuzz``'s). pipeline.stages.archive refuses a checkout's stale build with it."""
    built = getattr(module, "SOURCE_SHA256", "")
    return not built or sources is None or hashlib.sha256(b"".join(sources)).hexdigest() == built


try:
    from features import _fastnorm
except ImportError:  # not compiled (see setup.py): the msgspec path below gives the same rows
    _fastnorm = None
# AUDITSIFT_NO_NATIVE=1 leaves the compiled decoder unused, so the two decoders can be compared end to end
# (docs/native-decoder.md); a developer switch, not configuration: both give the same rows.
if os.environ.get("AUDITSIFT_NO_NATIVE") == "1":
    _fastnorm = None
_BODY_RESOURCE_NAMES = tuple(sorted(name.encode() for name in BODY_RESOURCES))


def normalize_json_lines(lines: list[bytes], cw_ids: list | None = None, repairs: dict | None = None) -> tuple[pa.Table, np.ndarray]:
    """``normalize_event`` over a block of JSON texts (one event each), decoding only the fields it reads.

    Returns the rows it normalised (ROW_SCHEMA, in line order) and their positions in
    ``lines``. Every other line must take the per-line path (``orjson.loads`` +
    ``normalize_event``), which decides it exactly as it always has: a line that does not
    decode as one object or is not UTF-8 throughout (the decoder does not check the fields it
    skips), a field of another JSON type than EKS writes (string codes, a
    bare-string ``sourceIPs``, null list entries), an object that is not an audit event, one
    without auditID or timestamp, and every event whose request body rules read (writes to
    workloads, bindings, roles, services, CSRs, ConfigMaps, Ingresses). Request bodies are
    never decoded here, so Secret data cannot leak.

    The compiled ``features._fastnorm`` (yyjson, C) does this work when it is built; otherwise
    the msgspec path below does, accepting the same lines and giving the same rows (the block-path
    tests in tests/test_fast_paths.py run with each).
    """
    if _fastnorm is not None and type(lines) is list:
        return _native_rows(lines, cw_ids, repairs)
    # Hand-written for speed (a generic reader per column costs twice the time); tests/features/test_event_schema.py
    # checks that it fills every ENVELOPE_COLUMNS column from its declared source.
    columns: dict[str, list] = {column.name: [] for column in ENVELOPE_COLUMNS}
    (times, received, audit_ids, stages, levels, users, groups_, impersonated_users, source_ips, claimed_ips, agents, verbs,
     resources, subresources, namespaces, names, api_groups, codes, decisions, reasons, uris, arns, sessions, keys, pods,
     truncated_) = (columns[name] for name in _BLOCK_ORDER)
    positions = []
    missing_user = 0
    decode = _DECODE
    for position, line in enumerate(lines if decode is not None else ()):
        try:
            event = decode(line)
            if not line.isascii():
                line.decode("utf-8")
        except _DECODE_ERRORS:
            continue
        kind, api_version, audit_id = event.kind, event.apiVersion, event.auditID
        time = event.stageTimestamp or event.timestamp or event.requestReceivedTimestamp or event.p_event_time
        ref = event.objectRef
        resource = ref.resource if ref is not None else None
        if ((kind is not None and kind != "Event") or (api_version is not None and not api_version.startswith("audit.k8s.io/"))
                or not time or not audit_id
                or (event.requestObject is not None and (resource in BODY_RESOURCES or (event.verb == "create" and (ref is None or not ref.name))))):
            continue
        positions.append(position)
        times.append(time)
        received.append(event.requestReceivedTimestamp)
        audit_ids.append(audit_id)
        stages.append(event.stage or "ResponseComplete")
        levels.append(event.level)
        user = event.user
        extra = None
        if user is None:
            missing_user += 1
            users.append(None)
            groups_.append([])
        else:
            users.append(user.username)
            groups_.append(user.groups or [])
            extra = user.extra
        if extra is None:
            arns.append(None)
            sessions.append(None)
            keys.append(None)
            pods.append(None)
        else:
            value = extra.arn
            arns.append((value[0] if value else None) if type(value) is list else value)
            value = extra.sessionName
            sessions.append((value[0] if value else None) if type(value) is list else value)
            value = extra.accessKeyId
            keys.append((value[0] if value else None) if type(value) is list else value)
            value = extra.authentication_kubernetes_io_pod_name
            pods.append((value[0] if value else None) if type(value) is list else value)
        impersonated = event.impersonatedUser
        impersonated_users.append(impersonated.username if impersonated is not None else None)
        ips = event.sourceIPs or ()
        if "" in ips:
            ips = [ip for ip in ips if ip]
        source_ips.append(ips[-1] if ips else None)
        claimed_ips.append(ips[0] if len(ips) > 1 else None)
        agents.append(event.userAgent)
        verbs.append(event.verb)
        uri = event.requestURI
        uris.append(uri)
        if ref is None:
            resources.append(None)
            subresources.append(None)
            namespaces.append(None)
            names.append(None)
            api_groups.append(None)
        else:
            resources.append(resource)
            subresources.append(ref.subresource)
            namespaces.append(ref.namespace)
            names.append(ref.name)
            api_groups.append(ref.apiGroup)
        code = event.responseStatus.code if event.responseStatus is not None else None
        codes.append(code if code is not None and 0 <= code < 1000 else None)
        annotations = event.annotations
        if annotations is None:
            decisions.append(None)
            reasons.append(None)
            truncated_.append(False)
        else:
            decisions.append(annotations.authorization_k8s_io_decision)
            reasons.append(annotations.authorization_k8s_io_reason)
            truncated_.append(annotations.audit_k8s_io_truncated == "true")
    if missing_user and repairs is not None:
        repairs["user_missing"] = repairs.get("user_missing", 0) + missing_user
    columns.update(_command_columns(pa.array(subresources, type=pa.string()), pa.array(uris, type=pa.string()), len(positions)))
    arrays = []
    for field in ROW_SCHEMA:
        if field.name in columns:
            arrays.append(pa.array(columns[field.name], type=field.type))
        elif field.name == "cw_event_id" and cw_ids is not None:
            arrays.append(pa.array([cw_ids[i] for i in positions], type=field.type))
        else:
            arrays.append(pa.nulls(len(positions), field.type))
    return pa.Table.from_arrays(arrays, schema=ROW_SCHEMA), np.asarray(positions, dtype=np.int64)


def _native_rows(lines: list[bytes], cw_ids: list | None, repairs: dict | None) -> tuple[pa.Table, np.ndarray]:
    """``normalize_json_lines`` through ``features._fastnorm``: its column buffers wrapped as Arrow arrays
    without a copy; exec commands (rare, and parsed with urllib) are filled in here."""
    positions, missing_user, strings, groups, code, truncated = _fastnorm.normalize(lines, _BODY_RESOURCE_NAMES)
    positions = np.frombuffer(positions, dtype=np.int64)
    count = len(positions)
    if missing_user and repairs is not None:
        repairs["user_missing"] = repairs.get("user_missing", 0) + missing_user
    columns = {name: _string_array(count, *buffers) for name, buffers in strings.items()}
    list_offsets, group_offsets, group_data = groups
    group_names = pa.Array.from_buffers(pa.string(), len(group_offsets) // 4 - 1,
                                        [None, pa.py_buffer(group_offsets), pa.py_buffer(group_data)])
    columns["groups"] = pa.ListArray.from_arrays(pa.Array.from_buffers(pa.int32(), count + 1, [None, pa.py_buffer(list_offsets)]),
                                                 group_names)
    validity, values, nulls = code
    columns["code"] = pa.Array.from_buffers(pa.int32(), count, [pa.py_buffer(validity) if nulls else None, pa.py_buffer(values)],
                                            null_count=nulls)
    columns["truncated"] = pa.array(np.frombuffer(truncated, dtype=np.bool_))
    columns.update(_command_columns(columns["subresource"], columns["request_uri"], count))
    if cw_ids is not None:
        columns["cw_event_id"] = pa.array([cw_ids[i] for i in positions.tolist()], type=pa.string())
    # Arrays made of the C decoder's buffers are checked in full (offsets in bounds and rising, UTF-8) before
    # anything reads them: a decoder bug stops the run here in one line instead of reading past a buffer.
    for name, array in columns.items():
        try:
            array.validate(full=True)
        except pa.ArrowInvalid as error:
            raise RuntimeError(f"features._fastnorm built an invalid {name} column ({error}); "
                               "AUDITSIFT_NO_NATIVE=1 archives with the msgspec decoder meanwhile") from error
    arrays = [columns[field.name] if field.name in columns else pa.nulls(count, field.type) for field in ROW_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=ROW_SCHEMA), positions


def _command_columns(subresources: pa.Array, uris: pa.Array, count: int) -> dict[str, pa.Array]:
    """COMMAND_COLUMNS of a block, decoded (features.commands) only on its rare exec, attach and proxy rows,
    each distinct URI once: a scraper reading nodes/{node}/proxy/metrics sends the same URI all day."""
    rows = np.flatnonzero(pc.is_in(subresources, value_set=pa.array(COMMAND_SUBRESOURCES)).to_numpy(zero_copy_only=False))
    if not len(rows):
        return {name: pa.nulls(count, pa.string()) for name in COMMAND_COLUMNS}
    encoded = uris.take(pa.array(rows)).dictionary_encode()
    decoded = commands.command_columns(encoded.dictionary.to_pylist())
    index = np.zeros(count, dtype=np.int32)
    absent = np.ones(count, dtype=np.bool_)
    index[rows] = encoded.indices.fill_null(0).to_numpy()
    absent[rows] = encoded.indices.is_null().to_numpy(zero_copy_only=False)
    at = pa.array(index, mask=absent)
    return {name: pa.array(decoded[name], type=pa.string()).take(at) for name in COMMAND_COLUMNS}


def _string_array(count: int, validity: bytes, offsets: bytes, data: bytes, nulls: int) -> pa.Array:
    return pa.Array.from_buffers(pa.string(), count, [pa.py_buffer(validity) if nulls else None, pa.py_buffer(offsets),
                                                      pa.py_buffer(data)], null_count=nulls)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: str) -> datetime | None:
    """Parse the timestamp spellings seen in audit exports; zone-less times are UTC. None if unparseable."""
    try:
        moment = datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def conform_events(table: pa.Table) -> pa.Table:
    """An archived hour written by an older release, as EVENT_SCHEMA: columns added since are null.

    New body facts are added as columns over time; an archive must stay readable without a rewrite."""
    if table.schema.equals(EVENT_SCHEMA):
        return table
    columns = [table[c.name] if c.name in table.column_names else pa.nulls(len(table), c.type) for c in EVENT_COLUMNS]
    return pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)
