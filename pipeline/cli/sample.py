"""``auditsift sample``: realistic EKS audit logs with injected attacks, for training, demos and the tests."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.boundary import boundary
from pipeline.cli.output import say
from pipeline.sample import generate_sample, sample_clock
from pipeline.stages.clock import iso


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write the sample into.")
@click.option("--days", default=4, show_default=True, type=click.IntRange(2, 60), help="Days of audit events (attacks land on the last).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: identities, times and attacks vary with it.")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(0.01, 100.0), help="Multiplier on background volume.")
@boundary
def sample(out: str, days: int, seed: int, scale: float) -> None:
    """Write realistic EKS audit logs with injected attacks (gzipped JSON lines + labels.json)."""
    summary = generate_sample(Path(out), days=days, seed=seed, scale=scale)
    clock = iso(sample_clock(Path(out)))
    total = sum(summary.get("events_per_day", {}).values()) if isinstance(summary.get("events_per_day"), dict) else summary.get("events")
    say(f"wrote {total} events over {days} days to {out} ({len(summary.get('scenarios', []))} attack scenarios in labels.json); "
        f"the data ends at {clock}: score its last day with `auditsift run --input {out} --workdir WORKDIR --now {clock}`")
