"""The sample generator must produce EKS audit logs a detector can be trusted to learn from:
valid audit.k8s.io/v1 events, a stable and realistic background, and labelled attacks that
exist only in the last day and carry each category's real signature."""

from __future__ import annotations

import collections
import gzip
import json
import re
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from pipeline.sample import generate_sample
from pipeline.sample.attacks import CATEGORIES, EVALUATE_SEEDS, categories
from pipeline.sample.emit import api_path

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SEED, DAYS, SCALE = 7, 3, 0.1
COVERAGE_SEEDS = (1, 2, 3, 4, 5)
NEW_FAMILIES = CATEGORIES[14:]


def read(path):
    with gzip.open(path) as f:
        return [orjson.loads(line) for line in f]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    summary = generate_sample(out, days=DAYS, seed=SEED, scale=SCALE)
    files = sorted(out.glob("audit-*.jsonl.gz"))
    days = [read(f) for f in files]
    labels = json.loads((out / "labels.json").read_text())
    return {"dir": out, "summary": summary, "files": files, "days": days, "labels": labels}


@pytest.fixture(scope="module")
def coverage(tmp_path_factory):
    """One tiny single-day sample per seed; together they hold every attack category."""
    out = {}
    for seed in COVERAGE_SEEDS:
        d = tmp_path_factory.mktemp(f"cov{seed}")
        generate_sample(d, days=1, seed=seed, scale=0.02)
        events = read(next(d.glob("audit-*.jsonl.gz")))
        out[seed] = (json.loads((d / "labels.json").read_text()), events, d)
    return out


def username(e):
    return e["user"].get("username", "")


def test_summary_and_files(sample):
    s = sample["summary"]
    assert len(sample["files"]) == DAYS
    assert set(s["files"]) == {f.name for f in sample["files"]} | {"labels.json"}
    assert sum(s["events_per_day"].values()) == s["total_events"] == sum(len(d) for d in sample["days"])
    assert s["scenarios"] == [sc["id"] for sc in sample["labels"]["scenarios"]]
    assert s["end"].startswith("2026-11-08T00:00:00")  # 2026-11-01 + seed % 20 days


def test_same_seed_same_bytes_other_seed_other_attacks(sample, tmp_path):
    again = tmp_path / "again"
    generate_sample(again, days=DAYS, seed=SEED, scale=SCALE)
    for f in sample["files"] + [sample["dir"] / "labels.json"]:
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name
    other = tmp_path / "other"
    generate_sample(other, days=1, seed=SEED + 1, scale=0.02, end=datetime(2026, 11, 8, tzinfo=timezone.utc))
    mine = sample["labels"]["scenarios"]
    theirs = json.loads((other / "labels.json").read_text())["scenarios"]
    assert {(s["user"], s["source_ip"]) for s in mine} != {(s["user"], s["source_ip"]) for s in theirs}
    assert [s["start"] for s in mine] != [s["start"] for s in theirs]
    users = {username(e) for e in read(next(other.glob("audit-*.jsonl.gz"))) if "@" in username(e)}
    assert users != {username(e) for d in sample["days"] for e in d if "@" in username(e)}


def test_every_line_is_an_eks_audit_event(sample):
    for day in sample["days"]:
        for e in day:
            assert e["kind"] == "Event" and e["apiVersion"] == "audit.k8s.io/v1"
            assert e["level"] in ("Metadata", "Request", "RequestResponse")
            assert UUID4.match(e["auditID"])
            assert e["stage"] in ("ResponseStarted", "ResponseComplete")
            assert TS.match(e["requestReceivedTimestamp"]) and TS.match(e["stageTimestamp"])
            assert e["stageTimestamp"] >= e["requestReceivedTimestamp"]
            assert isinstance(e["sourceIPs"], list) and e["sourceIPs"]
            assert e["userAgent"] and e["verb"]
            code = e["responseStatus"]["code"]
            if code == 401:
                assert e["stage"] == "ResponseStarted" and e["user"] == {} and "annotations" not in e
                continue
            decision = e["annotations"]["authorization.k8s.io/decision"]
            assert decision == ("forbid" if code == 403 else "allow")
            if code >= 400:
                assert e["responseStatus"]["status"] == "Failure"
                assert "requestObject" not in e and "responseObject" not in e
            ref = e.get("objectRef")
            path = urlsplit(e["requestURI"]).path
            if ref:
                want = api_path(ref["resource"], ref.get("namespace", "") if ref["resource"] != "namespaces" else "",
                                ref.get("name", ""), ref.get("subresource", ""), ref.get("apiGroup", ""), ref["apiVersion"])
                # a proxy request's path continues past the subresource (the kubelet's own path)
                assert path == want or (ref.get("subresource") == "proxy" and path.startswith(want + "/"))
                if e["verb"] == "watch":
                    assert parse_qs(urlsplit(e["requestURI"]).query)["watch"] == ["true"]
            else:
                assert not path.startswith("/api/v1/namespaces/")


