"""Peer groups of entities: identities and addresses that should be judged against their own kind.

A human engineer's hour is far more varied than a kubelet's; an internet address is not
a VPC address. The model's threshold is calibrated per group (pipeline.stages.run_train),
so "unusual" means unusual for this kind of entity, not merely different from the
machine-dominated bulk of the cluster.
"""
from __future__ import annotations

from features.addresses import AddressBook

USER_GROUPS = ("anonymous", "node", "control-plane", "kube-system-sa", "service-account", "human")
IP_GROUPS = ("ip-loopback", "ip-private", "ip-aws", "ip-public", "ip-invalid")


def user_group(username: str | None) -> str:
    """The peer group of an identity, from the shape of its username."""
    if not username or username in ("system:anonymous", "system:unauthenticated"):
        return "anonymous"
    if username.startswith("system:node:"):
        return "node"
    if username.startswith("system:serviceaccount:kube-system:"):
        return "kube-system-sa"
    if username.startswith("system:serviceaccount:"):
        return "service-account"
    if username.startswith(("system:", "eks:")):
        return "control-plane"
    return "human"


def entity_group(entity_type: str, entity: str, addresses: AddressBook) -> str:
    if entity_type == "user":
        return user_group(entity)
    return f"ip-{addresses.classify(entity)[0]}"
