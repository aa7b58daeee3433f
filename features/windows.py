"""Per-entity window features: the registry and the finalise step.

``finalise`` turns merged partial aggregates (features.aggregate) into the feature
table, in time order, with novelty and baseline-relative features computed against
each entity's own earlier windows.

Every window feature is declared once in ``WINDOW_FEATURES`` (name, what it reads, why
it indicates compromise); the model, the report, the docs and the tests use that list.
"""
from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass
from itertools import chain
from typing import Callable

import numpy as np
import pandas as pd

from features.aggregate import (  # noqa: F401  (the map/reduce steps, re-exported beside finalise)
    KEY,
    PARTIAL_COLUMNS,
    SET_NAMES,
    empty_partials,
    partial_aggregates,
    reduce_partials,
)


@dataclass(frozen=True)
class WindowFeature:
    name: str
    reads: str
    why: str
    compute: Callable[[pd.DataFrame], pd.Series]


def _rate(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column] / frame["n"].clip(lower=1)


def _count(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda f: np.log1p(f[f"n_{name}"])


def _distinct(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda f: np.log1p(_list_lengths(f[name]))


def _novel(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda f: np.log1p(f[f"novel_{name}"])


WINDOW_FEATURES: tuple[WindowFeature, ...] = (
    WindowFeature("requests", "all requests", "volume: sweeps and scripted abuse are bursts", lambda f: np.log1p(f["n"])),
    WindowFeature("read_fraction", "verb", "an identity that normally writes now only reads (recon)", lambda f: _rate(f, "n_read")),
    WindowFeature("write_fraction", "verb", "an identity that normally reads now writes", lambda f: _rate(f, "n_write")),
    WindowFeature("list_fraction", "verb", "bulk list/watch: enumeration", lambda f: _rate(f, "n_list_or_watch")),
    WindowFeature("delete_fraction", "verb", "deletions: destruction, clean-up", lambda f: _rate(f, "n_delete")),
    WindowFeature("denied_401", "code", "authentication failures: stolen or expired credentials, brute force", _count("denied_401")),
    WindowFeature("denied_403", "code, decision", "authorization failures: probing beyond granted rights", _count("denied_403")),
    WindowFeature("deny_rate", "code, decision", "share of requests refused", lambda f: (f["n_denied_401"] + f["n_denied_403"]) / f["n"].clip(lower=1)),
    WindowFeature("not_found_404", "code", "guessing names", _count("not_found_404")),
    WindowFeature("conflict_409", "code", "racing writes", _count("conflict_409")),
    WindowFeature("server_errors", "code", "malformed or abusive requests", _count("server_error")),
    WindowFeature("distinct_namespaces", "objectRef.namespace", "reaching across namespaces", _distinct("namespaces")),
    WindowFeature("distinct_resources", "objectRef.resource", "touching many resource types: discovery", _distinct("resources")),
    WindowFeature("distinct_objects", "objectRef name", "touching many objects", _distinct("object_names")),
    WindowFeature("distinct_uris", "requestURI path", "many distinct paths: crawling the API", _distinct("uris")),
    WindowFeature("distinct_listed_resources", "verb list, resource", "listing many resource types in one window", _distinct("listed_resources")),
    WindowFeature("distinct_user_agents", "userAgent", "several clients for one identity: shared or stolen credentials", _distinct("user_agents")),
    WindowFeature("distinct_peers", "sourceIPs / user", "a user from many addresses, or an address used by many users", _distinct("peers")),
    WindowFeature("secret_reads", "secrets get/list/watch", "credential theft", _count("secret_read")),
    WindowFeature("distinct_secrets", "secret names", "a sweep reads many different Secrets", _distinct("secret_names")),
    WindowFeature("secret_denied", "secret reads refused", "probing for credentials", _count("secret_denied")),
    WindowFeature("secret_list_cluster_wide", "list /api/v1/secrets", "dumping every Secret", _count("secret_list_cluster_wide")),
    WindowFeature("secret_kube_system", "secrets in kube-system", "control-plane credentials", _count("secret_kube_system")),
    WindowFeature("secret_writes", "secrets create/update/delete", "planting or destroying credentials", _count("secret_write")),
    WindowFeature("token_requests", "serviceaccounts/token create", "minting tokens to persist", _count("token_request")),
    WindowFeature("csr_creates", "certificatesigningrequests create", "minting client certificates", _count("csr_create")),
    WindowFeature("aws_auth_reads", "configmaps/aws-auth get", "recon of IAM mappings", _count("aws_auth_read")),
    WindowFeature("aws_auth_writes", "configmaps/aws-auth write", "granting IAM principals cluster access", _count("aws_auth_write")),
    WindowFeature("kube_system_configmap_reads", "configmaps in kube-system", "control-plane recon", _count("kube_system_configmap_read")),
    WindowFeature("rbac_writes", "roles/bindings writes", "escalation and persistence", _count("rbac_write")),
    WindowFeature("admin_bindings", "binding roleRef/subjects", "cluster-admin handed out", _count("admin_binding")),
    WindowFeature("anonymous_bindings", "binding subjects", "rights granted to anonymous", _count("anonymous_binding")),
    WindowFeature("dangerous_roles", "role rules", "wildcard or escalate/bind/impersonate grants", _count("dangerous_role")),
    WindowFeature("impersonations", "impersonatedUser", "acting as someone else", _count("impersonation")),
    WindowFeature("webhook_writes", "admission webhook configurations", "interception and persistence", _count("webhook_write")),
    WindowFeature("execs", "pods/exec, attach", "shells in containers", _count("exec")),
    WindowFeature("exec_kube_system", "exec in kube-system", "shells in control-plane add-ons", _count("exec_kube_system")),
    WindowFeature("exec_suspicious", "exec command", "reverse shells, token reads, metadata endpoint", _count("exec_suspicious_command")),
    WindowFeature("portforwards", "pods/portforward", "tunnels into pods", _count("portforward")),
    WindowFeature("ephemeral_containers", "pods/ephemeralcontainers", "debug containers in running pods", _count("ephemeral_container")),
    WindowFeature("workload_creates", "workload create", "new code running", _count("workload_create")),
    WindowFeature("system_namespace_pods", "pods create in kube-system", "hiding among add-ons", _count("pod_in_system_namespace")),
    WindowFeature("privileged_workloads", "pod spec", "node takeover", _count("privileged_workload")),
    WindowFeature("persistence_workloads", "cronjobs/daemonsets create", "code that runs again and everywhere", _count("persistence_workload")),
    WindowFeature("permission_reviews", "selfsubjectaccessreviews/rulesreviews", "checking what stolen credentials can do", _count("permission_review")),
    WindowFeature("anonymous_allowed", "system:anonymous allowed", "unauthenticated access that works", _count("anonymous_allowed")),
    WindowFeature("events_deleted", "events delete", "erasing the record", _count("events_delete")),
    WindowFeature("deletecollections", "deletecollection", "bulk destruction", _count("deletecollection")),
    WindowFeature("public_source_fraction", "sourceIPs class", "share of requests from the internet", lambda f: _rate(f, "n_source_public")),
    WindowFeature("aws_source_fraction", "sourceIPs class, ip-ranges.json", "share of requests from AWS space outside the VPC", lambda f: _rate(f, "n_source_aws")),
    WindowFeature("threat_list_requests", "sourceIPs, threat list", "known-bad addresses", _count("source_threat_list")),
    WindowFeature("system_from_public", "system identity + public source", "control-plane identities from the internet", _count("system_from_public")),
    WindowFeature("service_account_from_outside", "SA identity + non-VPC source", "stolen pod tokens", _count("service_account_from_outside")),
    WindowFeature("scripted_fraction", "userAgent family", "curl/python instead of kubectl or a controller", lambda f: _rate(f, "n_scripted_client")),
    WindowFeature("new_peers", "history of sourceIPs / users", "first-seen address for this user (or user for this address)", _novel("peers")),
    WindowFeature("new_user_agents", "history of userAgent", "first-seen client for this entity", _novel("user_agents")),
    WindowFeature("new_ua_families", "history of client family", "client family change: kubectl to curl or a script", _novel("ua_families")),
    WindowFeature("new_verb_resources", "history of (verb, resource)", "first-seen action for this entity", _novel("verb_resources")),
    WindowFeature("new_namespaces", "history of namespaces", "first-seen namespace for this entity", _novel("namespaces")),
    WindowFeature("new_sensitive_actions", "history of sensitive flags", "a kind of sensitive action (secret read, RBAC write, exec, ...) this entity never did before",
                  lambda f: np.log1p(f["novel_sensitive"])),
    WindowFeature("new_entity", "history of the entity", "an identity or address never seen before", lambda f: f["entity_is_new"].astype(float)),
    WindowFeature("off_hours", "history of active hours", "activity at an hour this entity is never active", lambda f: f["is_off_hours"].astype(float)),
    WindowFeature("requests_vs_baseline", "request count history", "volume against this entity's own normal (robust z)", lambda f: f["z_requests"]),
    WindowFeature("denials_vs_baseline", "denial history", "refusals against this entity's own normal (robust z)", lambda f: f["z_denials"]),
    WindowFeature("resources_vs_baseline", "resource-type history", "breadth against this entity's own normal (robust z)", lambda f: f["z_resources"]),
)
FEATURE_NAMES = tuple(f.name for f in WINDOW_FEATURES)
FEATURE_BY_NAME = {f.name: f for f in WINDOW_FEATURES}
NOVELTY_SETS = ("peers", "user_agents", "ua_families", "verb_resources", "namespaces")
SENSITIVE_FLAGS = (
    "secret_read", "secret_denied", "secret_list_cluster_wide", "secret_kube_system", "secret_write", "token_request",
    "csr_create", "aws_auth_read", "aws_auth_write", "kube_system_configmap_read", "configmap_credentials", "rbac_write",
    "admin_binding", "anonymous_binding", "default_sa_binding", "dangerous_role", "system_role_change", "impersonation",
    "webhook_write", "exec", "exec_kube_system", "exec_suspicious_command", "portforward", "ephemeral_container",
    "workload_create", "pod_in_system_namespace", "privileged_workload", "persistence_workload", "nodeport_service",
    "permission_review", "anonymous_allowed", "events_delete", "deletecollection", "denied_403", "denied_401",
    "source_public", "source_threat_list", "system_from_public", "service_account_from_outside", "scripted_client",
)
BASELINE_INPUTS = {
    "requests": lambda f: np.log1p(f["n"]),
    "denials": lambda f: np.log1p(f["n_denied_401"] + f["n_denied_403"]),
    "resources": lambda f: np.log1p(_list_lengths(f["resources"])),
}
MIN_HISTORY_WINDOWS = 3
Z_CLIP = 20.0


def finalise(merged: pd.DataFrame, window_minutes: int) -> pd.DataFrame:
    """Finalise step: merged partials -> feature table with novelty and baselines (prequential).

    Windows are processed in time order; each is compared with the same entity's
    earlier windows only, so a training row sees what a scoring row would have seen.
    Entities with no history get the neutral prior: novelty counts everything as new
    but ``entity_is_new`` says why, off_hours is 0 and baseline z-scores are 0.

    "Not in an earlier window of the entity" is one sort over all rows (``_first_seen``);
    only the z-scores need a loop over the rows, on histories kept sorted as they grow.
    """
    if merged.empty:
        frame = merged.copy()
        for name in FEATURE_NAMES:
            frame[name] = pd.Series(dtype="float64")
        return frame
    frame = merged.sort_values(["window_start", "entity_type", "entity"], kind="stable").reset_index(drop=True)
    by_entity = frame.groupby(["entity_type", "entity"], sort=False, dropna=False)
    entity = by_entity.ngroup().to_numpy()
    earlier = by_entity.cumcount().to_numpy()  # the entity's windows before this one
    columns = {f"novel_{name}": _novel_counts(entity, frame[name].to_numpy()) for name in NOVELTY_SETS}
    columns["entity_is_new"] = earlier == 0
    active_rows, active_flags = np.nonzero(frame[[f"n_{name}" for name in SENSITIVE_FLAGS]].to_numpy() > 0)
    new_flags = _first_seen(entity, active_rows, active_flags) & (earlier[active_rows] > 0)
    columns["novel_sensitive"] = np.bincount(active_rows[new_flags], minlength=len(frame)).astype(float)
    new_hours = _first_seen(entity, np.arange(len(frame)), frame["window_start"].dt.hour.to_numpy())
    columns["is_off_hours"] = (earlier >= MIN_HISTORY_WINDOWS) & new_hours
    baseline_values = {name: fn(frame).to_numpy(dtype=float) for name, fn in BASELINE_INPUTS.items()}
    # a NaN leaves the insort-ed lists unordered; numpy's median does not depend on the order
    robust_z = _robust_z_numpy if any(np.isnan(v).any() for v in baseline_values.values()) else _robust_z_of_sorted
    for name, values in baseline_values.items():
        columns[f"z_{name}"] = _baseline_z(entity, values.tolist(), robust_z)
    columns["window_end"] = frame["window_start"] + pd.Timedelta(minutes=window_minutes)
    frame = pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)
    computed = {feature.name: np.asarray(feature.compute(frame), dtype=float) for feature in WINDOW_FEATURES}
    return pd.concat([frame, pd.DataFrame(computed, index=frame.index)], axis=1)


def _first_seen(entity: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """For (row, item) pairs listed in row order: whether no earlier row of the row's entity has the item.

    One sort of the (entity, item) keys finds the row where each key first appears; an item
    repeated within that row counts as new each time."""
    keys = entity[rows] * (int(items.max(initial=0)) + 1) + items
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return rows[first[inverse]] == rows


def _novel_counts(entity: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many of each row's values (a list per row) its entity had in no earlier row."""
    rows = np.repeat(np.arange(len(values)), _lengths(values))
    items = pd.factorize(np.array(list(chain.from_iterable(values)), dtype=object), use_na_sentinel=False)[0]
    return np.bincount(rows[_first_seen(entity, rows, items)], minlength=len(values)).astype(float)


def _baseline_z(entity: np.ndarray, values: list, robust_z: Callable[[float, list], float]) -> np.ndarray:
    """Each row's robust z against its entity's earlier values, once it has MIN_HISTORY_WINDOWS.

    Each entity's values are kept sorted as they arrive, so no row sorts its history again."""
    history: list[list] = [[] for _ in range(int(entity.max(initial=-1)) + 1)]
    z = np.zeros(len(values))
    for row, (code, value) in enumerate(zip(entity.tolist(), values)):
        ordered = history[code]
        if len(ordered) >= MIN_HISTORY_WINDOWS:
            z[row] = robust_z(value, ordered)
        insort(ordered, value)
    return z


def _robust_z(value: float, samples: list) -> float:
    """(value - median) / scaled MAD of the entity's earlier windows, clipped; a floor on the
    spread keeps perfectly regular entities from producing infinite scores.

    The same doubles as ``_robust_z_numpy`` (np.median: the middle element, or the mean of
    the two middle ones), computed on Python floats at a fraction of its cost."""
    return _robust_z_of_sorted(value, sorted(samples))


def _robust_z_of_sorted(value: float, ordered: list) -> float:
    """``_robust_z`` of samples in ascending order, in O(log n) without sorting anything.

    The deviations |x - median| fall towards the middle of ``ordered`` and rise after it, so
    the ceil(n/2) smallest are a run ordered[start:start + take] with start <= n // 2, found by
    bisection. Their median is the run's largest deviation (at one of its ends) or, for even n,
    its mean with the smallest one outside the run (next to one of its ends): the same doubles
    a sort of the deviations would pick."""
    size = len(ordered)
    half = size // 2
    take = size - half
    median = ordered[half] if take > half else (ordered[half - 1] + ordered[half]) / 2
    low, high = 0, half
    while low < high:
        start = (low + high) // 2
        # ordered[start] <= median <= ordered[start + take]: both differences are exactly the abs() deviations
        if median - ordered[start] > ordered[start + take] - median:
            low = start + 1
        else:
            high = start
    mad = max(abs(ordered[low] - median), abs(ordered[low + take - 1] - median))
    if take == half:
        before = abs(ordered[low - 1] - median) if low > 0 else math.inf
        after = abs(ordered[low + take] - median) if low < half else math.inf
        mad = (mad + min(before, after)) / 2
    z = (value - median) / max(mad * 1.4826, 0.25)
    return max(-Z_CLIP, min(Z_CLIP, z)) if not math.isnan(z) else 0.0


def _robust_z_numpy(value: float, samples: list) -> float:
    """``_robust_z`` with numpy's median (the definition; also used when a sample is NaN)."""
    array = np.asarray(samples)
    median = float(np.median(array))
    mad = float(np.median(np.abs(array - median))) * 1.4826
    z = (value - median) / max(mad, 0.25)
    return float(max(-Z_CLIP, min(Z_CLIP, z))) if not math.isnan(z) else 0.0


def _lengths(values: np.ndarray) -> np.ndarray:
    """len() of each list in an object array."""
    return np.fromiter(map(len, values), dtype=np.int64, count=len(values))


def _list_lengths(column: pd.Series) -> pd.Series:
    """``column.map(len)`` without its per-element overhead."""
    return pd.Series(_lengths(column.to_numpy()), index=column.index)


def feature_matrix(table: pd.DataFrame) -> np.ndarray:
    """The model's input: the registered window features in registry order."""
    return table[list(FEATURE_NAMES)].to_numpy(dtype=float)
