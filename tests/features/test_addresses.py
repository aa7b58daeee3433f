"""Source addresses and clients as the flags read them: which addresses are the VPC's, AWS's, the
internet's or on the threat list, and which client family a userAgent belongs to."""
from __future__ import annotations

import json

import pytest

from features.addresses import AddressBook, load_ip_ranges, load_threat_list, user_agent_family
from tests.features.tables import ADDRESSES


@pytest.mark.parametrize("address, expected", [
    ("10.0.12.34", "private"), ("172.16.0.9", "private"), ("172.31.255.254", "private"), ("192.168.1.20", "private"),
    ("100.64.3.3", "private"),  # carrier-grade NAT space (EKS pod networking with custom networking)
    ("fd12:3456::1", "private"), ("169.254.169.254", "private"),  # instance metadata: link-local, never the internet
    ("127.0.0.1", "loopback"), ("::1", "loopback"),
    ("52.95.4.10", "aws"), ("172.32.0.1", "public"), ("198.51.100.7", "public"), ("2001:db8::7", "public"),
    ("not-an-address", "invalid"), ("", "invalid"), (None, "invalid"), ("10.0.0.1, 198.51.100.7", "invalid"),
])
def test_address_classes(address, expected):
    assert ADDRESSES.classify(address)[0] == expected


def test_a_private_address_on_the_threat_list_stays_private_and_is_marked():
    book = AddressBook([], load_threat_list("10.0.99.0/24\n"))
    assert book.classify("10.0.99.5") == ("private", True)
    assert book.classify("10.0.98.5") == ("private", False)
    assert ADDRESSES.classify("203.0.113.66") == ("public", True)


def test_aws_ranges_are_read_from_ip_ranges_json_for_both_address_families():
    text = json.dumps({"syncToken": "1", "prefixes": [{"ip_prefix": "3.5.140.0/22", "region": "ap-northeast-2", "service": "AMAZON"},
                                                      {"region": "x"}],
                       "ipv6_prefixes": [{"ipv6_prefix": "2600:1f14::/35", "service": "EC2"}]})
    book = AddressBook(load_ip_ranges(text))
    assert book.classify("3.5.141.9")[0] == "aws" and book.classify("3.5.144.1")[0] == "public"
    assert book.classify("2600:1f14::10")[0] == "aws"


def test_threat_list_reads_comments_and_names_a_bad_line():
    assert [str(n) for n in load_threat_list("# GuardDuty list\n203.0.113.0/24  # scanners\n\n198.51.100.7\n")] == [
        "198.51.100.7/32", "203.0.113.0/24"]
    with pytest.raises(ValueError, match=r"threat list line 2: 'evil\.example' is not an address or CIDR"):
        load_threat_list("203.0.113.0/24\nevil.example\n")


@pytest.mark.parametrize("agent, family", [
    ("kubectl/v1.29.2 (darwin/arm64) kubernetes/4b8e819", "kubectl"), ("curl/8.4.0", "curl"), ("Wget/1.21", "wget"),
    ("python-requests/2.31.0", "python"), ("OpenAPI-Generator/28.1.0/python", "python"), ("Go-http-client/1.1", "go-http"),
    ("Mozilla/5.0 (X11; Linux x86_64)", "browser"), ("Boto3/1.34.0", "aws-sdk"),
    ("aws-cli/2.15.0 Python/3.11", "python"),  # its Python/ marker matches first: a scripted client either way
    ("masscan/1.3", "scanner"), ("kube-probe/1.29", "probe"), ("ELB-HealthChecker/2.0", "probe"),
    ("kube-controller-manager/v1.29.0 (linux/amd64) kubernetes/abc/system:serviceaccount:kube-system:x", "controller"),
    ("kubelet/v1.29.0 (linux/amd64) kubernetes/abc", "kubelet"), ("", "none"), (None, "none"), ("my tool", "other"),
])
def test_user_agent_families(agent, family):
    assert user_agent_family(agent) == family
