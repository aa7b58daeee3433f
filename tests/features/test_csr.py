"""features.csr: CertificateSigningRequests as kubectl and kubelets send them, decoded with cryptography."""
from __future__ import annotations

import base64
import ipaddress
import json
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from features.csr import COLUMN_NAMES, RISKS, UNREADABLE, csr_facts, csr_risks
from features.writes import body_facts, effective_object
from tests.factory import SHARED_FIXTURES, event


@cache
def _key():
    return ec.generate_private_key(ec.SECP256R1())


def pkcs10(cn: str, groups=(), dns=(), ips=(), encoding=serialization.Encoding.PEM) -> str:
    """spec.request as kubectl certificate tooling writes it: base64 of a PEM CERTIFICATE REQUEST."""
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if dns or ips:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]), critical=False)
    request = builder.sign(_key(), hashes.SHA256())
    return base64.b64encode(request.public_bytes(encoding)).decode()


def csr_event(request: str | None, signer: str, usages=("client auth",), user: str = "eng:mallory", groups=("system:authenticated",),
              verb: str = "create", subresource: str | None = None, status: dict | None = None) -> dict:
    spec = {"signerName": signer, "usages": list(usages)}
    if request is not None:
        spec["request"] = request
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": "csr-1"}, "spec": spec}
    if status:
        body["status"] = status
    ref = {"resource": "certificatesigningrequests", "name": "csr-1", "apiGroup": "certificates.k8s.io", "apiVersion": "v1"}
    if subresource:
        ref["subresource"] = subresource
    return event(verb=verb, objectRef=ref, requestObject=body, responseStatus={"code": 201},
                 user={"username": user, "groups": list(groups)}, level="RequestResponse")


def facts_of(raw: dict) -> dict:
    ref = raw["objectRef"]
    obj, _ = effective_object(raw["verb"], raw.get("requestObject"), raw.get("responseObject"), raw["responseStatus"]["code"])
    return body_facts(ref["resource"], ref.get("subresource"), obj, raw["user"]["username"], raw["user"]["groups"])


def test_client_certificate_for_system_masters():
    facts = facts_of(csr_event(pkcs10("backdoor", groups=["system:masters"]), "kubernetes.io/kube-apiserver-client"))
    assert facts == {
        "csr_signer": "kubernetes.io/kube-apiserver-client", "csr_usages": "client auth", "csr_subject_cn": "backdoor",
        "csr_subject_groups": "system:masters", "csr_sans": None, "csr_request_unreadable": None,
        "csr_risks": "apiserver_client_signer,masters_group", "csr_decision": None, "csr_approved_signer": None,
    }


def test_kubelet_serving_csr_from_its_own_node_is_benign():
    node = "system:node:ip-10-0-1-5.ec2.internal"
    raw = csr_event(pkcs10(node, groups=["system:nodes"], dns=["ip-10-0-1-5.ec2.internal"], ips=["10.0.1.5"]),
                    "kubernetes.io/kubelet-serving", usages=("digital signature", "server auth"), user=node,
                    groups=("system:bootstrappers", "system:nodes", "system:authenticated"))
    facts = facts_of(raw)
    assert facts["csr_risks"] is None
    assert facts["csr_sans"] == "dns:ip-10-0-1-5.ec2.internal,ip:10.0.1.5"


def test_node_identity_asked_for_by_someone_else():
    facts = facts_of(csr_event(pkcs10("system:node:ip-10-0-9-9.ec2.internal", groups=["system:nodes"]),
                               "kubernetes.io/kube-apiserver-client-kubelet"))
    assert facts["csr_risks"] == "node_cn_foreign,nodes_group_not_node"


def test_control_plane_name_and_requester_from_the_stored_spec():
    """The API server writes spec.username/groups from the caller: they win over what the event's user field says."""
    stored = {"kind": "CertificateSigningRequest", "spec": {"signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"],
                                                            "request": pkcs10("system:kube-controller-manager"),
                                                            "username": "system:serviceaccount:ci:deployer", "groups": []}}
    facts = csr_facts(stored, requester="system:node:ip-10-0-1-5.ec2.internal", requester_groups=["system:nodes"])
    assert facts["csr_risks"] == "apiserver_client_signer,system_cn"


