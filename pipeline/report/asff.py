"""Flagged incidents out of the workdir: AWS Security Hub (ASFF, BatchImportFindings) and an SNS summary.

Both are optional (``findings.securityhub.enabled``, ``findings.sns.enabled``). Security Hub
gets one finding per flagged incident (``pipeline.report.incidents``) holding a flagged,
unsuppressed finding that scores at least ``findings.securityhub.min_score``; its ``Id`` is
``<cluster>/<incident_id>`` and incident_id is stable across reruns (it is derived from the
incident's earliest core finding), so rerunning a day updates the same findings instead of
adding copies. The incident's member findings are its ``RelatedFindings`` (``<cluster>/<finding_id>``,
at most ``MAX_RELATED``, best-ranked first; ``ProductFields`` holds their count and as many ids as its 2,048 characters
fit, about 97: a campaign's are all in incidents.jsonl), its ``Types`` are its
ATT&CK tactics when its rules carry them, else its findings' types, and its severity is the
incident's. Severity, Types and RelatedFindings also go in ``FindingProviderFields``, the only
place Security Hub accepts provider updates to them after a finding exists.

Log-derived text (entity names, reasons) is data: control characters are removed and it
is cut to ASFF's limits (Title 256, Description 1024, ProductFields values 2048), never
interpreted. Any rejected finding raises one ``AwsCallError`` naming the call and the
first FailedFindings reason, after every batch has been sent."""
from __future__ import annotations

import re
from typing import Mapping

from features.rules import TTP_CATEGORIES, Rule
from pipeline.aws.arn import partition
from pipeline.config import Config
from pipeline.report.render import weighs_in_full

