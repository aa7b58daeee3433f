"""What every plain output (terminal, findings.csv, ``report --format json``) says about one finding beside its numbers:
its severity, a headline, the repeat marker, the incident it belongs to, and why a quiet row sits above a flagged one.

One place, so the terminal, the CSV and the JSON cannot disagree. Values stay raw (names as logged); whoever prints
them escapes them (``pipeline.text.printable`` for the terminal, ``safe_cell`` for CSV).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.report.render import finding_level, weighs_in_full


def severity(finding: Mapping) -> str:
    """critical / high / medium for a flagged finding, else suppressed or quiet (``render.finding_level``); a
    ``severity`` the finding carries wins."""
    return finding.get("severity") or finding_level(finding)


def title(finding: Mapping, rule_titles: Mapping[str, str]) -> str:
    """The finding's headline: its rule's title template filled from the event (``headline``, the score stage's),
    else the title of its heaviest rule hit that is not the entity's routine, else "unusual activity for <entity>"."""
    if finding.get("headline"):
        return finding["headline"]
    hits = [h for h in finding.get("rule_hits", ()) if weighs_in_full(h)] or list(finding.get("rule_hits", ()))
    if hits:
        top = max(hits, key=lambda h: h.get("weight", 0))  # the first listed among equally heavy hits
        return rule_titles.get(top["rule"]) or top["rule"].replace("_", " ")
    return f"unusual activity for {finding['entity']}"


def repeat_note(finding: Mapping) -> str:
    """"mostly the same requests as #N" when the finding repeats a better-ranked one's requests (so it is listed lower)."""
    return f"mostly the same requests as #{finding['repeats_rank']}" if finding.get("repeats_rank") else ""


def order_notes(findings: Sequence[Mapping]) -> dict[str, str]:
    """finding_id -> why a quiet (or suppressed) finding is ranked above a flagged one: rank follows the score, the
    flag needs the model part above 1 or a high-severity rule, so a quiet row can score higher without either."""
    notes: dict[str, str] = {}
    flagged_below = False
    for f in sorted(findings, key=lambda f: f["rank"], reverse=True):
        if f["flagged"]:
            flagged_below = True
        elif flagged_below:
            reason = f"suppressed ({f.get('suppressed_by')})" if f.get("suppressed") else \
                "quiet: no high-severity rule, model part at most 1"
            notes[f["finding_id"]] = f"{reason}; ranked above flagged rows by score"
    return notes


def incident_of(incidents: Sequence[Mapping]) -> dict[str, Mapping]:
    """finding_id -> the incident record holding it."""
    return {finding_id: incident for incident in incidents for finding_id in incident["finding_ids"]}


def finding_rows(findings: Sequence[Mapping], incidents: Sequence[Mapping], rule_titles: Mapping[str, str]) -> list[dict]:
    """Each finding with its labels: ``severity``, ``title``, ``repeat``, ``incident_id``, ``incident_rank`` and
    ``order_note`` added (the finding's own fields untouched)."""
    holder, notes = incident_of(incidents), order_notes(findings)
    return [{**f, "severity": severity(f), "title": title(f, rule_titles), "repeat": repeat_note(f),
             "incident_id": holder[f["finding_id"]]["incident_id"] if f["finding_id"] in holder else "",
             "incident_rank": holder[f["finding_id"]]["rank"] if f["finding_id"] in holder else None,
             "order_note": notes.get(f["finding_id"], "")} for f in findings]