def test_files_are_time_sorted_and_free_of_duplicates(sample):
    seen = set()
    for f, day in zip(sample["files"], sample["days"]):
        stamps = [e["stageTimestamp"] for e in day]
        assert stamps == sorted(stamps)
        assert all(s.startswith(f.name[6:16]) for s in stamps)
        for e in day:
            key = (e["auditID"], e["stage"])
            assert key not in seen
            seen.add(key)


def test_audit_policy_levels(sample):
    for e in (e for d in sample["days"] for e in d):
        ref = e.get("objectRef") or {}
        if ref.get("resource") in ("secrets", "configmaps") and ref.get("name") != "aws-auth":
            assert e["level"] == "Metadata" and "requestObject" not in e
        if ref.get("resource") == "leases" and e["verb"] == "update":
            assert e["level"] == "RequestResponse" and e["requestObject"]["kind"] == "Lease"
        if ref and e["verb"] in ("get", "list", "watch") and ref.get("apiGroup", "") in ("", "apps") \
                and ref["resource"] not in ("secrets", "configmaps"):
            assert e["level"] == "Request"
        if not ref:
            assert e["level"] == "Metadata"


def test_streaming_requests_have_both_stages(sample):
    stages = collections.defaultdict(list)
    for e in (e for d in sample["days"] for e in d):
        sub = (e.get("objectRef") or {}).get("subresource")
        if sub in ("exec", "attach", "portforward"):
            stages[e["auditID"]].append((e["stage"], e["responseStatus"]["code"]))
    assert stages, "engineers exec into their own pods in the background"
    for got in stages.values():
        assert sorted(got) == [("ResponseComplete", 101), ("ResponseStarted", 101)] or got == [("ResponseStarted", 101)]


def test_background_has_every_identity_family_every_day(sample):
    required = ["system:kube-controller-manager", "system:kube-scheduler",
                "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                "system:serviceaccount:kube-system:cronjob-controller", "eks:node-manager", "eks:cloud-controller-manager",
                "eks:vpc-resource-controller", "eks:authenticator", "eks:k8s-metrics", "eks:certificate-controller",
                "system:serviceaccount:kube-system:aws-node", "system:serviceaccount:kube-system:coredns",
                "system:serviceaccount:kube-system:kube-proxy", "system:serviceaccount:monitoring:prometheus",
                "system:serviceaccount:monitoring:kube-state-metrics",
                "system:serviceaccount:argocd:argocd-application-controller", "system:serviceaccount:cert-manager:cert-manager",
                "system:serviceaccount:checkout:checkout-api", "system:serviceaccount:data:etl-runner", "system:anonymous"]
    for day in sample["days"]:
        users = {username(e) for e in day}
        missing = [u for u in required if u not in users]
        assert not missing, missing
        assert any(u.startswith("system:node:ip-10-0-") for u in users)
        etl = [e for e in day if username(e) == "system:serviceaccount:data:etl-runner" and e["verb"] == "list"]
        assert len(etl) > 100 and all(e["responseStatus"]["code"] == 403 for e in etl)
        anon = [e for e in day if username(e) == "system:anonymous"]
        assert any(e["requestURI"] in ("/healthz", "/livez", "/readyz") and e["sourceIPs"][-1].startswith("10.0.") for e in anon)
        assert sum(e["responseStatus"]["code"] == 403 for e in anon) > 50, "internet scanners are normal noise"
    weekday = [d for d in sample["days"] if datetime.fromisoformat(d[0]["stageTimestamp"][:10]).weekday() < 5]
    humans = {username(e) for d in weekday for e in d if username(e).endswith("@corp.example")}
    assert 4 <= len(humans) <= 8
    assert any(username(e) == "ci-deployer" and e["userAgent"].startswith("Helm/") for d in weekday for e in d)
    gc = [e for d in sample["days"] for e in d if username(e).endswith("generic-garbage-collector") and e["verb"] == "list"]
    assert len({e["objectRef"]["resource"] for e in gc}) >= 15, "benign discovery: GC lists every resource type"


