"""features.writes: the object a write produced (response, request, JSON patch) and the facts rules judge on it."""
from __future__ import annotations

import copy

import pytest

from features.writes import (
    COLUMN_NAMES,
    DANGEROUS_CAPABILITIES,
    GRANTS,
    PATCH_ISSUES,
    REPLACES_EVENT_COLUMNS,
    apply_json_patch,
    body_facts,
    effective_object,
    pod_spec_facts,
    role_facts,
    service_facts,
)
from tests.factory import event

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "checkout-api", "namespace": "checkout", "annotations": {}},
    "spec": {"replicas": 2, "template": {
        "metadata": {"labels": {"app": "checkout-api"}},
        "spec": {"serviceAccountName": "checkout", "containers": [{"name": "api", "image": "111122223333.dkr.ecr.us-east-1.amazonaws.com/checkout:1.4.2",
                                                                    "ports": [{"containerPort": 8080}]}]},
    }},
}


def write_event(verb: str, resource: str, name: str, namespace: str | None, request_object, response_object=None, code: int = 200,
                subresource: str | None = None, group: str = "apps", user: str = "eng:bob") -> dict:
    ref = {"resource": resource, "name": name, "apiGroup": group, "apiVersion": "v1"}
    if namespace:
        ref["namespace"] = namespace
    if subresource:
        ref["subresource"] = subresource
    override = {"verb": verb, "level": "RequestResponse", "objectRef": ref, "requestObject": request_object,
                "responseStatus": {"code": code}, "user": {"username": user, "groups": ["system:authenticated"]}}
    if response_object is not None:
        override["responseObject"] = response_object
    return event(**override)


def facts_of(raw: dict) -> dict:
    """What the lead's wiring computes for an event: the effective object, then the body facts."""
    ref = raw["objectRef"]
    obj, source = effective_object(raw["verb"], raw.get("requestObject"), raw.get("responseObject"), raw["responseStatus"]["code"])
    return {**source, **body_facts(ref["resource"], ref.get("subresource"), obj, raw["user"]["username"], raw["user"]["groups"])}


def stored(deployment: dict, **spec_changes) -> dict:
    out = copy.deepcopy(deployment)
    out["spec"]["template"]["spec"].update(spec_changes)
    return out


# --------------------------------------------------------------------------- the effective object


def test_json_patch_making_a_deployment_privileged_with_host_root_is_read():
    """kubectl patch --type=json: the list body today's extractor drops."""
    patch = [
        {"op": "add", "path": "/spec/template/spec/containers/0/securityContext", "value": {"privileged": True}},
        {"op": "add", "path": "/spec/template/spec/volumes", "value": [{"name": "host", "hostPath": {"path": "/"}}]},
        {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-", "value": {"name": "host", "mountPath": "/host"}},
    ]
    facts = facts_of(write_event("patch", "deployments", "checkout-api", "checkout", patch))
    assert facts["write_body_source"] == "json_patch" and facts["write_body_issues"] is None
    assert facts["pod_privileged"] is True
    assert facts["pod_sensitive_host_paths"] == "/"
    assert facts["pod_privileged_containers"] == "containers/"


def test_response_object_is_preferred_whatever_the_patch_style():
    stored_object = stored(DEPLOYMENT, hostNetwork=True)
    merge_patch = {"spec": {"template": {"spec": {"hostNetwork": True}}}}
    facts = facts_of(write_event("patch", "deployments", "checkout-api", "checkout", merge_patch, response_object=stored_object))
    assert facts["write_body_source"] == "response"
    assert (facts["pod_host_namespaces"], facts["pod_service_account"], facts["pod_images"]) == (
        "hostNetwork", "checkout", "111122223333.dkr.ecr.us-east-1.amazonaws.com/checkout:1.4.2")


def test_failed_write_or_status_response_falls_back_to_the_request():
    request = stored(DEPLOYMENT, hostPID=True)
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422}
    assert facts_of(write_event("create", "deployments", "x", "web", request, response_object=status, code=422))["write_body_source"] == "request"
    assert facts_of(write_event("create", "deployments", "x", "web", request, response_object=stored(DEPLOYMENT), code=409))[
        "pod_host_namespaces"] == "hostPID"
    assert effective_object("delete", None, stored(DEPLOYMENT), 200) == (None, {"write_body_source": None, "write_body_issues": None})