def test_every_cn_is_judged():
    assert csr_risks(None, ["innocent", "system:node:other"], [], "system:node:me", ["system:nodes"]) == ["node_cn_foreign"]


def test_der_request_is_read_too():
    assert facts_of(csr_event(pkcs10("x", encoding=serialization.Encoding.DER), "example.com/signer"))["csr_subject_cn"] == "x"


@pytest.mark.parametrize("request_value,reason", [
    ("not base64!", "base64"),
    ("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0=", "pem"),  # the shared fixture's truncated PEM header
    (base64.b64encode(b"\x30\x03\x02\x01\x00").decode(), "der"),
    ("A" * 70_000, "size"),
])
def test_unreadable_requests_are_named_and_the_signer_still_judged(request_value, reason):
    assert reason in UNREADABLE
    facts = facts_of(csr_event(request_value, "kubernetes.io/kube-apiserver-client"))
    assert (facts["csr_request_unreadable"], facts["csr_risks"], facts["csr_subject_cn"]) == (reason, "apiserver_client_signer", None)


def test_shared_fixture_csr_is_read():
    raw = json.loads((SHARED_FIXTURES / "k8s_client_certificate_created__00_EKS_client_certificate_CSR_created.json").read_text())
    facts = csr_facts(raw["requestObject"], raw["user"]["username"])
    assert (facts["csr_signer"], facts["csr_request_unreadable"], facts["csr_risks"]) == (
        "kubernetes.io/kube-apiserver-client", "pem", "apiserver_client_signer")


def test_approval_names_the_approved_signer():
    approved = {"conditions": [{"type": "Approved", "status": "True", "reason": "KubectlApprove", "message": "approved"}]}
    raw = csr_event(pkcs10("backdoor", groups=["system:masters"]), "kubernetes.io/kube-apiserver-client", verb="update",
                    subresource="approval", status=approved, user="eng:bob")
    facts = facts_of(raw)
    assert (facts["csr_decision"], facts["csr_approved_signer"], facts["csr_subject_groups"]) == (
        "Approved", "kubernetes.io/kube-apiserver-client", "system:masters")


def test_denial_and_status_outside_the_approval_subresource():
    denied = {"conditions": [{"type": "Denied", "status": "True"}]}
    assert facts_of(csr_event(None, "kubernetes.io/kube-apiserver-client", verb="update", subresource="approval",
                              status=denied))["csr_approved_signer"] is None
    approved = {"conditions": [{"type": "Approved", "status": "True"}]}
    assert facts_of(csr_event(None, "kubernetes.io/kube-apiserver-client", status=approved))["csr_decision"] is None


def test_approval_without_spec_still_records_the_decision():
    body = {"kind": "CertificateSigningRequest", "metadata": {"name": "csr-z35wx5za"},
            "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "KubectlApprove"}]}}
    facts = body_facts("certificatesigningrequests", "approval", body, "system:serviceaccount:argocd:argocd-application-controller")
    assert (facts["csr_decision"], facts["csr_signer"], facts["csr_risks"]) == ("Approved", None, None)


def test_declarations():
    assert len(set(COLUMN_NAMES)) == len(COLUMN_NAMES)
    assert set(RISKS) == {"apiserver_client_signer", "masters_group", "nodes_group_not_node", "node_cn_foreign", "system_cn"}


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=600), st.text(max_size=60))
def test_any_request_bytes_never_raise(junk, text):
    for value in (base64.b64encode(junk).decode(), text, base64.b64encode(b"-----BEGIN CERTIFICATE REQUEST-----\n" + junk).decode()):
        facts = csr_facts({"spec": {"signerName": "kubernetes.io/kube-apiserver-client", "request": value}})
        assert facts["csr_request_unreadable"] in (None, *UNREADABLE)
