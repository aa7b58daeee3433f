"""A controller's copies of a template written in the same pass repeat its author's choice (features.copies)."""
from __future__ import annotations

from features.copies import WorkloadWrite, template_copies
from features.rules import SEVERITIES

SEVERITY = {"privileged_workload_created": "high", "pod_created_in_system_namespace": "medium", "exec_reverse_shell": "critical"}


def severity(rule: str) -> int:
    return SEVERITIES.index(SEVERITY[rule])


def write(at: int, resource: str, name: str, rules: set, owner: str | None = None, copy: bool = False, namespace: str = "default",
          user: str = "ci-deployer") -> WorkloadWrite:
    return WorkloadWrite((at, 0), resource, namespace, name, owner, copy, frozenset(rules), (("user", user, "T"),))


PRIVILEGED = {"privileged_workload_created"}
CRONJOB = write(3_000, "cronjobs", "log-rotate", PRIVILEGED)
JOB = write(4_000, "jobs", "log-rotate-29391", PRIVILEGED, "CronJob/log-rotate", True, user="system:serviceaccount:kube-system:cronjob-controller")
POD = write(4_001, "pods", "", PRIVILEGED, "Job/log-rotate-29391", True, user="system:serviceaccount:kube-system:job-controller")


def test_a_cronjobs_jobs_and_their_pods_repeat_the_template_written_earlier_in_the_pass():
    found = template_copies([POD, JOB, CRONJOB], severity)  # any input order: time decides
    assert [(w.resource, sorted(rules), template) for w, rules, template in found] == [
        ("jobs", ["privileged_workload_created"], "cronjobs default/log-rotate"),
        ("pods", ["privileged_workload_created"], "cronjobs default/log-rotate")]


def test_the_template_itself_and_copies_of_a_template_written_before_the_pass_count_in_full():
    assert template_copies([CRONJOB], severity) == []
    assert template_copies([JOB, POD], severity)[0][0] is POD  # the Job is the oldest write seen: its pods copy it
    assert template_copies([POD], severity) == []


def test_an_owner_on_a_workload_a_person_wrote_is_not_a_copy():
    """ownerReferences are in the body the client sends: a person's privileged pod naming the CronJob as its owner
    is the person's own choice."""
    forged = write(5_000, "pods", "shell", PRIVILEGED, "CronJob/log-rotate", copy=False, user="mallory@corp.example")
    assert template_copies([CRONJOB, forged], severity) == []


def test_a_daemonsets_pods_repeat_a_less_severe_rule_but_not_a_more_severe_one():
    daemonset = write(1_000, "daemonsets", "kube-proxy-agent", PRIVILEGED, namespace="kube-system", user="dave@corp.example")
    pod = write(2_000, "pods", "", {"privileged_workload_created", "pod_created_in_system_namespace", "exec_reverse_shell"},
                "DaemonSet/kube-proxy-agent", True, namespace="kube-system", user="system:serviceaccount:kube-system:daemon-set-controller")
    (found, repeated, template), = template_copies([daemonset, pod], severity)
    assert found is pod and template == "daemonsets kube-system/kube-proxy-agent"
    assert repeated == {"privileged_workload_created", "pod_created_in_system_namespace"}


def test_a_copy_in_another_namespace_than_its_owner_is_not_its_copy():
    elsewhere = write(4_000, "jobs", "log-rotate-29391", PRIVILEGED, "CronJob/log-rotate", True, namespace="web",
                      user="system:serviceaccount:kube-system:cronjob-controller")
    assert template_copies([CRONJOB, elsewhere], severity) == []