def test_status_subresource_responses_do_not_restate_privileges():
    """A kubelet's pods/status patch returns the whole pod: reading it would flag aws-node on every heartbeat."""
    pod = {"kind": "Pod", "metadata": {"name": "aws-node-x"}, "spec": {"containers": [{"name": "aws-node", "securityContext": {"privileged": True}}]}}
    raw = write_event("patch", "pods", "aws-node-x", "kube-system", {"status": {"phase": "Running"}}, response_object=pod,
                      subresource="status", group="", user="system:node:ip-10-0-1-5.ec2.internal")
    assert facts_of(raw) == {"write_body_source": "response", "write_body_issues": None}


# --------------------------------------------------------------------------- RFC 6901 / 6902
POINTER_CASES = [
    # (path, value, expected sparse object)
    ("/a", 1, {"a": 1}),
    ("/a/b/c", 1, {"a": {"b": {"c": 1}}}),
    ("/a~1b", 1, {"a/b": 1}),
    ("/m~0n", 1, {"m~n": 1}),
    ("/~01", 1, {"~1": 1}),
    ("/a/-", 1, {"a": [1]}),
    ("/a/0", 1, {"a": [1]}),
    ("/a/2", 1, {"a": [{}, {}, 1]}),
    ("/a/0/b", 1, {"a": [{"b": 1}]}),
    ("/a/-/b", 1, {"a": [{"b": 1}]}),
    ("/", 1, {"": 1}),
    ("/ ", 1, {" ": 1}),
    ("/metadata/annotations/kubernetes.io~1ingress.class", "alb", {"metadata": {"annotations": {"kubernetes.io/ingress.class": "alb"}}}),
    ("", {"spec": {"hostPID": True}}, {"spec": {"hostPID": True}}),
]


@pytest.mark.parametrize("path,value,expected", POINTER_CASES, ids=[repr(c[0]) for c in POINTER_CASES])
def test_rfc6901_pointers(path, value, expected):
    obj, issues = apply_json_patch([{"op": "add", "path": path, "value": value}])
    assert (obj, issues) == (expected, set())


@pytest.mark.parametrize("operations,issue", [
    ([{"op": "add", "path": "a", "value": 1}], "bad_pointer"),
    ([{"op": "add", "path": "/a/01", "value": 1}], "bad_pointer"),
    ([{"op": "add", "path": "/a"}], "bad_op"),
    (["not an op"], "bad_op"),
    ([{"op": "frobnicate", "path": "/a", "value": 1}], "bad_op"),
    ([{"op": "remove", "path": "/spec/template/spec/securityContext/runAsNonRoot"}], "remove_op"),
    ([{"op": "copy", "from": "/spec/x", "path": "/spec/y"}], "unresolved_op"),
    ([{"op": "add", "path": "/a" * 40, "value": 1}], "deep_pointer"),
    ([{"op": "add", "path": "/a/99999999", "value": 1}], "index_clamped"),
    ([{"op": "add", "path": "/a", "value": 1}] * 1_001, "too_many_ops"),
    ([{"op": "replace", "path": "", "value": [1]}], "root_not_object"),
])
def test_patch_issues_are_named(operations, issue):
    assert issue in PATCH_ISSUES
    assert issue in apply_json_patch(operations)[1]