BATCH_SIZE = 100
SCHEMA_VERSION = "2018-10-08"
TITLE_MAX, DESCRIPTION_MAX, FIELD_MAX, SUBJECT_MAX = 256, 1024, 2048, 100
MAX_RELATED = 10  # RelatedFindings kept per finding: the best-ranked members (the rest are listed in ProductFields)
INCIDENT_SEVERITY = {"critical": "CRITICAL", "high": "HIGH", "medium": "MEDIUM", "low": "LOW"}
# ATT&CK tactics (by id or name) as ASFF "TTPs/<category>" types; a tactic ASFF has no category for maps to none
TACTIC_TYPES = {
    "TA0001": "Initial Access", "TA0002": "Execution", "TA0003": "Persistence", "TA0004": "Privilege Escalation",
    "TA0005": "Defense Evasion", "TA0006": "Credential Access", "TA0007": "Discovery", "TA0008": "Lateral Movement",
    "TA0009": "Collection", "TA0010": "Exfiltration", "TA0011": "Command and Control", "TA0040": "Impact",
}
SEVERITY_ORDER = ("INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL")
RULE_SEVERITY = {"info": "INFORMATIONAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH", "critical": "CRITICAL"}
ENTITY_TYPES = {"user": "Unusual Behaviors/User", "source_ip": "Unusual Behaviors/IP address"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clean(text: object, limit: int) -> str:
    """Log-derived text as one plain line within ``limit`` characters."""
    flat = " ".join(_CONTROL.sub(" ", str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def product_arn(config: Config, region: str, account: str) -> str:
    """``findings.securityhub.product_arn``, else the account's default product for custom findings."""
    return config.findings.securityhub.product_arn or f"arn:{partition(region)}:securityhub:{region}:{account}:product/{account}/default"


def exportable(findings: list[dict], min_score: float) -> list[dict]:
    """Flagged, unsuppressed findings scoring at least ``min_score``, in rank order."""
    return [f for f in findings if f.get("flagged") and not f.get("suppressed") and f["score"] >= min_score]


def severity_label(finding: dict) -> str:
    """The most severe of its rule hits and the model's verdict.

    Rule hits map by their declared severity, except hits marked ``routine`` (a rule the entity triggers in most
    of its training windows) or ``copy_of`` (a controller's copy of a template written in the same run), which
    cannot raise the severity.
    The model alone gives MEDIUM past its calibrated threshold (model_part > 1) and HIGH at
    three times that distance.
    """
    labels = [RULE_SEVERITY.get(hit["severity"], "LOW") for hit in finding.get("rule_hits", []) if weighs_in_full(hit)]
    model_part = finding.get("model_part", 0.0)
    if model_part > 3:
        labels.append("HIGH")
    elif model_part > 1:
        labels.append("MEDIUM")
    return max(labels, key=SEVERITY_ORDER.index, default="LOW")


def finding_types(finding: dict, rules: Mapping[str, Rule]) -> list[str]:
    """The entity's unusual-behaviour type, then per hit rule (from the rule pack) its ``finding_type`` and its
    ATT&CK tactic and technique as ``TTPs/<tactic name>/<technique id>`` (namespace/category/classifier), once each.
    Impact has no TTPs category in ASFF's taxonomy, so an Impact rule adds its finding_type only."""
    types = [ENTITY_TYPES.get(finding["entity_type"], "Unusual Behaviors/Application")]
    for hit in finding.get("rule_hits", []):
        rule = rules.get(hit["rule"])
        if rule is None:
            continue
        attack = f"TTPs/{rule.tactic_name}/{rule.technique}" if rule.tactic_name in TTP_CATEGORIES else None
        for kind in (rule.finding_type, attack):
            if kind and kind not in types:
                types.append(kind)
    return types


def _description(finding: dict) -> str:
    rules = ", ".join(f"{hit['rule']} ({hit['severity']}, {hit['count']}x)" for hit in finding.get("rule_hits", []))
    reasons = "; ".join(f"{r['feature']}={r['value']} (usual {r['baseline']})" for r in finding.get("reasons", [])[:3])
    parts = [f"auditsift score {finding['score']:.2f} (model {finding.get('model_part', 0.0):.2f}x threshold) over "
             f"{finding.get('event_count', 0)} requests from {finding['window_start']} to {finding['window_end']}."]
    if rules:
        parts.append(f"Rules: {rules}.")
    if reasons:
        parts.append(f"Unusual: {reasons}.")
    return clean(" ".join(parts), DESCRIPTION_MAX)


def asff_finding(finding: dict, *, rules: Mapping[str, Rule], cluster: str, region: str, account: str, product: str, updated_at: str,
                 run_result: dict) -> dict:
    """One auditsift finding in the AWS Security Finding Format; ``rules`` is the rule pack by id (``RulePack.by_id``)."""
    hits = finding.get("rule_hits", [])
    severity = {"Label": severity_label(finding), "Original": f"{finding['score']:.3f}"}
    types = finding_types(finding, rules)
    fields = {
        "auditsift/entity_type": finding["entity_type"],
        "auditsift/entity": finding["entity"],
        "auditsift/window": f"{finding['window_start']}/{finding['window_end']}",
        "auditsift/score": f"{finding['score']:.4f}",
        "auditsift/rank": str(finding.get("rank", "")),
        "auditsift/rules": ",".join(hit["rule"] for hit in hits),
        "auditsift/reasons": ",".join(r["feature"] for r in finding.get("reasons", [])[:5]),
        "auditsift/run_id": str(run_result.get("run_id", "")),
        "auditsift/report": str(run_result.get("report") or ""),
    }
    return _asff(f"{cluster}/{finding['finding_id']}", f"auditsift/{hits[0]['rule']}" if hits else "auditsift/model", types, severity,
                 (finding["window_start"], finding["window_end"], finding["window_end"]),
                 f"auditsift: unusual Kubernetes API activity by {finding['entity_type']} {finding['entity']}", _description(finding),
                 fields, cluster=cluster, region=region, account=account, product=product, updated_at=updated_at)


def _asff(finding_id: str, generator: str, types: list[str], severity: dict, times: tuple[str, str, str], title: str,
          description: str, fields: dict, *, cluster: str, region: str, account: str, product: str, updated_at: str,
          related: list[dict] | None = None) -> dict:
    """The ASFF record: ``times`` are (first observed, last observed, created); text cut to ASFF's limits; Severity,
    Types (and RelatedFindings when given) also in FindingProviderFields."""
    arn_partition = partition(region)
    first, last, created = times
    record = {
        "SchemaVersion": SCHEMA_VERSION,
        "Id": finding_id,
        "ProductArn": product,
        "GeneratorId": generator,
        "AwsAccountId": account,
        "Types": types,
        "CreatedAt": created,
        "UpdatedAt": updated_at,
        "FirstObservedAt": first,
        "LastObservedAt": last,
        "Severity": severity,
        "FindingProviderFields": {"Severity": severity, "Types": types, **({"RelatedFindings": related} if related else {})},
        "Title": clean(title, TITLE_MAX),
        "Description": clean(description, DESCRIPTION_MAX),
        "ProductFields": {key: clean(value, FIELD_MAX) for key, value in fields.items() if value},
        "Resources": [{
            "Type": "AwsEksCluster",
            "Id": f"arn:{arn_partition}:eks:{region}:{account}:cluster/{cluster}",
            "Partition": arn_partition,
            "Region": region,
            "Details": {"AwsEksCluster": {"Name": cluster}},
        }],
        "RecordState": "ACTIVE",
    }
    if related:
        record["RelatedFindings"] = related
    return record


def exportable_incidents(incidents: list[dict], findings: list[dict], min_score: float) -> list[dict]:
    """Flagged incidents holding at least one exportable finding (``exportable``), in rank order."""
    wanted = {f["finding_id"] for f in exportable(findings, min_score)}
    return [i for i in incidents if i.get("flagged") and wanted.intersection(i["finding_ids"])]


def tactic_types(tactics: list[str]) -> list[str]:
    """ASFF ``TTPs/<category>`` types of ATT&CK tactics given by id (TA0004) or name (privilege-escalation)."""
    names = {name.lower().replace(" ", "-"): name for name in TACTIC_TYPES.values()}
    types = []
    for tactic in tactics:
        name = TACTIC_TYPES.get(str(tactic).upper()) or names.get(str(tactic).lower().replace(" ", "-").replace("_", "-"))
        if name and f"TTPs/{name}" not in types:
            types.append(f"TTPs/{name}")
    return types


def incident_asff(incident: dict, members: list[dict], *, rules: Mapping[str, Rule], cluster: str, region: str, account: str,
                  product: str, updated_at: str, run_result: dict) -> dict:
    """One incident in the AWS Security Finding Format; ``members``: its findings (records of findings.json), whose
    types (``finding_types``: each rule's finding type and ATT&CK tactic/technique) follow the incident's tactics."""
    types = list(dict.fromkeys([*tactic_types(incident.get("tactics") or []),
                                *(kind for f in members for kind in finding_types(f, rules))]))
    severity = {"Label": INCIDENT_SEVERITY.get(incident["severity"], "INFORMATIONAL"), "Original": incident["severity"]}
    related = [{"ProductArn": product, "Id": f"{cluster}/{finding_id}"} for finding_id in incident["finding_ids"][:MAX_RELATED]]
    rules = list(dict.fromkeys(hit["rule"] for f in members for hit in f.get("rule_hits", []) if weighs_in_full(hit)))
    fields = {
        "auditsift/incident_id": incident["incident_id"],
        "auditsift/rank": str(incident.get("rank", "")),
        "auditsift/finding_count": str(len(incident["finding_ids"])),
        "auditsift/finding_ids": ",".join(incident["finding_ids"]),
        "auditsift/entities": ",".join(f"{e['entity_type']}:{e['entity']}" for e in incident["entities"]),
        "auditsift/tactics": ",".join(incident.get("tactics") or []),
        "auditsift/rules": ",".join(rules),
        "auditsift/run_id": str(run_result.get("run_id", "")),
        "auditsift/report": str(run_result.get("report") or ""),
    }
    return _asff(f"{cluster}/{incident['incident_id']}", f"auditsift/{rules[0]}" if rules else "auditsift/model", types, severity,
                 (incident["first_seen"], incident["last_seen"], incident["first_seen"]), f"auditsift: {incident['title']}",
                 incident["summary"], fields, cluster=cluster, region=region, account=account, product=product,
                 updated_at=updated_at, related=related)


def summary_message(config: Config, findings: list[dict], run_result: dict, top: int = 10,
                    incidents: list[dict] | None = None) -> tuple[str, str]:
    """(Subject, Message) of the run summary: counts, the report's location, the top flagged incidents and the top
    flagged entities."""
    flagged = [f for f in findings if f.get("flagged")]
    stories = [i for i in incidents or () if i.get("flagged")]
    subject = clean(f"auditsift {config.cluster}: {len(stories)} flagged incidents, {len(flagged)} flagged of {len(findings)} "
                    "entity windows" if incidents is not None else
                    f"auditsift {config.cluster}: {len(flagged)} flagged of {len(findings)} entity windows", SUBJECT_MAX)
    ranges = run_result.get("ranges") or {}
    lines = [
        f"auditsift run {run_result.get('run_id', '?')} for cluster {config.cluster}",
        f"scored {ranges.get('score_from', '?')} .. {ranges.get('score_to', '?')}",
        f"entity windows: {len(findings)}; flagged: {len(flagged)}; suppressed: {sum(bool(f.get('suppressed')) for f in findings)}",
        f"report: {run_result.get('report') or 'not written'}",
        "",
    ]
    for incident in stories[:top]:
        lines.append(clean(f"incident #{incident['rank']} {incident['severity']} {incident['incident_id']}: {incident['title']}", 400))
    if stories:
        lines.append("")
    for f in flagged[:top]:
        rules = ",".join(hit["rule"] for hit in f.get("rule_hits", [])) or "model"
        lines.append(clean(f"#{f.get('rank')} {f['score']:.2f} {f['entity_type']} {f['entity']} "
                           f"{f['window_start']} [{rules}]", 400))
    return subject, "\n".join(lines)
