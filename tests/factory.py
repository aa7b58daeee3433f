"""Realistic EKS audit events for tests: a base event shaped like EKS's, overridden per test."""
from __future__ import annotations

import copy
import gzip
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

SHARED_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eks-audit-events"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)

BASE_EVENT = {
    "kind": "Event",
    "apiVersion": "audit.k8s.io/v1",
    "level": "Metadata",
    "auditID": "00000000-0000-0000-0000-000000000000",
    "stage": "ResponseComplete",
    "requestURI": "/api/v1/namespaces/web/pods",
    "verb": "list",
    "user": {
        "username": "alice@corp.example",
        "uid": "aws-iam-authenticator:111122223333:AROAEXAMPLE",
        "groups": ["system:authenticated", "engineers"],
        "extra": {
            "accessKeyId": ["ASIAEXAMPLE0000ALICE"],
            "arn": ["arn:aws:sts::111122223333:assumed-role/EngineerRole/alice"],
            "canonicalArn": ["arn:aws:iam::111122223333:role/EngineerRole"],
            "principalId": ["AROAEXAMPLE"],
            "sessionName": ["alice"],
        },
    },
    "sourceIPs": ["10.0.12.34"],
    "userAgent": "kubectl/v1.29.2 (darwin/arm64) kubernetes/4b8e819",
    "objectRef": {"resource": "pods", "namespace": "web", "apiVersion": "v1"},
    "responseStatus": {"metadata": {}, "code": 200},
    "requestReceivedTimestamp": "2026-11-01T09:00:00.000000Z",
    "stageTimestamp": "2026-11-01T09:00:00.004000Z",
    "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": "EKS Access Policy: allowed"},
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("requestObject", "objectRef", "user"):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def event(at: datetime | None = None, audit_id: str | None = None, **override) -> dict:
    """One audit event at ``at`` (default T0) with fields replaced by ``override``."""
    moment = at or T0
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fields = {"auditID": audit_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{stamp}-{json.dumps(override, sort_keys=True)}")),
              "requestReceivedTimestamp": stamp, "stageTimestamp": stamp}
    return merge(BASE_EVENT, {**fields, **override})


def events(n: int, start: datetime = T0, step: timedelta = timedelta(seconds=30), **override) -> list[dict]:
    return [event(start + i * step, audit_id=f"evt-{start:%H%M}-{i:06d}", **override) for i in range(n)]


def write_jsonl(path: Path, items: list, gz: bool = False) -> Path:
    data = "".join((json.dumps(i) if not isinstance(i, str) else i) + "\n" for i in items).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def envelope(items: list[dict], stream: str = "kube-apiserver-audit-0123abcd", group: str = "/aws/eks/demo/cluster",
             first_id: int = 1) -> dict:
    """A CloudWatch Logs subscription DATA_MESSAGE envelope, as Firehose delivers it."""
    return {
        "messageType": "DATA_MESSAGE", "owner": "111122223333", "logGroup": group, "logStream": stream,
        "subscriptionFilters": ["audit-to-firehose"],
        "logEvents": [
            {"id": f"3{first_id + i:055d}", "timestamp": 1_790_000_000_000 + i,
             "message": i_item if isinstance(i_item, str) else json.dumps(i_item)}
            for i, i_item in enumerate(items)
        ],
    }


CONTROL_MESSAGE = {"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "", "logStream": "",
                   "subscriptionFilters": [], "logEvents": [{"id": "", "timestamp": 1_790_000_000_000,
                                                              "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}


# kube-apiserver's audit Event struct in field order: it writes every event this way.
GO_FIELD_ORDER = ("kind", "apiVersion", "level", "auditID", "stage", "requestURI", "verb", "user", "impersonatedUser", "sourceIPs",
                  "userAgent", "objectRef", "responseStatus", "requestObject", "responseObject", "requestReceivedTimestamp",
                  "stageTimestamp", "annotations")


def apiserver_line(item: dict, request_object: bytes | None = None) -> bytes:
    """``item`` as kube-apiserver writes it: compact, fields in Go's order, and ``request_object`` (the raw
    bytes a client sent with a patch, logged as they are: Go accepts 1e400, lone surrogates and deep
    nesting that orjson refuses) as its requestObject."""
    parts = []
    for key in GO_FIELD_ORDER:
        if key == "requestObject" and request_object is not None:
            parts.append(b'"requestObject":' + request_object)
        elif key in item:
            parts.append(json.dumps(key).encode() + b":" + json.dumps(item[key], separators=(",", ":")).encode())
    return b"{" + b",".join(parts) + b"}"
