"""What a CertificateSigningRequest asks for: signer, usages, and the identity inside its PKCS#10 request.

A certificate from the ``kubernetes.io/kube-apiserver-client`` signer authenticates to the API server
as whatever its subject says (CN the user, O the groups) until it expires: Kubernetes cannot revoke it.
So a CSR asking for ``system:masters``, for ``system:nodes`` by someone who is not a node, or for a
node's or a control-plane component's name, and the approval of such a request, are how stolen access
is made permanent. ``csr_facts`` decodes ``spec.request`` (base64 of a PEM ``CERTIFICATE REQUEST``)
with ``cryptography``; a request that does not decode yields a named ``csr_request_unreadable``
marker to count, never an exception. Pure: decoded JSON in, a dict of ``COLUMNS`` out.
"""
from __future__ import annotations

import base64
import binascii
import re

import pyarrow as pa
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

from features.derived import DerivedColumn, bounded, joined, text

MAX_REQUEST_CHARS = 65_536  # base64 characters of spec.request decoded; real requests are about 1 KB
MAX_NAMES = 64

APISERVER_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client"

COLUMNS: tuple[DerivedColumn, ...] = (
    DerivedColumn("csr_signer", pa.string(), "spec.signerName (replaces events.py's)", "which signer would issue the certificate"),
    DerivedColumn("csr_usages", pa.string(), "spec.usages (replaces events.py's)", "client auth, server auth, ... comma-joined"),
    DerivedColumn("csr_subject_cn", pa.string(), "spec.request (PKCS#10) subject CN",
                  "the user name the certificate would authenticate as"),
    DerivedColumn("csr_subject_groups", pa.string(), "spec.request subject O",
                  "the groups the certificate would carry (system:masters is cluster-admin that RBAC cannot take away)"),
    DerivedColumn("csr_sans", pa.string(), "spec.request subjectAltName extension",
                  "dns:/ip:/uri:/email: names of a serving certificate, comma-joined"),
    DerivedColumn("csr_request_unreadable", pa.string(), "spec.request",
                  "why a present spec.request did not decode (UNREADABLE): base64, pem, der, size, subject, extensions; "
                  "count it, and judge the CSR by its signer alone"),
    DerivedColumn("csr_risks", pa.string(), "signer, subject, requester (spec.username/groups, else the event's user)",
                  "the RISKS the request carries, comma-joined"),
    DerivedColumn("csr_decision", pa.string(), "status.conditions of a certificatesigningrequests/approval write",
                  "Approved or Denied (the approval subresource only: status in any other body is ignored by the server)"),
    DerivedColumn("csr_approved_signer", pa.string(), "spec.signerName of an approval that approves",
                  "the signer whose certificate was just approved: an approved kube-apiserver-client CSR is a credential minted"),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)

UNREADABLE: dict[str, str] = {
    "size": f"spec.request longer than {MAX_REQUEST_CHARS:,} characters: not decoded",
    "base64": "spec.request is not base64 (the API server stores bytes, which JSON carries as base64)",
    "pem": "the bytes are PEM-framed but hold no readable CERTIFICATE REQUEST",
    "der": "the bytes are neither PEM nor a DER-encoded PKCS#10 request",
    "subject": "the request decoded but its subject did not",
    "extensions": "the request decoded but its extensions did not (the SANs are unknown)",
}

RISKS: dict[str, str] = {
    "apiserver_client_signer": "a client certificate for the API server: valid until it expires, it cannot be revoked",
    "masters_group": "the subject asks for system:masters: cluster-admin that no RBAC change can take away",
    "nodes_group_not_node": "the subject asks for system:nodes, but the requester is not a node: a node's powers for someone else",
    "node_cn_foreign": "the CN is system:node:<name> and the requester is not that node: impersonating a kubelet",
    "system_cn": "the CN names a control-plane identity (system:kube-controller-manager, system:admin, ...)",
}

_WHITESPACE = re.compile(r"\s+")


def _names(name: x509.Name, oid) -> list[str]:
    return [bounded(str(a.value), 256) for a in name.get_attributes_for_oid(oid)[:MAX_NAMES]]


def _san(entry) -> str:
    prefix = {x509.DNSName: "dns", x509.IPAddress: "ip", x509.UniformResourceIdentifier: "uri", x509.RFC822Name: "email"}
    return f"{prefix.get(type(entry), type(entry).__name__)}:{bounded(str(entry.value), 256)}"