def test_engineer_extra_and_sources_are_stable(sample):
    by_user = collections.defaultdict(lambda: collections.Counter())
    for e in (e for d in sample["days"][:-1] for e in d):
        u = username(e)
        if u.endswith("@corp.example"):
            extra = e["user"]["extra"]
            assert extra["arn"][0].startswith("arn:aws:sts::111122223333:assumed-role/")
            assert extra["accessKeyId"][0].startswith("ASIA") and extra["sessionName"]
            by_user[u][e["sourceIPs"][-1]] += 1
    for u, ips in by_user.items():
        top = ips.most_common(2)
        assert sum(n for _, n in top) >= 0.8 * sum(ips.values()), (u, ips)


def test_kubelet_leases_dominate_volume(sample):
    for day in sample["days"]:
        groups = collections.Counter(
            ("node" if username(e).startswith("system:node:") else username(e), e["verb"], (e.get("objectRef") or {}).get("resource"))
            for e in day)
        (top, n), = groups.most_common(1)
        assert top == ("node", "update", "leases")
        assert n / len(day) > 0.15


def test_labels_name_last_day_events_only(sample):
    labels = sample["labels"]
    assert labels["seed"] == SEED and labels["days"] == DAYS
    assert 8 <= len(labels["scenarios"]) <= 12
    last = {e["auditID"]: e for e in sample["days"][-1]}
    training = {e["auditID"] for d in sample["days"][:-1] for e in d}
    day0 = sample["days"][-1][0]["stageTimestamp"][:10]
    for s in labels["scenarios"]:
        assert s["category"] in CATEGORIES and s["audit_ids"] and s["description"]
        assert s["start"][:10] == s["end"][:10] == day0 and s["start"] <= s["end"]
        assert not training.intersection(s["audit_ids"])
        events = [last[a] for a in s["audit_ids"]]
        assert any(e["sourceIPs"][-1] == s["source_ip"] for e in events)
        if s["user"]:
            assert any(username(e) == s["user"] for e in events)


def test_every_category_appears_with_its_signature(coverage):
    seen = set()
    for labels, events, _ in coverage.values():
        by_id = collections.defaultdict(list)
        for e in events:
            by_id[e["auditID"]].append(e)
        for s in labels["scenarios"]:
            assert all(a in by_id for a in s["audit_ids"]), s["id"]
            evs = [e for a in s["audit_ids"] for e in by_id[a]]
            assert SIGNATURES[s["category"]](evs, s), s["id"]
            seen.add(s["category"])
    assert seen == set(CATEGORIES)


def _res(e):
    return (e.get("objectRef") or {}).get("resource")


def _public(ip):
    return not ip.startswith(("10.", "172.16.", "192.168."))


SIGNATURES = {
    "stolen_user_credentials": lambda evs, s: _public(s["source_ip"]) and any(_res(e) == "secrets" for e in evs),
    "stolen_sa_token": lambda evs, s: s["user"].startswith("system:serviceaccount:") and _public(s["source_ip"])
    and any(e["responseStatus"]["code"] == 403 for e in evs),
    "permission_probing": lambda evs, s: sum(_res(e) == "selfsubjectaccessreviews" for e in evs) >= 5
    and sum(e["responseStatus"]["code"] == 403 for e in evs) >= 3,
    "secrets_sweep": lambda evs, s: len({e["objectRef"].get("name") for e in evs if _res(e) == "secrets" and e["verb"] == "get"}) >= 15
    and any(e["requestURI"].startswith("/api/v1/secrets?") for e in evs),
    "anonymous_access_granted": lambda evs, s: any(_res(e) == "clusterrolebindings" and e["verb"] == "create"
                                                   and e["requestObject"]["subjects"][0]["name"] == "system:anonymous" for e in evs)
    and any(username(e) == "system:anonymous" and e["responseStatus"]["code"] == 200 and _res(e) for e in evs),
    "rbac_escalation": lambda evs, s: any(_res(e) in ("clusterrolebindings", "roles", "clusterroles")
                                          and e["verb"] == "create" for e in evs),
    "exec_system_pod": lambda evs, s: any(e["objectRef"].get("namespace") == "kube-system" and e["stage"] == "ResponseStarted"
                                          and e["responseStatus"]["code"] == 101 for e in evs if _res(e) == "pods"),
    "aws_auth_tampering": lambda evs, s: any(e["verb"] in ("patch", "update") and e["objectRef"].get("name") == "aws-auth"
                                             and (e["responseStatus"]["code"] == 403 or "system:masters" in json.dumps(e["requestObject"]))
                                             for e in evs if _res(e) == "configmaps"),
    "privileged_workload": lambda evs, s: any(e["verb"] == "create" and "privileged" in json.dumps(e.get("requestObject", {}))
                                              for e in evs if _res(e) in ("pods", "daemonsets", "cronjobs")),
    "credential_minting": lambda evs, s: any((_res(e) == "serviceaccounts" and e["objectRef"].get("subresource") == "token")
                                             or (_res(e) == "certificatesigningrequests" and e["verb"] == "create"
                                                 and "client auth" in e["requestObject"]["spec"]["usages"]) for e in evs),
    "defense_evasion": lambda evs, s: any(_res(e) == "events" and e["verb"] in ("delete", "deletecollection") for e in evs),
    "system_identity_public_ip": lambda evs, s: (s["user"].startswith(("system:node:", "system:serviceaccount:kube-system:", "eks:")))
    and _public(s["source_ip"]),
    "auth_brute_force": lambda evs, s: sum(e["responseStatus"]["code"] == 401 and e["sourceIPs"][-1] == s["source_ip"] for e in evs) >= 80,
    "webhook_tampering": lambda evs, s: any(_res(e) in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
                                            and e["verb"] in ("create", "patch") for e in evs),
}