def test_copy_and_move_resolve_from_what_the_patch_set_and_inputs_are_never_changed():
    value = {"privileged": False}
    operations = [
        {"op": "add", "path": "/spec/containers/0/securityContext", "value": value},
        {"op": "replace", "path": "/spec/containers/0/securityContext/privileged", "value": True},
        {"op": "copy", "from": "/spec/containers/0", "path": "/spec/initContainers/0"},
        {"op": "test", "path": "/spec", "value": {}},
    ]
    before = copy.deepcopy(operations)
    obj, issues = apply_json_patch(operations)
    assert obj == {"spec": {"containers": [{"securityContext": {"privileged": True}}],
                            "initContainers": [{"securityContext": {"privileged": True}}]}}
    assert issues == set() and operations == before and value == {"privileged": False}


def test_add_inserts_and_replace_overwrites_at_an_index():
    obj, _ = apply_json_patch([{"op": "add", "path": "/a", "value": [1, 2]}, {"op": "add", "path": "/a/0", "value": 0},
                               {"op": "replace", "path": "/a/2", "value": 9}])
    assert obj == {"a": [0, 1, 9]}


# --------------------------------------------------------------------------- pod specs


def test_kubectl_debug_privileged_ephemeral_container_is_named():
    """kubectl debug --profile=sysadmin: a strategic merge patch of pods/ephemeralcontainers."""
    body = {"spec": {"ephemeralContainers": [{"name": "debugger-7x2k", "image": "busybox:1.36", "stdin": True, "tty": True,
                                              "securityContext": {"privileged": True}, "targetContainerName": "api"}]}}
    raw = write_event("patch", "pods", "checkout-api-5f7c9", "checkout", body, subresource="ephemeralcontainers", group="")
    facts = facts_of(raw)
    assert facts["pod_privileged"] is True and facts["pod_privileged_containers"] == "ephemeralContainers/debugger-7x2k"


def test_plain_kubectl_debug_is_not_privileged():
    body = {"spec": {"ephemeralContainers": [{"name": "debugger-q8", "image": "busybox:1.36", "stdin": True, "tty": True,
                                              "targetContainerName": "api"}]}}
    facts = facts_of(write_event("patch", "pods", "checkout-api-5f7c9", "checkout", body, subresource="ephemeralcontainers", group=""))
    assert facts["pod_privileged"] is False and facts["pod_privileged_containers"] is None and facts["pod_images"] == "busybox:1.36"