def decode_request(value: str) -> tuple[dict[str, list[str]], str | None]:
    """The subject CNs ("cn"), organisations ("groups") and SANs ("sans") of a base64 PEM (or DER) PKCS#10
    request, as lists, and why it did not decode (UNREADABLE) or None; what decoded before a failure is kept."""
    names: dict[str, list[str]] = {"cn": [], "groups": [], "sans": []}
    if len(value) > MAX_REQUEST_CHARS:
        return names, "size"
    try:
        data = base64.b64decode(_WHITESPACE.sub("", value), validate=True)
    except (binascii.Error, ValueError):
        return names, "base64"
    pem = data.lstrip().startswith(b"-----BEGIN")
    try:
        request = x509.load_pem_x509_csr(data) if pem else x509.load_der_x509_csr(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return names, "pem" if pem else "der"
    try:
        names["cn"] = _names(request.subject, NameOID.COMMON_NAME)
        names["groups"] = _names(request.subject, NameOID.ORGANIZATION_NAME)
    except ValueError:
        return names, "subject"
    try:
        sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names, None
    except (ValueError, TypeError):
        return names, "extensions"
    names["sans"] = [_san(entry) for entry in list(sans)[:MAX_NAMES]]
    return names, None


def _is_node(user: str | None, groups) -> bool:
    return (user or "").startswith("system:node:") or "system:nodes" in groups


def _is_bootstrapper(user: str | None, groups) -> bool:
    return (user or "").startswith("system:bootstrap:") or "system:bootstrappers" in groups


def csr_risks(signer: str | None, cns: list[str], groups: list[str], requester: str | None, requester_groups) -> list[str]:
    """The RISKS of a request for ``cns``/``groups`` from ``signer`` by ``requester`` (None: unknown, judged as not a
    node). Every CN is judged: Go's x509 reads the last one, other parsers the first."""
    requester_groups = [g for g in requester_groups if isinstance(g, str)]
    node, bootstrapper = _is_node(requester, requester_groups), _is_bootstrapper(requester, requester_groups)
    risks = []
    if signer == APISERVER_CLIENT_SIGNER:
        risks.append("apiserver_client_signer")
    if "system:masters" in groups:
        risks.append("masters_group")
    if "system:nodes" in groups and not node and not bootstrapper:
        risks.append("nodes_group_not_node")
    if any(cn.startswith("system:node:") and cn != requester for cn in cns) and not bootstrapper:
        risks.append("node_cn_foreign")
    if any(cn.startswith("system:") and not cn.startswith("system:node:") for cn in cns):
        risks.append("system_cn")
    return risks


def csr_facts(obj, requester: str | None = None, requester_groups=(), approval: bool = False) -> dict:
    """The COLUMNS of a written CertificateSigningRequest (create, or the approval subresource when
    ``approval``). The requester is the object's spec.username/spec.groups (the API server sets them from
    the authenticated caller) when present, else ``requester``/``requester_groups`` (the event's user)."""
    if not isinstance(obj, dict):
        return {}
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        if not approval:
            return {}
        spec = {}  # an approval body may carry status alone: the decision still counts, the signer is the CSR's create event's
    signer = bounded(text(spec.get("signerName")), 256)
    usages = spec.get("usages")
    facts = {name: None for name in COLUMN_NAMES}
    facts["csr_signer"] = signer
    facts["csr_usages"] = joined(text(u) for u in usages[:MAX_NAMES]) if isinstance(usages, list) else None
    request = spec.get("request")
    names: dict[str, list[str]] = {"cn": [], "groups": [], "sans": []}
    if isinstance(request, str) and request:
        names, facts["csr_request_unreadable"] = decode_request(request)
    elif request not in (None, ""):
        facts["csr_request_unreadable"] = "base64"
    facts["csr_subject_cn"], facts["csr_subject_groups"], facts["csr_sans"] = (joined(names[k]) for k in ("cn", "groups", "sans"))
    if isinstance(spec.get("username"), str):
        requester = spec["username"]
        requester_groups = spec.get("groups") if isinstance(spec.get("groups"), list) else ()
    facts["csr_risks"] = joined(csr_risks(signer, names["cn"], names["groups"], requester, requester_groups or ()))
    if approval:
        conditions = obj.get("status", {}).get("conditions") if isinstance(obj.get("status"), dict) else None
        decided = [c.get("type") for c in conditions[:MAX_NAMES] if isinstance(c, dict) and c.get("type") in ("Approved", "Denied")
                   and c.get("status", "True") == "True"] if isinstance(conditions, list) else []
        facts["csr_decision"] = "Denied" if "Denied" in decided else ("Approved" if decided else None)
        facts["csr_approved_signer"] = signer if facts["csr_decision"] == "Approved" else None
    return facts
