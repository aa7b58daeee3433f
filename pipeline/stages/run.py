"""Every stage in sequence on one workdir (``auditsift run``; a scheduled pass, ``auditsift cron``), returning the
machine-readable result."""
from __future__ import annotations

import logging
import threading
from datetime import datetime

from pipeline.catalog import load_rule_pack
from pipeline.context import RunContext
from pipeline.stages.archive import archive_cloudwatch, run_archive
from pipeline.stages.export import export_findings
from pipeline.stages.features import flag_context, run_features
from pipeline.stages.ranges import resolve_ranges
from pipeline.stages.report import latest_incidents, run_report
from pipeline.stages.scaleout import plan_key, plan_run
from pipeline.stages.score import run_score
from pipeline.stages.train import fit_model, run_train
from training.registry import detector_class

log = logging.getLogger(__name__)


def run_pipeline(ctx: RunContext, inputs: list[str], report_dir: str | None = None, train_from=None, train_to=None,
                 score_from=None, score_to=None, now=None) -> dict:
    """Archive -> features -> train -> score -> report -> export (Security Hub / SNS when enabled), for the day
    ending at the run's clock ``now`` (default: the current time; ``pipeline.stages.clock.run_clock``).
    The rule pack and address files are loaded first, so a bad one stops the run before anything is written.
    Returns the result object schedulers act on (docs/operations.md)."""
    load_rule_pack(ctx.config)
    flag_context(ctx)
    if ctx.config.model.backend != "sagemaker-rcf":
        import_meanwhile(ctx.config.model.backend)
    archive_counts = run_archive(ctx, inputs, now)
    ranges = resolve_ranges(ctx, train_from, train_to, score_from, score_to, now)
    feature_counts = run_features(ctx, ranges)
    model, detector = fit_model(ctx)
    summary = run_score(ctx, detector if ctx.config.model.backend != "sagemaker-rcf" else None)
    run = run_report(ctx, report_dir, {"inputs": archive_counts["inputs"], "archive": archive_counts})
    return finish_run(ctx, result_object(ctx, archive_counts, feature_counts, model, summary, run, ranges), summary)


def import_meanwhile(detector: str) -> None:
    """Import the ``detector``'s module (``training.registry.detector_class``) in a thread while the archive runs: the
    train stage's scikit-learn and scipy take about a second of CPU to import, and the archive's own process mostly
    waits for its workers. A failure is printed by the thread and raised again where the train stage builds it."""
    threading.Thread(target=detector_class, args=(detector,), name="auditsift-import", daemon=True).start()


def result_object(ctx: RunContext, archive_counts: dict, feature_counts: dict, model: dict, summary: dict, run: dict,
                  ranges) -> dict:
    """The machine-readable result a Step Functions task or cron wrapper acts on (docs/operations.md)."""
    return {
        "run_id": ctx.run_id,
        "cluster": ctx.cluster,
        "status": "ok",
        "counts": {
            "records_read": archive_counts["records_read"], "events": archive_counts["events"],
            "events_added": archive_counts["events_added"], "duplicates": archive_counts["duplicates"],
            "audit_id_collisions": archive_counts["audit_id_collisions"],
            "quarantined": archive_counts["quarantined"], "entity_windows": feature_counts["rows"],
        },
        "records": summary["records"],
        "flagged": summary["flagged"],
        "suppressed": summary["suppressed"],
        "model": {"id": model["id"], "backend": model["backend"], "threshold": model["threshold"]},
        "report": run["report"]["html"],
        "report_dir": run["report"]["dir"],
        "ranges": ranges.as_dict(),
    }


def finish_run(ctx: RunContext, result: dict, summary: dict) -> dict:
    """Export the flagged findings (Security Hub / SNS, when enabled) and add what was exported to the result."""
    result["exported"] = export_findings(ctx.config, ctx.storage.read_json(f"{summary['key']}/findings.json"),
                                         latest_incidents(ctx.storage, summary), result)
    return result


def scheduled_run(ctx: RunContext, inputs: list[str], log_group: str | None, now: datetime) -> dict:
    """One scheduled pass (``auditsift cron``; the caller holds the workdir lock): the Step Functions run on one host.
    Archive, plan (ranges ending now, retrain when ``schedule.retrain_every_days`` have passed), features, train only
    when due, score, report and the configured export; returns ``run_pipeline``'s result plus ``retrained`` and ``plan``."""
    counts = archive_cloudwatch(ctx, log_group, now) if log_group else run_archive(ctx, inputs, now)
    ranges, plan = plan_run(ctx, now)
    ctx.storage.write_json(plan_key(ctx, ctx.run_id), plan)
    log.info("plan: retrain=%s (%s)", plan["retrain"], plan["reason"])
    feature_counts = run_features(ctx, ranges)
    model = run_train(ctx) if plan["retrain"] else ctx.read_state()["model"]
    summary = run_score(ctx)
    run = run_report(ctx, None, {"inputs": counts["inputs"], "archive": counts})
    result = result_object(ctx, counts, feature_counts, model, summary, run, ranges)
    result.update(retrained=plan["retrain"], plan=plan)
    return finish_run(ctx, result, summary)
