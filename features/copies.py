"""Controller copies of a workload template: rule hits that only repeat the template's own.

Whoever writes a workload template (a CronJob, a DaemonSet, a Deployment) chooses what its pods run; the
controllers then write copies of it, hour after hour: a CronJob's Jobs (cronjob-controller), their Pods
(job-controller), a DaemonSet's Pods on every node. A privileged template written today makes each copy fire
the same rule as the template, under the controllers' identities and the control plane's address: a
dozen findings that say nothing the template's write did not, ranked above other intrusions.

``template_copies`` finds those hits. A write is a copy when a controller identity wrote it with an owner
(``features.flags.controller_copy``: ownerReferences alone are the client's to set). When its owner, or its
owner's owner, was written earlier in the same pass with rules firing, the copy's hits repeat what the
template's author chose: every rule it fires that is no more severe than the worst the template chain fired
(a DaemonSet's privileged template and its pods "created in kube-system"). The score stage counts such a hit
as it counts an entity's routine (``pipeline.stages.score.rule_parts``): shown, marked with the template it
copies, weighing a quarter and never flagging alone. The template's write keeps its full weight; a copy whose
template was written before the pass, or with no rule firing, counts in full, and so does a hit more severe
than its template's. Pure: writes in, hits out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

# ownerReferences' kinds and the resources their objects are written as (features.writes.WORKLOADS).
OWNER_RESOURCES = {"Pod": "pods", "ReplicaSet": "replicasets", "Deployment": "deployments", "DaemonSet": "daemonsets",
                   "StatefulSet": "statefulsets", "Job": "jobs", "CronJob": "cronjobs"}


@dataclass(frozen=True)
class WorkloadWrite:
    """A workload write on which rules fired, as the score pass keeps it (``order``: its time, then its number)."""

    order: tuple
    resource: str
    namespace: str
    name: str
    owner: str | None  # features.writes.workload_owner: "Kind/name"
    copy: bool  # written by a controller identity with an owner (features.flags.controller_copy)
    rules: frozenset
    records: tuple  # the (entity_type, entity, window_start) records it counts in


def template_copies(writes: Iterable[WorkloadWrite], severity: Callable[[str], int]) -> list[tuple[WorkloadWrite, frozenset, str]]:
    """(write, the rules it only repeats, the template it copies as "resource namespace/name") for every copy among
    ``writes`` whose owner chain was written earlier, in ``order``, with rules firing; ``severity``: a rule's
    severity as a number that grows with it."""
    chains: dict[tuple[str, str, str], tuple[int, str]] = {}  # object -> (worst severity its chain fired, template)
    found = []
    for write in sorted(writes, key=lambda w: w.order):
        key = (write.resource, write.namespace, write.name)
        inherited = chains.get(_owner_key(write)) if write.copy else None
        worst = max(map(severity, write.rules), default=-1)
        if inherited is None:
            if write.name:
                chains[key] = (worst, f"{write.resource} {write.namespace}/{write.name}" if write.namespace else f"{write.resource} {write.name}")
            continue
        chained, template = inherited
        if repeated := frozenset(rule for rule in write.rules if severity(rule) <= chained):
            found.append((write, repeated, template))
        if write.name:
            chains[key] = (max(chained, worst), template)
    return found


def _owner_key(write: WorkloadWrite) -> tuple[str, str, str] | None:
    kind, _, name = (write.owner or "").partition("/")
    resource = OWNER_RESOURCES.get(kind)
    return (resource, write.namespace, name) if resource and name else None
