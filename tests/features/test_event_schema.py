"""One event schema: EVENT_COLUMNS declares each column's source and how it is read; the per-line
normaliser, the msgspec block decoder and the C decoder must all read exactly that.

The C decoder (features/_native/fastnorm.c) cannot be generated at import, so it is checked here:
its column list and order against the declaration, and every declared source planted with a value
of its own and read back through all three paths."""
from __future__ import annotations

import json
from datetime import timedelta

import pyarrow as pa
import pytest

import features.events as events_module
from features.events import (
    ENVELOPE_COLUMNS,
    EVENT_COLUMNS,
    GATE_FIELDS,
    READ_FIELDS,
    READS,
    ROW_SCHEMA,
    normalize_event,
    normalize_json_lines,
    rows_table,
)
from tests.factory import T0, event

# The C decoder's columns that are not strings, with the type each becomes (features.events._native_rows).
NATIVE_TYPED = {"groups": pa.list_(pa.string()), "code": pa.int32(), "truncated": pa.bool_()}
# Filled in Python from the C decoder's request_uri and subresource (urllib parses the command).
NATIVE_IN_PYTHON = {"exec_command"}


def native():
    if events_module._fastnorm is None:
        pytest.fail("features._fastnorm is not built: install with a C compiler (setup.py)")
    return events_module._fastnorm


def test_every_column_declares_how_it_is_read():
    for column in EVENT_COLUMNS:
        assert column.read in READS, column.name
        assert len(column.why) > 10, column.name
        assert column.source or column.read == "record", f"{column.name} reads nothing from the event"
    assert READ_FIELDS == {path[0] for c in ENVELOPE_COLUMNS for path in c.source} | set(GATE_FIELDS)


def test_native_decoder_returns_the_declared_columns_in_order():
    """fastnorm.c's STRING_COLUMNS are the declared string columns (times still text), in EVENT_COLUMNS order;
    its other outputs are the declared typed columns; nothing declared is left out."""
    _, _, strings, *_ = native().normalize([], ())
    declared = [c.name for c in ENVELOPE_COLUMNS if c.name not in NATIVE_IN_PYTHON and ROW_SCHEMA.field(c.name).type == pa.string()]
    assert list(strings) == declared
    typed = {c.name: ROW_SCHEMA.field(c.name).type for c in ENVELOPE_COLUMNS
             if c.name not in NATIVE_IN_PYTHON and ROW_SCHEMA.field(c.name).type != pa.string()}
    assert typed == NATIVE_TYPED


# A value of its own for each field the schema reads, and what each READS kind makes of it (written out
# here, not taken from features.events, so a reader that drifts fails).
PLANTED = {
    ("stageTimestamp",): "2026-11-01T09:00:01.000001Z", ("timestamp",): "2026-11-01T09:00:02.000002Z",
    ("requestReceivedTimestamp",): "2026-11-01T09:00:03.000003Z", ("p_event_time",): "2026-11-01T09:00:04.000004Z",
    ("sourceIPs",): ["198.51.100.23", "", "10.0.7.7"], ("user", "groups"): ["system:authenticated", "ops-team"],
    ("responseStatus", "code"): 403, ("annotations", "audit.k8s.io/truncated"): "true",
    ("requestURI",): "/api/v1/namespaces/web/pods/api-0/exec?command=sh&command=-c&command=id&container=app",
    ("objectRef", "subresource"): "exec",
}
EXPECTED_BY_KIND = {
    "last_ip": "10.0.7.7", "claimed_ip": "198.51.100.23", "strings": ["system:authenticated", "ops-team"], "code": 403,
    "true": True, "exec_command": "sh -c id",
}


def planted_event(time_source: int = 0) -> tuple[dict, dict]:
    """(raw event, expected envelope row): every declared source holds a distinct value; of time's sources
    only the one at ``time_source`` is set."""
    raw: dict = {"kind": "Event", "apiVersion": "audit.k8s.io/v1"}
    expected = {}
    for column in ENVELOPE_COLUMNS:
        paths = column.source[time_source:time_source + 1] if column.read == "time" else column.source
        for path in paths:
            value = PLANTED.get(path, f"planted-{'.'.join(path)}")
            if column.read == "first":
                value = [value, "second-value"]
            node = raw
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        first = PLANTED.get(paths[0], f"planted-{'.'.join(paths[0])}")
        expected[column.name] = EXPECTED_BY_KIND.get(column.read, first)
    # time is the first of its sources present: requestReceivedTimestamp is also received_time's source
    time = next(c for c in ENVELOPE_COLUMNS if c.read == "time")
    expected[time.name] = next(raw[path[0]] for path in time.source if path[0] in raw)
    return raw, expected


@pytest.mark.parametrize("time_source", range(4))
def test_each_declared_source_reaches_its_column_on_every_path(monkeypatch, time_source):
    raw, expected = planted_event(time_source)
    line = json.dumps(raw).encode()
    per_line = rows_table([normalize_event(raw)])
    assert {name: per_line[name][0].as_py() for name in expected} == expected
    native_rows, positions = normalize_json_lines([line])
    assert positions.tolist() == [0] and native_rows.equals(per_line)
    monkeypatch.setattr(events_module, "_fastnorm", None)
    msgspec_rows, positions = normalize_json_lines([line])
    assert positions.tolist() == [0] and msgspec_rows.equals(per_line)


def test_realistic_events_decode_alike_on_every_path(monkeypatch):
    items = [event(T0 + timedelta(seconds=i), audit_id=f"r-{i}", **override) for i, override in enumerate([
        {}, {"verb": "get", "objectRef": {"resource": "secrets", "namespace": "kube-system", "name": "aws-creds"}},
        {"user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]}, "responseStatus": {"code": 401},
         "annotations": {"authorization.k8s.io/decision": "forbid"}},
        {"sourceIPs": ["203.0.113.50", "10.0.1.9"], "userAgent": "curl/8.4.0", "impersonatedUser": {"username": "system:admin"}},
        {"verb": "create", "objectRef": {"resource": "pods", "subresource": "exec", "namespace": "web", "name": "api-0"},
         "requestURI": "/api/v1/namespaces/web/pods/api-0/exec?command=cat&command=%2Fetc%2Fshadow", "stage": "ResponseStarted",
         "responseStatus": {"code": 101}},
        {"user": {"username": "system:serviceaccount:web:api", "extra": {
            "authentication.kubernetes.io/pod-name": ["api-0"], "authentication.kubernetes.io/pod-uid": ["u"]}}},
    ])]
    lines = [json.dumps(item).encode() for item in items]
    per_line = rows_table([normalize_event(item) for item in items])
    native_rows, _ = normalize_json_lines(lines)
    monkeypatch.setattr(events_module, "_fastnorm", None)
    msgspec_rows, _ = normalize_json_lines(lines)
    assert native_rows.equals(per_line) and msgspec_rows.equals(per_line)
    assert per_line["exec_command"][4].as_py() == "cat /etc/shadow"
    assert per_line["sa_pod_name"][5].as_py() == "api-0"
