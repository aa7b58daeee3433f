"""``auditsift triage``: an analyst's verdict on a finding (``pipeline.triage``)."""
from __future__ import annotations

import click

from pipeline.cli.boundary import boundary
from pipeline.cli.options import cluster_option, config_option, open_context, wait_option, workdir_option
from pipeline.cli.output import console
from pipeline.text import printable
from pipeline.triage import VERDICTS, check_verdict, find_finding, precision, record_verdict


@click.command("triage")
@click.argument("finding_id")
@workdir_option
@config_option
@cluster_option
@click.option("--verdict", required=True, type=click.Choice(VERDICTS), help="What the activity was.")
@click.option("--note", default="", help="Why: what you checked and what you found (kept with the verdict).")
@click.option("--suppress-similar", is_flag=True,
              help="With --verdict benign: suppress later findings of this entity with the same rules and top reasons.")
@click.option("--reviewer", default=None, help="Who decided (kept with the verdict).")
@wait_option
@boundary
def triage_command(finding_id, workdir, config_path, cluster, verdict, note, suppress_similar, reviewer, wait_lock) -> None:
    """Record a verdict on a finding of the latest scores; benign ones may suppress similar findings."""
    check_verdict(verdict, suppress_similar)
    ctx = open_context(workdir, config_path, cluster, quiet=True)
    finding = find_finding(ctx, finding_id)
    with ctx.storage.lock(wait_seconds=wait_lock):
        record = record_verdict(ctx.storage, ctx.cluster, finding, verdict, note, suppress_similar, reviewer)
        stats = precision(ctx.storage, ctx.cluster)
    lines = [f"recorded {verdict} on finding {finding['finding_id']} ({finding['entity_type']} {printable(finding['entity'])}, "
             f"window {finding['window_start']})"]
    if record["suppression"]:
        lines.append(f"added suppression {record['suppression']}: this entity with {', '.join(record['rules']) or 'no rule hits'} "
                     f"and reasons {', '.join(record['reasons']) or 'none'}; applies from the next `auditsift score`")
    shown = f"{stats['precision']:.2f}" if stats["precision"] is not None else "n/a"
    lines.append(f"precision so far: {shown} ({stats['malicious']} malicious, {stats['benign']} benign, "
                 f"{stats['unsure']} unsure of {stats['reviewed']} reviewed)")
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
