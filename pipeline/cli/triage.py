"""``auditsift triage`` (an analyst's verdict on a finding or an incident) and ``auditsift suppressions list|remove``
(``pipeline.triage``)."""
from __future__ import annotations

import click
import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.cli.boundary import boundary
from pipeline.cli.options import cluster_option, config_option, open_context, parse_time_option, wait_option, workdir_option
from pipeline.cli.output import say
from pipeline.config import Suppression
from pipeline.stages.clock import iso
from pipeline.text import printable
from pipeline.triage import (
    INCIDENT_PREFIX,
    VERDICTS,
    check_incident_suppression,
    check_verdict,
    find_finding,
    find_incident,
    find_suppression,
    latest_findings,
    precision,
    preview_suppressions,
    read_suppressions,
    record_incident_verdict,
    record_verdict,
    remove_suppression,
    similar_suppression,
    suppressible,
)

PREVIEW_ROWS = 10


@click.command("triage")
@click.argument("target_id", metavar="ID")
@workdir_option
@config_option
@cluster_option
@click.option("--verdict", required=True, type=click.Choice(VERDICTS), help="What the activity was.")
@click.option("--note", default="", help="Why: what you checked and what you found (kept with the verdict).")
@click.option("--suppress-similar", is_flag=True,
              help="With --verdict benign: suppress later findings of this entity with the same rules and top reasons "
                   "(values up to twice these); shows what it would hide and applies only with --yes.")
@click.option("--yes", is_flag=True, help="With --suppress-similar: record the verdict and add the suppression previewed.")
@click.option("--expires", default=None, help="With --suppress-similar: UTC time (ISO 8601) from which windows are no longer suppressed.")
@click.option("--reviewer", default=None, help="Who decided (kept with the verdict and the suppression).")
@wait_option
@boundary
def triage_command(target_id, workdir, config_path, cluster, verdict, note, suppress_similar, yes, expires, reviewer, wait_lock) -> None:
    """Record a verdict on a finding or an incident (inc-…) of the latest scores; benign ones may suppress similar findings.

    Every verdict is appended to the cluster's history; a changed verdict says what it replaced."""
    check_verdict(verdict, suppress_similar)
    until = iso(parse_time_option(expires, "--expires")) if expires else None
    ctx = open_context(workdir, config_path, cluster, quiet=True)
    if target_id.strip().lower().startswith(INCIDENT_PREFIX):
        incident, members = find_incident(ctx, target_id)
        check_incident_suppression(incident, suppress_similar)
    else:
        incident, members = None, [find_finding(ctx, target_id)]
    if suppress_similar:
        scoped = [f for f in members if suppressible(f)] if incident else members
        suppressions = [similar_suppression(f, note, reviewer, until) for f in scoped]
        hidden = preview_suppressions(latest_findings(ctx)[1], suppressions)
        print_preview(suppressions, hidden, members, applied=yes)
        if not yes:
            return
    with ctx.storage.lock(wait_seconds=wait_lock):
        if incident is None:
            records = [record_verdict(ctx.storage, ctx.cluster, members[0], verdict, note, suppress_similar, reviewer, until)]
        else:
            whole = record_incident_verdict(ctx.storage, ctx.cluster, incident, members, verdict, note, suppress_similar, reviewer, until)
            records = whole["findings"]
        stats = precision(ctx.storage, ctx.cluster)
    if incident is not None:
        say(f"recorded {verdict} on incident {incident['incident_id']} ({printable(incident.get('title') or '')}) "
            f"and its {len(members)} findings{replaced(whole)}")
    for finding, record in zip(members[:PREVIEW_ROWS], records):
        say(f"recorded {verdict} on finding {finding['finding_id']} ({finding['entity_type']} {printable(finding['entity'])}, "
            f"window {finding['window_start']}){replaced(record)}")
        if record["suppression"]:
            say(f"added suppression {record['suppression']}: this entity with {', '.join(record['rules']) or 'no rule hits'} "
                f"and reasons {', '.join(record['reasons']) or 'none'}; applies from the next `auditsift score`")
    if len(members) > PREVIEW_ROWS:  # a campaign holds thousands: the rest in one line
        rest = records[PREVIEW_ROWS:]
        say(f"recorded {verdict} on {len(rest)} more findings ({sum(bool(r['replaces']) for r in rest)} replacing a verdict), "
            f"adding {sum(bool(r['suppression']) for r in rest)} more suppressions")
    shown = f"{stats['precision']:.2f}" if stats["precision"] is not None else "n/a"
    say(f"precision so far: {shown} ({stats['malicious']} malicious, {stats['benign']} benign, "
        f"{stats['unsure']} unsure of {stats['reviewed']} reviewed)")


def replaced(record: dict) -> str:
    previous = record.get("replaces")
    if not previous:
        return ""
    who = f" by {printable(previous['reviewer'])}" if previous.get("reviewer") else ""
    return f"; replaces {previous['verdict']} recorded {previous['time']}{who}"


