"""What the commands print: the rich console on stderr, progress bars, and the findings table."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pipeline.context import ProgressHandle, RunContext
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


def print_findings(findings: list[dict], top: int) -> None:
    """The top findings as a terminal table: log-derived text printed literally, never as markup, with control
    characters and bidirectional overrides shown as escapes (``pipeline.text.printable``)."""
    table = Table(title=f"top {min(top, len(findings))} of {len(findings)} entity windows", show_lines=False)
    for column in ("rank", "score", "flag", "entity", "window (UTC)", "what happened", "top reason"):
        table.add_column(column, overflow="fold")
    for f in findings[:top]:
        rules = f.get("headline") or ", ".join(f"{h['rule']}×{h['count']}" for h in f["rule_hits"][:3])
        reason = f["reasons"][0] if f["reasons"] else None
        reason_text = f"{reason['feature']}={reason['value']} (usual {reason['baseline']})" if reason else ""
        flag = "FLAG" if f["flagged"] else ("supp" if f.get("suppressed") else "")
        table.add_row(str(f["rank"]), f"{f['score']:.2f}", flag, Text(printable(f"{f['entity_type']}: {f['entity']}")),
                      f["window_start"][5:16].replace("T", " "), Text(printable(rules)), Text(printable(reason_text)))
    Console().print(table)
