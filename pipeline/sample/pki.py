"""Real PKCS#10 certificate requests for CertificateSigningRequest bodies.

Readers decode `spec.request` to learn what a CSR asks for (subject CN is the username, O
the groups), so the sample carries real, parseable requests. Keys are derived from a seeded
secret and signed with deterministic ECDSA (RFC 6979), so the same seed gives the same bytes.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 group order


@functools.lru_cache(maxsize=256)
def _key(secret: str) -> ec.EllipticCurvePrivateKey:
    n = int.from_bytes(hashlib.sha256(secret.encode()).digest(), "big") % (_ORDER - 1) + 1
    return ec.derive_private_key(n, ec.SECP256R1())


@functools.lru_cache(maxsize=256)
def csr_request(secret: str, cn: str, orgs: tuple[str, ...] = (), dns: tuple[str, ...] = (),
                ips: tuple[str, ...] = ()) -> str:
    """`spec.request` of a CSR: base64 of the PEM PKCS#10 for subject CN=`cn`, O=`orgs`, with
    optional DNS/IP subject alternative names (as a kubelet's serving request has)."""
    import ipaddress
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
                     + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    req = builder.sign(_key(secret), hashes.SHA256(), ecdsa_deterministic=True)
    return base64.b64encode(req.public_bytes(serialization.Encoding.PEM)).decode()