def print_preview(suppressions: list[Suppression], hidden: list[dict], members: list[dict], applied: bool) -> None:
    """What the suppressions would hide in the latest scores: the count, then the first rows."""
    unscoped = len(members) - len(suppressions)
    flagged = sum(bool(f["flagged"] or f.get("suppressed")) for f in hidden)
    say(f"--suppress-similar: {len(suppressions)} suppression(s) would hide {len(hidden)} window(s) of the latest scores "
        f"({flagged} flagged)"
        + (f" ({unscoped} quiet member(s), or with neither rule hits nor reasons, get none)" if unscoped else ""))
    for s in suppressions[:PREVIEW_ROWS]:
        ranges = ", ".join(f"{name} <= {high:g}" for name, (_, high) in s.ranges.items())
        say(f"  scope {s.id}: {s.entity_type} {printable(s.entity or '')} (literal); rules {', '.join(s.rules) or 'none'}; "
            f"reasons {', '.join(s.reasons) or 'none'}" + (f" ({ranges})" if ranges else "") + (f"; expires {s.expires}" if s.expires else ""))
    if len(suppressions) > PREVIEW_ROWS:
        say(f"  … and {len(suppressions) - PREVIEW_ROWS} more scopes, one per entity")
    for f in hidden[:PREVIEW_ROWS]:
        reasons = ", ".join(f"{r['feature']} {r['value']}" for r in f["reasons"][:3]) or "no reasons"
        rules = ", ".join(sorted({h["rule"] for h in f["rule_hits"]})) or "no rules"
        say(f"  would hide #{f['rank']} {f['finding_id']} {f['entity_type']} {printable(f['entity'])} "
            f"{f['window_start']}..{f['window_end']}: {rules}; {reasons}")
    if len(hidden) > PREVIEW_ROWS:
        say(f"  … and {len(hidden) - PREVIEW_ROWS} more")
    if not applied:
        say("preview only: nothing recorded; rerun with --yes to record the verdict and add the suppression(s)")


@click.group("suppressions")
def suppressions_group() -> None:
    """List or remove suppressions (those triage added, and the config file's)."""


@suppressions_group.command("list")
@workdir_option
@config_option
@cluster_option
@click.option("--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True, help="Output format (stdout).")
@boundary
def suppressions_list(workdir, config_path, cluster, fmt) -> None:
    """Every suppression of the cluster: its id, scope, who added it when, its note and expiry."""
    ctx = open_context(workdir, config_path, cluster, quiet=True)
    items = [("config", s) for s in ctx.config.suppressions] + [("triage", s) for s in read_suppressions(ctx.storage, ctx.cluster)]
    if fmt == "json":
        click.echo(orjson.dumps([{"source": source, **s.model_dump(mode="json")} for source, s in items], option=orjson.OPT_INDENT_2))
        return
    table = Table(title=f"{len(items)} suppression(s) in cluster {ctx.cluster}")
    for column in ("id", "source", "scope", "created", "reviewer", "expires", "note"):
        table.add_column(column, overflow="fold")
    for source, s in items:
        table.add_row(Text(printable(s.id or "")), source, Text(printable(scope(s))), s.created or "", Text(printable(s.reviewer or "")),
                      s.expires or "", Text(printable(s.note)))
    Console().print(table)


def scope(s: Suppression) -> str:
    who = f"{s.entity_type or 'any'} {s.entity}" if s.entity is not None else f"{s.entity_type or 'any'} matching {s.entity_pattern}"
    rules = ", ".join(s.rules) or ("none" if s.exact else "any")
    reasons = ", ".join(f"{r}<={s.ranges[r][1]:g}" if r in s.ranges else r for r in s.reasons) or ("none" if s.exact else "any")
    return f"{who}; rules {rules}; reasons {reasons}"


@suppressions_group.command("remove")
@click.argument("suppression_id")
@workdir_option
@config_option
@cluster_option
@click.option("--yes", is_flag=True, help="Remove it (without: show what would be removed).")
@wait_option
@boundary
def suppressions_remove(suppression_id, workdir, config_path, cluster, yes, wait_lock) -> None:
    """Remove a suppression triage added; findings it hid are flagged again from the next `auditsift score`."""
    ctx = open_context(workdir, config_path, cluster, quiet=True)
    item = find_suppression(ctx, suppression_id)
    if not yes:
        say(f"would remove suppression {printable(suppression_id)}: {printable(scope(item))}; rerun with --yes to remove it")
        return
    with ctx.storage.lock(wait_seconds=wait_lock):
        remove_suppression(ctx.storage, ctx.cluster, suppression_id)
    say(f"removed suppression {printable(suppression_id)}: {printable(scope(item))}; applies from the next `auditsift score`")
