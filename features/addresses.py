"""Source address and client classification: loopback, VPC, AWS-owned, public; threat lists; UA families.

Pure lookups over values; callers pass the AWS ranges and threat list already loaded
(``load_ip_ranges`` reads the JSON text of AWS's ip-ranges.json, the pipeline finds the file).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache

import orjson

ADDRESS_CLASSES = ("loopback", "private", "aws", "public", "invalid")
_PRIVATE_NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fd00::/8", "169.254.0.0/16", "fe80::/10")]


@dataclass
class AddressBook:
    """Networks that change how a source address is read: AWS-owned ranges and a threat list (CIDRs)."""

    aws_networks: list = field(default_factory=list)
    threat_networks: list = field(default_factory=list)

    def __post_init__(self):
        self._aws = _by_version(self.aws_networks)
        self._threats = _by_version(self.threat_networks)
        self._cache: dict[str, tuple[str, bool]] = {}

    def classify(self, value: str | None) -> tuple[str, bool]:
        """(address class, on the threat list) for one source address."""
        if value is None:
            return "invalid", False
        cached = self._cache.get(value)
        if cached is not None:
            return cached
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            result = ("invalid", False)
        else:
            threat = _contains(self._threats, address)
            if address.is_loopback:
                result = ("loopback", threat)
            elif any(address in net for net in _PRIVATE_NETS if net.version == address.version):
                result = ("private", threat)
            elif _contains(self._aws, address):
                result = ("aws", threat)
            else:
                result = ("public", threat)
        if len(self._cache) < 1_000_000:
            self._cache[value] = result
        return result


def _by_version(networks: list) -> dict[int, list]:
    grouped: dict[int, list] = {4: [], 6: []}
    for net in networks:
        grouped[net.version].append(net)
    return grouped


def _contains(grouped: dict[int, list], address) -> bool:
    return any(address in net for net in grouped.get(address.version, ()))


def load_ip_ranges(text: bytes | str) -> list:
    """Networks from AWS's ip-ranges.json (``prefixes[].ip_prefix`` and ``ipv6_prefixes[].ipv6_prefix``)."""
    data = orjson.loads(text)
    nets = [ipaddress.ip_network(p["ip_prefix"], strict=False) for p in data.get("prefixes", []) if "ip_prefix" in p]
    nets += [ipaddress.ip_network(p["ipv6_prefix"], strict=False) for p in data.get("ipv6_prefixes", []) if "ipv6_prefix" in p]
    return _collapse(nets)


def load_threat_list(text: str) -> list:
    """CIDRs or addresses, one per line; '#' starts a comment (GuardDuty's plaintext threat list format)."""
    nets = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"threat list line {number}: {entry!r} is not an address or CIDR") from None
    return _collapse(nets)


def _collapse(nets: list) -> list:
    v4 = list(ipaddress.collapse_addresses(n for n in nets if n.version == 4))
    v6 = list(ipaddress.collapse_addresses(n for n in nets if n.version == 6))
    return v4 + v6


_UA_FAMILIES = (
    ("kubectl", re.compile(r"^kubectl[/-]", re.I)),
    ("kubelet", re.compile(r"^kubelet/", re.I)),
    ("helm", re.compile(r"^helm/", re.I)),
    ("curl", re.compile(r"^curl/", re.I)),
    ("wget", re.compile(r"^wget/", re.I)),
    ("python", re.compile(r"python|aiohttp|urllib|kubernetes/python", re.I)),
    ("go-http", re.compile(r"^Go-http-client/", re.I)),
    ("browser", re.compile(r"^Mozilla/", re.I)),
    ("aws-sdk", re.compile(r"aws-sdk|botocore|Boto3|aws-cli", re.I)),
    ("scanner", re.compile(r"zgrab|masscan|nmap|nuclei|censys|shodan|kube-hunter|kubescape|nikto", re.I)),
    ("probe", re.compile(r"^kube-probe/|ELB-HealthChecker", re.I)),
    ("controller", re.compile(r"^[\w.\-]+/v?[\d.]+.*\(.*\) kubernetes/|^[\w.\-]+/v\d", re.I)),
)


@lru_cache(maxsize=65536)
def user_agent_family(user_agent: str | None) -> str:
    """The client family of a userAgent: kubectl vs curl vs a controller binary. A change is a classic tell."""
    if not isinstance(user_agent, str) or not user_agent:
        return "none"
    for family, pattern in _UA_FAMILIES:
        if pattern.search(user_agent):
            return family
    return "other"


INTERACTIVE_FAMILIES = frozenset({"kubectl", "helm", "browser"})
SCRIPTED_FAMILIES = frozenset({"curl", "wget", "python", "go-http", "scanner", "other", "none"})
