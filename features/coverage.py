"""Coverage of the public audit-log detections (Falco, Elastic, GuardDuty, EKS Best Practices) by the rule pack.

``configs/coverage.yaml`` holds one entry per public detection: what it fires on (in our words), whether our
rules cover it, miss it or only partly catch it, and for a gap the rule that would close it with the columns
that rule needs. ``coverage_problems`` checks the entries against the rule pack; ``coverage_markdown`` renders
the coverage section of docs/detection.md, which tests/features/test_coverage.py keeps equal to the data.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

STATUSES = ("covers", "partial", "misses", "not_applicable")
GAP_STATUSES = ("partial", "misses")

# What a planned rule needs beyond today's rule engine: the spec the next helpers build from.
COVERAGE_NEEDS = {
    "flags": "only existing event columns and flags (features/flags.py): a rule to add, or a flag over an existing column",
    "history": "existing history flags (features/novelty.py): new source, client family, user agent or action for the identity",
    "aggregate": "a threshold rule with today's aggregate (count or distinct per user or source_ip and window)",
    "aggregate_extension": "an aggregate that needs more than today's: two conditions in one window, or a threshold against the entity's own baseline",
    "sequence": "an ordered pair of events by one identity within minutes (no sequence rules today)",
    "list_extension": "a longer list in an existing flag (sensitive host paths with prefixes, dangerous capabilities, role grants)",
    "config_list": "an operator-supplied list in the config (allowed image registries, break-glass identities)",
    "threat_feed": "a maintained address feed (Tor exits, abuse lists) loaded into the threat list by the pipeline",
    "system_identity_routine": "the rule applies to system identities too, with the entity's routine damping instead of `not system_identity`",
    "response_object": "workload, RBAC and Service facts derived from responseObject (the object as stored) when present",
    "json_patch": "facts derived from JSON-patch list bodies (kubectl patch --type=json)",
    "service_account_name": "a workload's spec.serviceAccountName (and automountServiceAccountToken)",
    "ephemeral_init_containers": "ephemeral and init containers kept apart from containers (image, securityContext)",
    "service_exposure": "a Service's type and annotations (load-balancer scheme), also on update and patch",
    "ingress_tls": "whether an Ingress declares spec.tls (the ingress_tls column, read by a flag)",
    "csr_facts": "a CSR's signer, usages and subject groups (PKCS#10 decoded), and the approval subresource",
    "exec_intent": "exec argv decoded (+, percent escapes, repeated command=) and classified: reverse shell, credential read, metadata endpoint in any notation, download-and-run",
    "proxy_class": "nodes/pods/services proxy requests with the kubelet endpoint class (run, exec, pods, metrics, ...)",
    "namespace_lookalike": "a namespace name judged against the system namespaces (edit distance, homoglyphs)",
}


class CoverageError(ValueError):
    """configs/coverage.yaml does not parse into entries; the message names the entry."""


class Planned(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rule: str = Field(pattern=r"^[a-z][a-z0-9_]{2,63}$")
    condition: str = Field(min_length=10)
    needs: tuple[str, ...] = Field(min_length=1)


class Detection(BaseModel):
    """One public detection and what our rule pack does about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    id: str = Field(min_length=1)
    condition: str = Field(min_length=10)
    status: str
    rules: tuple[str, ...] = ()
    reason: str | None = None
    planned: Planned | None = None