def _sub(e):
    return (e.get("objectRef") or {}).get("subresource")


def _exec_argv(e):
    return parse_qs(urlsplit(e["requestURI"]).query).get("command", [])


def _privileged_stored(e):
    spec = e["responseObject"]["spec"]["template"]["spec"]
    return any((c.get("securityContext") or {}).get("privileged") for c in spec["containers"])


SIGNATURES.update({
    # A JSON-patch list as the request, the privileged Deployment as stored as the response, then new pods.
    "workload_json_patch": lambda evs, s: any(e["verb"] == "patch" and _res(e) == "deployments"
                                              and isinstance(e["requestObject"], list) and _privileged_stored(e)
                                              for e in evs)
    and any(_res(e) == "replicasets" and e["verb"] == "create" for e in evs),
    "privileged_debug_container": lambda evs, s: any(
        _sub(e) == "ephemeralcontainers" and e["verb"] == "patch"
        and e["requestObject"]["spec"]["ephemeralContainers"][0]["securityContext"]["privileged"]
        and e["responseObject"]["spec"]["ephemeralContainers"] for e in evs)
    and any(_sub(e) == "attach" and e["responseStatus"]["code"] == 101 for e in evs),
    "exec_payload": lambda evs, s: any(
        re.search(r"mkfifo|/dev/tcp|/proc/1/environ|serviceaccount/token|2852039166|0xa9fea9fe|\| sh$", " ".join(_exec_argv(e)))
        for e in evs if _sub(e) == "exec"),
    "nodes_proxy_exec": lambda evs, s: any(_res(e) == "nodes" and _sub(e) == "proxy" and "/proxy/exec/" in e["requestURI"]
                                           and e["responseStatus"]["code"] == 101 for e in evs)
    and any(e["requestURI"].endswith("/proxy/pods") for e in evs),
    "dns_hijack": lambda evs, s: any(_res(e) == "configmaps" and e["objectRef"].get("name") == "coredns"
                                     and e["objectRef"]["namespace"] == "kube-system" and e["verb"] in ("update", "patch")
                                     and e["level"] == "Metadata" for e in evs),
    "service_exposure": lambda evs, s: any(
        (_res(e) == "services" and e["verb"] == "create" and e["responseObject"]["spec"]["type"] == "LoadBalancer"
         and e["requestObject"]["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internet-facing")
        or (_res(e) == "services" and e["verb"] == "patch" and e["responseObject"]["spec"]["type"] == "NodePort")
        or (_res(e) == "ingresses" and e["verb"] == "create" and "tls" not in e["requestObject"]["spec"]) for e in evs),
    "client_certificate": lambda evs, s: any(_res(e) == "certificatesigningrequests" and _sub(e) == "approval" for e in evs)
    and any(_csr_subject(e)[1] == ["system:masters"] and e["requestObject"]["spec"]["signerName"]
            == "kubernetes.io/kube-apiserver-client" for e in evs if _res(e) == "certificatesigningrequests" and e["verb"] == "create")
    and any(e["user"].get("groups", [None])[0] == "system:masters" and "extra" not in e["user"] for e in evs),
    "kube_system_persistence": lambda evs, s: any(_res(e) == "serviceaccounts" and e["verb"] == "create" and not _sub(e) for e in evs)
    and any(_sub(e) == "token" for e in evs)
    and any(_res(e) == "daemonsets" and e["verb"] == "create" and e["objectRef"]["namespace"] == "kube-system"
            and e["requestObject"]["spec"]["template"]["spec"]["hostNetwork"] for e in evs),
    "system_identity_abuse": lambda evs, s: s["user"].startswith("system:serviceaccount:kube-system:")
    and not _public(s["source_ip"])
    and any(_res(e) == "clusterrolebindings" and e["requestObject"]["roleRef"]["name"] == "cluster-admin" for e in evs)
    and any(_sub(e) == "exec" for e in evs),
    "quiet_secret_theft": lambda evs, s: 1 <= len(evs) <= 3 and all(_res(e) == "secrets" and e["verb"] == "get"
                                                                   and e["userAgent"].startswith(("curl/", "python-requests/"))
                                                                   for e in evs),
})


def _csr_subject(e):
    """(CN, [O...]) of the PKCS#10 request a CSR event carries, decoded as an API server would."""
    import base64

    from cryptography import x509
    from cryptography.x509.oid import NameOID
    req = x509.load_pem_x509_csr(base64.b64decode(e["requestObject"]["spec"]["request"]))
    assert req.is_signature_valid
    cn = req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return cn, [a.value for a in req.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def test_every_category_is_on_two_of_the_evaluated_seeds():
    """`make evaluate` and the measured-quality table must see every family more than once."""
    counts = collections.Counter(c for seed in EVALUATE_SEEDS for c in categories(seed))
    assert {c: counts[c] for c in CATEGORIES if counts[c] < 2} == {}
    assert all(9 <= len(categories(seed)) <= 11 for seed in EVALUATE_SEEDS)


def test_new_families_are_labelled_and_read_cleanly_by_the_archive(coverage):
    """Every event of the new families is labelled, in the day's file, decodes through the
    archive's reader without quarantine and normalises to the identity and address labelled."""
    from features.events import normalize_event
    from pipeline.io.readers import Quarantine, read_events
    from pipeline.io.storage import resolve_inputs

    seen = set()
    for labels, _, d in coverage.values():
        quarantine = Quarantine()
        decoded = {v["auditID"]: v for ref in resolve_inputs([str(d)]) for v, _ in read_events(ref, quarantine)}
        assert quarantine.total == 0
        for s in labels["scenarios"]:
            if s["category"] not in NEW_FAMILIES:
                continue
            seen.add(s["category"])
            rows = [normalize_event(decoded[a]) for a in s["audit_ids"]]
            assert any(r["source_ip"] == s["source_ip"] for r in rows), s["id"]
            assert any(r["user"] == s["user"] for r in rows), s["id"]
    assert seen == set(NEW_FAMILIES)


def test_writes_log_the_object_as_stored(sample):
    """EKS logs writes to the built-in groups at RequestResponse: every successful create, update
    or patch (streaming upgrades aside) carries the responseObject a real API server returns."""
    bare = collections.Counter()
    for day in sample["days"]:
        for e in day:
            if e["level"] == "RequestResponse" and e["verb"] in ("create", "update", "patch") \
                    and e["responseStatus"]["code"] in (200, 201) and "responseObject" not in e:
                bare[(e["verb"], _res(e), _sub(e))] += 1
    assert bare == {}
    patches = [e for d in sample["days"] for e in d if e["verb"] == "patch" and _res(e) == "deployments"
               and e["level"] == "RequestResponse" and not _sub(e)]
    assert patches and all(e["responseObject"]["kind"] == "Deployment"
                           and e["responseObject"]["spec"]["template"]["spec"]["containers"] for e in patches)


def test_look_alikes_are_on_every_day(sample):
    """The benign twins of the new families appear every day (training and scored), so the false
    flags they cause are measured on every seed."""
    def kinds(day):
        found = set()
        for e in day:
            u, res, sub, verb = username(e), _res(e), _sub(e), e["verb"]
            body = e.get("requestObject")
            if verb == "patch" and res == "deployments" and u.endswith("argocd-application-controller"):
                found.add("argocd-json" if isinstance(body, list) else "argocd-merge")
            if verb == "patch" and res == "deployments" and u.endswith("@corp.example") and body is not None:
                found.add("engineer-json" if isinstance(body, list) else "engineer-merge")
            if sub == "ephemeralcontainers" and "securityContext" not in body["spec"]["ephemeralContainers"][0]:
                found.add("debug")
            if res == "services" and verb == "create" and (body["metadata"].get("annotations") or {}).get(
                    "service.beta.kubernetes.io/aws-load-balancer-scheme") == "internal":
                found.add("internal-lb")
            if res == "certificatesigningrequests" and verb == "create" and u.startswith("system:node:"):
                assert body["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
                assert _csr_subject(e) == (u, ["system:nodes"])
                found.add("serving-csr")
            if sub == "approval" and u == "eks:certificate-controller":
                found.add("csr-approval")
            if sub == "proxy" and u == "system:serviceaccount:monitoring:prometheus":
                found.add("scrape-" + e["requestURI"].rsplit("/proxy", 1)[1])
            if res == "configmaps" and e["objectRef"].get("namespace") == "kube-system" and "coredns" in e["requestURI"] \
                    and u.startswith("system:node:"):
                found.add("coredns-config-read")
            if sub == "exec" and u.endswith("@corp.example") and re.match(r"(ls|cat /etc/hosts|sh -c env \| grep)",
                                                                          " ".join(_exec_argv(e))):
                found.add("harmless-exec")
        return found
    want = {"argocd-json", "argocd-merge", "engineer-json", "engineer-merge", "debug", "internal-lb", "serving-csr",
            "csr-approval", "scrape-/metrics", "scrape-/metrics/cadvisor", "coredns-config-read", "harmless-exec"}
    for day in sample["days"]:
        assert want - kinds(day) == set()
    scrapes = [e for e in sample["days"][0] if _sub(e) == "proxy" and username(e).endswith(":prometheus")]
    assert all(e["responseStatus"]["code"] == 200 and e["verb"] == "get" for e in scrapes)


def test_controller_copies_name_their_controller_and_approvals_carry_the_csr(sample):
    """A controller's Jobs, Pods and ReplicaSets carry metadata.ownerReferences (controller: true), as the
    cronjob, job and deployment controllers write them, so write rules judge the template's author and not
    the copies; an approval is the whole CSR (kubectl certificate approve puts back what it read)."""
    controllers = {"cronjob-controller": "CronJob", "job-controller": "Job", "deployment-controller": "Deployment",
                   "replicaset-controller": "ReplicaSet"}
    made = collections.Counter()
    for day in sample["days"]:
        for e in day:
            kind = controllers.get(username(e).rsplit(":", 1)[-1])
            if kind and e["verb"] == "create" and not _sub(e) and _res(e) in ("jobs", "pods", "replicasets"):
                owners = e["requestObject"]["metadata"].get("ownerReferences") or []
                assert [o["kind"] for o in owners if o.get("controller")] == [kind], (username(e), _res(e))
                made[_res(e)] += 1
            if _res(e) == "certificatesigningrequests" and _sub(e) == "approval":
                spec = e["requestObject"]["spec"]
                assert spec["request"] and spec["signerName"] and spec["username"]
    assert made["jobs"] and made["pods"] and made["replicasets"]


def test_a_deployments_replica_sets_carry_the_pod_template_their_pods_run(sample):
    """As the deployment controller writes them: a ReplicaSet is a copy of its Deployment's pod template, so a
    privileged template shows in the ReplicaSet and in the pods made from it (features.copies follows the chain)."""
    events = [e for day in sample["days"] for e in day if e["stage"] == "ResponseComplete" and e["verb"] == "create"]
    replica_sets = {e["requestObject"]["metadata"]["name"]: e["requestObject"] for e in events
                    if e["objectRef"]["resource"] == "replicasets"}
    assert replica_sets
    pods = [e["requestObject"] for e in events
            if e["objectRef"]["resource"] == "pods" and not e["objectRef"].get("subresource") and "requestObject" in e]
    checked = 0
    for pod in pods:
        owner = next((o for o in pod["metadata"].get("ownerReferences", []) if o["kind"] == "ReplicaSet"), None)
        if owner and owner["name"] in replica_sets:
            assert replica_sets[owner["name"]]["spec"]["template"]["spec"] == pod["spec"]
            checked += 1
    assert checked >= len(replica_sets)
