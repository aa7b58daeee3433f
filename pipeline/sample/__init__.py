"""Realistic, labelled sample data: days of EKS audit logs with attacks in the last day.

`generate_sample` simulates one EKS cluster (kubelets, control plane, EKS-managed identities,
add-ons, application service accounts, engineers, CI, internet scanners) and injects about ten
seeded attack scenarios into the last day, so a pipeline can learn per-identity baselines on
the earlier days and be scored on the last 24 hours against `labels.json`, whose `end` is the
clock a run scoring that day is for (`sample_clock`, `auditsift run --now`).
"""

from .generate import generate_sample, sample_clock

__all__ = ["generate_sample", "sample_clock"]
