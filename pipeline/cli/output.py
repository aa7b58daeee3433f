"""What the commands print: the rich console on stderr, progress bars, and the incidents and findings tables."""
from __future__ import annotations

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from pipeline.context import ProgressHandle, RunContext
from pipeline.report.labels import finding_rows
from pipeline.report.render import campaign_members
from pipeline.text import printable

console = Console(stderr=True)


def say(message: str) -> None:
    """One line on stderr, printed literally (never as markup)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


class RichProgress(ProgressHandle):
    def __init__(self, progress: Progress, description: str, total: int | None):
        self.progress = progress
        self.task = progress.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        self.progress.advance(self.task, amount)

    def close(self) -> None:
        self.progress.update(self.task, visible=True)


def make_progress(enabled: bool):
    if not enabled:
        return None, None
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    return progress, (lambda description, total: RichProgress(progress, description, total))


class live:
    """Show the run's progress bars while the block runs (no-op without a terminal)."""

    def __init__(self, ctx: RunContext):
        self.progress = getattr(ctx, "live_progress", None)

    def __enter__(self):
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()
        return False


ID_CHARS = 10  # of a finding id shown: more than triage's minimum prefix (pipeline.triage.MIN_ID_PREFIX)
INCIDENT_ID_CHARS = 12  # "inc-" and 8 hex digits


def terminal(width: int | None = None) -> Console:
    """The stdout console: ``width`` columns if given, else the terminal's, else ``COLUMNS``, else 80 (rich's rule)."""
    return Console(width=width, highlight=False)


def print_report(findings: list[dict], incidents: list[dict], rule_titles: dict, top: int, width: int | None = None) -> None:
    """Incidents first (rank, id, severity, first and last seen, then the title on its own line), then the top findings
    that are in no incident (rank, id, severity, score, window, entity, then title and notes), each line cut to the
    width with an ellipsis. Log-derived text is printed literally, never as markup, with control characters and
    bidirectional overrides shown as escapes (``pipeline.text.printable``)."""
    out = terminal(width)

    def line(text: str, style: str | None = None) -> None:
        """One line cut to the width (in terminal cells) with an ellipsis: never wrapped, so no name splits over lines."""
        shown = Text(printable(text), style=style or "")
        shown.truncate(out.width, overflow="ellipsis")
        out.print(shown, markup=False, highlight=False, no_wrap=True, crop=True)

    if incidents:
        shown = incidents[:top]
        line(f"Incidents: top {len(shown)} of {len(incidents)} ({sum(i['flagged'] for i in incidents)} flagged)", "bold")
        line(f"{'#':>4}  {'incident':<{INCIDENT_ID_CHARS}}  {'severity':<10}{'first seen (UTC)':<18}{'last':<7}{'findings':>8}", "dim")
        for i in shown:
            line(f"{i['rank']:>4}  {i['incident_id'][:INCIDENT_ID_CHARS]:<{INCIDENT_ID_CHARS}}  {i['severity']:<10}"
                 f"{i['first_seen'][:16].replace('T', ' '):<18}{i['last_seen'][11:16]:<7}{len(i['finding_ids']):>8}")
            line(f"      {i['title']}")
            if i.get("campaign"):
                line(f"      {campaign_members(i)}", "dim")
        line("")
    alone = [f for f in finding_rows(findings, incidents, rule_titles) if not f["incident_id"]]
    shown = alone[:top]
    line(f"Findings in no incident: top {len(shown)} of {len(alone)} ({len(findings)} entity windows)", "bold")
    line(f"{'rank':>4}  {'finding':<{ID_CHARS}}  {'severity':<10}{'score':>6}  {'window (UTC)':<18}entity", "dim")
    for f in shown:
        note = "; ".join(n for n in (f["repeat"], f["order_note"]) if n)
        line(f"{f['rank']:>4}  {f['finding_id'][:ID_CHARS]:<{ID_CHARS}}  {f['severity']:<10}{f['score']:>6.2f}  "
             f"{f['window_start'][:16].replace('T', ' '):<18}{f['entity_type']}: {f['entity']}")
        line(f"      {f['title']}" + (f" ({note})" if note else ""))


def report_json(findings: list[dict], incidents: list[dict], rule_titles: dict) -> bytes:
    """``report --format json``: {"incidents": [...], "findings": [...]} with each finding's labels (raw values: JSON
    escapes what a terminal would obey)."""
    return orjson.dumps({"incidents": incidents, "findings": finding_rows(findings, incidents, rule_titles)})