def test_controller_copies_name_their_owner():
    """The job-controller's Pod of a CronJob's Job restates the template: the owner tells the copy from the author's write."""
    pod = {"kind": "Pod", "metadata": {"name": "metrics-push-29-x", "ownerReferences": [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "metrics-push-29", "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"containers": [{"name": "push", "image": "alpine", "securityContext": {"privileged": True}}]}}
    raw = write_event("create", "pods", "metrics-push-29-x", "default", pod, response_object=pod, code=201, group="",
                      user="system:serviceaccount:kube-system:job-controller")
    assert (facts_of(raw)["workload_owner"], facts_of(raw)["pod_privileged"]) == ("Job/metrics-push-29", True)
    assert facts_of(write_event("create", "deployments", "checkout-api", "checkout", DEPLOYMENT))["workload_owner"] is None


def test_old_ephemeral_containers_kind_is_read():
    body = {"kind": "EphemeralContainers", "ephemeralContainers": [{"name": "d", "image": "alpine", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}
    assert pod_spec_facts(body)["pod_dangerous_capabilities"] == "SYS_ADMIN"


def test_every_pod_spec_fact_of_a_cronjob_template():
    cronjob = {"kind": "CronJob", "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {
        "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/miner": "unconfined"}},
        "spec": {
            "serviceAccountName": "default", "automountServiceAccountToken": True, "hostPID": True, "hostIPC": True,
            "securityContext": {"runAsUser": 0, "seccompProfile": {"type": "Unconfined"}},
            "initContainers": [{"name": "setup", "image": "alpine:3.19", "securityContext": {"procMount": "Unmasked"}}],
            "containers": [{"name": "miner", "image": "xmrig/xmrig:6.21", "ports": [{"containerPort": 3333, "hostPort": 3333}],
                            "securityContext": {"allowPrivilegeEscalation": True, "capabilities": {"add": ["cap_sys_ptrace", "NET_BIND_SERVICE", "bpf"]}},
                            "volumeMounts": [{"name": "sock", "mountPath": "/run/containerd/containerd.sock"},
                                             {"name": "logs", "mountPath": "/host-logs", "readOnly": True}]}],
            "volumes": [{"name": "sock", "hostPath": {"path": "/run/containerd/containerd.sock"}},
                        {"name": "logs", "hostPath": {"path": "/var/log/"}}, {"name": "data", "hostPath": {"path": "/srv/data"}},
                        {"name": "cfg", "configMap": {"name": "x"}}],
        }}}}}}
    assert pod_spec_facts(cronjob) == {
        "pod_privileged": False, "pod_host_namespaces": "hostIPC,hostPID",
        "pod_host_paths": "/run/containerd/containerd.sock,/srv/data,/var/log/",
        "pod_capabilities": "NET_BIND_SERVICE,bpf,cap_sys_ptrace", "pod_images": "alpine:3.19,xmrig/xmrig:6.21",
        "pod_service_account": "default", "pod_automount_token": True, "pod_host_ports": "3333",
        "pod_privilege_escalation": True, "pod_runs_as_root": True, "pod_dangerous_capabilities": "BPF,SYS_PTRACE",
        "pod_unconfined": "apparmor,seccomp", "pod_proc_mount_unmasked": True,
        "pod_sensitive_host_paths": "/run/containerd/containerd.sock,/var/log:ro",
        "pod_privileged_containers": "containers/miner,initContainers/setup",
    }


@pytest.mark.parametrize("path,sensitive", [
    ("/", True), ("//", True), ("/etc/", True), ("/etc/kubernetes/pki", True), ("/var", True), ("/var/lib/kubelet/pods", True),
    ("/var/run/docker.sock", True), ("/opt/docker.sock", True), ("/home/ec2-user", True), ("/proc/sys/kernel", True),
    ("/tmp/../etc/passwd", True), ("/var/lib/mysql", False), ("/srv/data", False), ("/etc/ssl/certs", False),
    ("/data/var", False), ("/etcetera", False),
])
def test_sensitive_host_paths(path, sensitive):
    facts = pod_spec_facts({"kind": "Pod", "spec": {"containers": [{"name": "c"}], "volumes": [{"name": "v", "hostPath": {"path": path}}]}})
    assert (facts["pod_sensitive_host_paths"] is not None) is sensitive


def test_container_run_as_user_overrides_the_pod():
    spec = {"kind": "Pod", "spec": {"securityContext": {"runAsUser": 0}, "containers": [{"name": "c", "securityContext": {"runAsUser": 1000}}]}}
    assert pod_spec_facts(spec)["pod_runs_as_root"] is False
    spec["spec"]["containers"].append({"name": "d", "securityContext": {}})
    assert pod_spec_facts(spec)["pod_runs_as_root"] is True  # d inherits the pod's runAsUser 0
    spec["spec"]["securityContext"] = {}
    spec["spec"]["containers"][1]["securityContext"] = {"runAsNonRoot": False}
    assert pod_spec_facts(spec)["pod_runs_as_root"] is True
    spec["spec"]["containers"][1]["securityContext"] = {"runAsNonRoot": True}
    assert pod_spec_facts(spec)["pod_runs_as_root"] is False


