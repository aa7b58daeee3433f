"""Hermetic AWS for tests: one moto server on 127.0.0.1 per session, fake credentials, a guard.

Every test in this folder gets ``AWS_ENDPOINT_URL`` pointing at the moto server (boto3
reads it itself, the code under test never sees an endpoint), fake credentials,
``us-east-1``, no shared config files, and a clean moto state. A socket guard fails the
test on any attempt to resolve or connect to a non-loopback address, so a missing
endpoint override can never reach real AWS.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from moto.server import ThreadedMotoServer

from pipeline.aws import session as aws_session
from pipeline.config import parse_config
from pipeline.context import RunContext
from pipeline.stages.train import build_detector

REGION = "us-east-1"
ACCOUNT = "111122223333"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _is_loopback(host) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="session")
def moto_url():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def hermetic_aws(moto_url, monkeypatch, tmp_path):
    """Fake credentials and region, endpoint on moto, clean moto state, real endpoints blocked."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL_")]:
        monkeypatch.delenv(name)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "MOTO_ACCOUNT_ID": ACCOUNT,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _is_loopback(moto_url.split("//", 1)[1].rsplit(":", 1)[0])

    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(host) -> None:
        if not _is_loopback(host):
            pytest.fail(f"test tried to reach {host}: AWS tests must only talk to the moto server", pytrace=False)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(address[0])
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(address[0])
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        check(host.decode() if isinstance(host, bytes) else host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10).read()
    yield


@pytest.fixture
def make_config():
    """Build a validated Config from nested overrides (the same parser the CLI uses)."""

    def build(**sections):
        return parse_config({"cluster": "demo", "aws": {"max_attempts": 3}, **sections}, "<test>")

    return build


@pytest.fixture
def client_events(monkeypatch):
    """Register botocore event handlers on every client the code under test creates.

    ``client_events("before-parameter-build.sagemaker.CreateTrainingJob", handler)`` sees
    the API parameters; a ``before-send`` handler that returns an ``AWSResponse`` injects faults
    that go through botocore's real retry logic.
    """
    handlers: list[tuple[str, object]] = []
    original = aws_session.client

    def client(service, config=None, region=None):
        made = original(service, config, region)
        for event, handler in handlers:
            made.meta.events.register(event, handler)
        return made

    monkeypatch.setattr(aws_session, "client", client)
    return lambda event, handler: handlers.append((event, handler))


@pytest.fixture
def bucket(make_config):
    name = "auditsift-test"
    aws_session.client("s3", make_config()).create_bucket(Bucket=name)
    return name


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def audit_event(audit_id: str, when: datetime, *, stage: str = "ResponseComplete", verb: str = "get",
                resource: str = "pods", namespace: str = "default", name: str = "web-0", code: int = 200,
                user: str = "alice", source_ip: str = "203.0.113.7") -> dict:
    """An audit.k8s.io/v1 Event shaped like EKS writes it (IAM identity in user.extra, EKS access policy reason)."""
    arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/DevOps/{user}"
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": stage,
        "requestURI": f"/api/v1/namespaces/{namespace}/{resource}/{name}",
        "verb": verb,
        "user": {
            "username": arn,
            "uid": f"aws-iam-authenticator:{ACCOUNT}:AROAEXAMPLEID{user.upper()}",
            "groups": ["system:authenticated"],
            "extra": {
                "accessKeyId": ["ASIAEXAMPLEKEY000001"],
                "arn": [arn],
                "canonicalArn": [f"arn:aws:iam::{ACCOUNT}:role/DevOps"],
                "principalId": [f"AROAEXAMPLEID{user.upper()}"],
                "sessionName": [user],
            },
        },
        "sourceIPs": [source_ip],
        "userAgent": "kubectl/v1.29.3 (linux/amd64) kubernetes/6813625",
        "objectRef": {"resource": resource, "namespace": namespace, "name": name, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": iso(when - timedelta(milliseconds=3)),
        "stageTimestamp": iso(when),
        "annotations": {
            "authorization.k8s.io/decision": "allow",
            "authorization.k8s.io/reason": f'EKS Access Policy: allowed by ClusterRoleBinding "{arn}" of ClusterRole '
                                           '"arn:aws:eks::aws:cluster-access-policy/AmazonEKSViewPolicy"',
        },
    }


@pytest.fixture
def make_event():
    """The ``audit_event`` factory."""
    return audit_event


def sagemaker_detector(config, storage):
    """A fresh sagemaker-rcf detector as ``auditsift train`` builds it: through the one registry, its hyperparameters
    and threshold rule from ``config.model``."""
    config = config.model_copy(update={"model": config.model.model_copy(update={"backend": "sagemaker-rcf"})})
    return build_detector(RunContext(storage, config, "test-run"))