class Probe(BaseModel):
    """The event a public detection fires on (merged over the test base event) and the pack's rules that fire on it today."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    id: str
    event: dict
    fires: tuple[str, ...] = ()


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str
    where: str


def _name(item, index: int) -> str:
    return str(item.get("id", f"#{index + 1}")) if isinstance(item, dict) else f"#{index + 1}"


def _parse(model: type[BaseModel], item, label: str):
    """``item`` validated as ``model``; the first problem as one line naming the entry and the field."""
    try:
        return model.model_validate(item)
    except ValidationError as error:
        first = error.errors()[0]
        raise CoverageError(f"coverage {label}: '{'.'.join(str(p) for p in first['loc'])}': {first['msg']}") from None


@dataclass(frozen=True)
class Coverage:
    sources: dict[str, Source]
    detections: tuple[Detection, ...]
    probes: tuple[Probe, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> "Coverage":
        sources = {name: _parse(Source, item, f"source {name}") for name, item in (data.get("sources") or {}).items()}
        detections = tuple(_parse(Detection, item, f"entry {_name(item, i)}") for i, item in enumerate(data.get("detections") or []))
        probes = tuple(_parse(Probe, item, f"probe {_name(item, i)}") for i, item in enumerate(data.get("probes") or []))
        return cls(sources, detections, probes)

    def counts(self) -> dict[str, Counter]:
        """Per source, how many detections have each status."""
        result = {name: Counter() for name in self.sources}
        for d in self.detections:
            result.setdefault(d.source, Counter())[d.status] += 1
        return result

    def planned_by_need(self) -> dict[str, dict[str, list[Detection]]]:
        """need -> planned rule id -> the detections it would close (a rule is listed under each need it has)."""
        grouped: dict[str, dict[str, list[Detection]]] = {need: {} for need in COVERAGE_NEEDS}
        for d in self.detections:
            if d.planned:
                for need in d.planned.needs:
                    grouped.setdefault(need, {}).setdefault(d.planned.rule, []).append(d)
        return {need: rules for need, rules in grouped.items() if rules}


def coverage_problems(coverage: Coverage, rule_ids) -> list[str]:
    """Everything wrong with the coverage data against the rule pack's ids; empty when it is sound."""
    known = set(rule_ids)
    problems = []
    seen = Counter((d.source, d.id) for d in coverage.detections)
    problems += [f"{source}: '{name}' listed {n} times" for (source, name), n in seen.items() if n > 1]
    for d in coverage.detections:
        where = f"{d.source}: '{d.id}'"
        if d.source not in coverage.sources:
            problems.append(f"{where}: unknown source (declare it under sources)")
        if d.status not in STATUSES:
            problems.append(f"{where}: status '{d.status}' is not one of {', '.join(STATUSES)}")
        problems += [f"{where}: rule '{r}' is not in the rule pack" for r in d.rules if r not in known]
        if d.status != "covers" and not (d.reason and len(d.reason) > 15):
            problems.append(f"{where}: {d.status} needs a reason")
        if d.status == "covers" and not d.rules:
            problems.append(f"{where}: covers names no rule")
        if d.status == "not_applicable" and d.rules:
            problems.append(f"{where}: not_applicable but names rules")
        if d.status in GAP_STATUSES and d.planned is None:
            problems.append(f"{where}: {d.status} needs a planned rule")
        if d.status not in GAP_STATUSES and d.planned is not None:
            problems.append(f"{where}: {d.status} has a planned rule")
        if d.planned:
            problems += [f"{where}: unknown need '{n}'" for n in d.planned.needs if n not in COVERAGE_NEEDS]
    by_key = {(d.source, d.id): d for d in coverage.detections}
    for probe in coverage.probes:
        where = f"probe {probe.source}: '{probe.id}'"
        d = by_key.get((probe.source, probe.id))
        if d is None:
            problems.append(f"{where}: no such detection")
            continue
        problems += [f"{where}: rule '{r}' is not in the rule pack" for r in probe.fires if r not in known]
        if d.status == "covers" and not set(probe.fires) & set(d.rules):
            problems.append(f"{where}: covers, but none of its rules fires on the probe")
        if d.status == "misses" and probe.fires:
            problems.append(f"{where}: misses, but {', '.join(probe.fires)} fire on the probe")
    return problems


COVERAGE_HEADING = "## Coverage of public detections"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def coverage_markdown(coverage: Coverage) -> str:
    """The coverage section of docs/detection.md: per-source counts, then one row per public detection."""
    counts = coverage.counts()
    lines = [
        COVERAGE_HEADING,
        "",
        "Generated from `configs/coverage.yaml` by `features.coverage.coverage_markdown`; "
        "`tests/features/test_coverage.py` fails if this section is stale or names a rule the pack does not have. "
        "COVERS: every event the public detection fires on makes one of the listed rules hit, whoever sends it (system "
        "identities included: what is routine for an identity is learned from its history, not exempted). PARTIAL: some "
        "variants fire, or only the model sees it. N/A: cannot apply to EKS audit logs. Each gap names the rule planned "
        f"to close it and what it needs (`COVERAGE_NEEDS`). {len(coverage.probes)} rows carry a probe: the event the "
        "detection fires on, which the test runs through the rule pack and compares with the rules that fire today.",
        "",
        "| source | detections | covers | partial | misses | n/a |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, source in coverage.sources.items():
        c = counts.get(name, Counter())
        lines.append(f"| {_cell(source.title)} ({_cell(source.where)}) | {sum(c.values())} | {c['covers']} | "
                     f"{c['partial']} | {c['misses']} | {c['not_applicable']} |")
    for name, source in coverage.sources.items():
        lines += ["", f"### {source.title}", "", "| detection | fires on | status | our rules, or why not | planned |",
                  "|---|---|---|---|---|"]
        for d in (d for d in coverage.detections if d.source == name):
            ours = ", ".join(f"`{r}`" for r in d.rules)
            why = "; ".join(part for part in (ours, _cell(d.reason or "")) if part)
            plan = f"`{d.planned.rule}` ({', '.join(d.planned.needs)})" if d.planned else ""
            status = "N/A" if d.status == "not_applicable" else d.status.upper()
            lines.append(f"| {_cell(d.id)} | {_cell(d.condition)} | {status} | {why} | {plan} |")
    lines += ["", "### Planned rules, by what they need", "",
              "A rule that needs several things is listed under each. The count is how many rows it would close.", "",
              "| need | what it is | planned rules |", "|---|---|---|"]
    for need, rules in coverage.planned_by_need().items():
        listed = ", ".join(f"`{rule}` ({len(rows)})" for rule, rows in sorted(rules.items()))
        lines.append(f"| `{need}` | {_cell(COVERAGE_NEEDS[need])} | {listed} |")
    return "\n".join(lines) + "\n"