def test_net_raw_is_not_dangerous_but_all_is():
    assert "NET_RAW" not in DANGEROUS_CAPABILITIES
    facts = pod_spec_facts({"kind": "Pod", "spec": {"containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["NET_RAW", "ALL"]}}}]}})
    assert facts["pod_dangerous_capabilities"] == "ALL"


# --------------------------------------------------------------------------- services, ingresses, roles
@pytest.mark.parametrize("spec,annotations,scheme,declared", [
    ({"type": "LoadBalancer"}, {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing"}, "internet-facing", True),
    ({"type": "LoadBalancer", "loadBalancerClass": "service.k8s.aws/nlb"}, {}, "internal", False),
    ({"type": "LoadBalancer"}, {"service.beta.kubernetes.io/aws-load-balancer-type": "external"}, "internal", False),
    ({"type": "LoadBalancer"}, {}, "internet-facing", False),
    ({"type": "LoadBalancer"}, {"service.beta.kubernetes.io/aws-load-balancer-internal": "0.0.0.0/0"}, "internal", True),
    ({"type": "LoadBalancer"}, {"service.beta.kubernetes.io/aws-load-balancer-internal": "false"}, "internet-facing", True),
    ({"type": "LoadBalancer", "loadBalancerClass": "eks.amazonaws.com/nlb"},
     {"service.beta.kubernetes.io/aws-load-balancer-internal": "yes"}, "internet-facing", True),
    ({"type": "ClusterIP"}, {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing"}, None, None),
])
def test_load_balancer_scheme_follows_its_controller(spec, annotations, scheme, declared):
    facts = service_facts({"kind": "Service", "metadata": {"annotations": annotations}, "spec": spec})
    assert (facts["service_lb_scheme"], facts["service_lb_scheme_declared"]) == (scheme, declared)


def test_nodeport_update_and_external_ips():
    stored_service = {"kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system"},
                      "spec": {"type": "NodePort", "ports": [{"port": 53, "nodePort": 31053}], "externalIPs": ["203.0.113.50"]}}
    raw = write_event("patch", "services", "kube-dns", "kube-system", [{"op": "replace", "path": "/spec/type", "value": "NodePort"}],
                      response_object=stored_service, group="")
    facts = facts_of(raw)
    assert (facts["service_type"], facts["service_node_ports"], facts["service_external_ips"]) == ("NodePort", "31053", "203.0.113.50")


def test_ingress_without_tls_internet_facing():
    ingress = {"kind": "Ingress", "metadata": {"annotations": {"alb.ingress.kubernetes.io/scheme": "internet-facing"}},
               "spec": {"ingressClassName": "alb", "rules": [{"host": "admin.corp.example", "http": {}}]}}
    facts = facts_of(write_event("create", "ingresses", "admin", "web", ingress, group="networking.k8s.io"))
    assert (facts["ingress_tls"], facts["ingress_hosts"], facts["ingress_class"], facts["ingress_scheme"]) == (
        False, "admin.corp.example", "alb", "internet-facing")
    internal = {"spec": {"ingressClassName": "alb", "tls": [{"hosts": ["a.corp.example"]}], "rules": [{"host": "a.corp.example"}]}}
    assert body_facts("ingresses", None, internal)["ingress_scheme"] == "internal"


@pytest.mark.parametrize("rules,grants", [
    ([{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}], "nodes_proxy"),
    ([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}], None),
    ([{"apiGroups": [""], "resources": ["*/exec"], "verbs": ["create"]}], "pods_exec"),
    ([{"apiGroups": [""], "resources": ["pods/*"], "verbs": ["create"]}], None),  # RBAC has no resource/* wildcard
    ([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterrolebindings"], "verbs": ["create"]}], "rbac_write"),
    ([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind", "escalate"]}], "escalate_or_bind"),
    ([{"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}], "impersonate"),
    ([{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}], "token_create"),
    ([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}, {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}],
     "secrets_read"),
    ([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}, {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
     None),  # per rule: create on secrets and get on configmaps is not a secret read
    ([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
     "csr_approve,escalate_or_bind,impersonate,nodes_proxy,pods_exec,rbac_write,secrets_read,token_create,webhook_write,"
     "wildcard_resources,wildcard_verbs"),
    ([{"apiGroups": ["apps"], "resources": ["*"], "verbs": ["get"]}], "wildcard_resources"),
])
def test_role_grants_are_judged_per_rule(rules, grants):
    raw = write_event("create", "clusterroles", "ops", None, {"kind": "ClusterRole", "rules": rules}, group="rbac.authorization.k8s.io")
    assert facts_of(raw)["role_dangerous_grants"] == grants


@pytest.mark.parametrize("attrs, grants", [
    ({"verb": "impersonate", "resource": "users"}, "impersonate"),
    ({"verb": "create", "resource": "serviceaccounts", "subresource": "token", "namespace": "kube-system"}, "token_create"),
    ({"verb": "escalate", "group": "rbac.authorization.k8s.io", "resource": "clusterroles"}, "escalate_or_bind"),
    ({"verb": "get", "resource": "nodes", "subresource": "proxy"}, "nodes_proxy"),
    ({"verb": "*", "group": "*", "resource": "*"}, ",".join(sorted(g.name for g in GRANTS))),  # can-i '*' '*': cluster-admin?
    ({"verb": "get", "resource": "secrets", "namespace": "web"}, "secrets_read"),
    ({"verb": "create", "group": "apps", "resource": "deployments", "namespace": "web"}, None),  # an engineer's routine check
    ({"verb": "create", "resource": "clusterrolebindings"}, None),  # the core group: no RBAC object lives there
    ({"verb": "", "resource": "users"}, None),
])
def test_a_permission_check_names_the_grant_it_asks_about_and_keeps_the_answer(attrs, grants):
    body = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "spec": {"resourceAttributes": attrs}}
    raw = write_event("create", "selfsubjectaccessreviews", None, None, body, {**body, "status": {"allowed": True}}, code=201,
                      group="authorization.k8s.io")
    facts = facts_of(raw)
    assert facts["access_review_grants"] == grants and facts["access_review_allowed"] is True


def test_declarations():
    assert len(COLUMN_NAMES) == len(set(COLUMN_NAMES)) and set(REPLACES_EVENT_COLUMNS) <= set(COLUMN_NAMES)
    assert len({g.name for g in GRANTS}) == len(GRANTS)
    every = set(role_facts({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})["role_dangerous_grants"].split(","))
    assert every == {g.name for g in GRANTS} | {"wildcard_verbs", "wildcard_resources"}


# --------------------------------------------------------------------------- hostile bodies
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_keys = st.sampled_from(["spec", "template", "jobTemplate", "containers", "initContainers", "ephemeralContainers", "securityContext",
                         "volumes", "hostPath", "path", "capabilities", "add", "rules", "verbs", "resources", "apiGroups", "metadata",
                         "annotations", "ports", "tls", "type", "0", "-", "~1", ""])
_operation = st.fixed_dictionaries({"op": st.sampled_from(["add", "replace", "copy", "move", "remove", "test", "x"]),
                                    "path": st.lists(_keys, max_size=6).map(lambda s: "".join("/" + k for k in s)),
                                    "from": st.lists(_keys, max_size=4).map(lambda s: "".join("/" + k for k in s)),
                                    "value": _json})


@settings(max_examples=120, deadline=None, derandomize=True)
@given(st.lists(_operation, max_size=12), _json, st.sampled_from(["pods", "deployments", "cronjobs", "services", "ingresses",
                                                                  "clusterroles", "certificatesigningrequests"]))
def test_any_body_never_raises(operations, response, resource):
    obj, source = effective_object("patch", operations, response, 200)
    facts = body_facts(resource, None, obj)
    assert set(facts) <= set(COLUMN_NAMES) | {"csr_signer", "csr_usages", "csr_subject_cn", "csr_subject_groups", "csr_sans",
                                              "csr_request_unreadable", "csr_risks", "csr_decision", "csr_approved_signer"}
