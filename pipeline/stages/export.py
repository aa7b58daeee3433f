"""The export stage: a scored run's flagged incidents to AWS Security Hub and/or an SNS summary, as the
configuration enables (``findings.securityhub.enabled``, ``findings.sns.enabled``)."""
from __future__ import annotations

from pipeline.catalog import load_rule_pack
from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import StageError
from pipeline.report.asff import exportable_incidents
from pipeline.stages.report import latest_incidents


def export_findings(config: Config, findings: list[dict], incidents: list[dict], run_result: dict) -> dict:
    """Send a scored run's incidents wherever the config enables: one Security Hub finding per flagged incident, and/or
    an SNS summary.

    ``incidents``: the score stage's incident records (incidents.json); ``run_result`` is
    ``pipeline.stages.run.run_pipeline``'s result (run_id, report, ranges are read).
    Returns what was sent; a section is None when it is disabled.
    """
    result: dict = {"securityhub": None, "sns": None}
    hub = config.findings.securityhub
    if hub.enabled:
        result["securityhub"] = {"selected": 0, "imported": 0, "batches": 0}
        selected = exportable_incidents(incidents, findings, hub.min_score)
        if selected:
            from pipeline.aws.securityhub import import_to_security_hub  # boto3 loads only when an export is enabled

            rules = load_rule_pack(config).by_id()
            result["securityhub"] = {"selected": len(selected), **import_to_security_hub(config, selected, findings, run_result, rules)}
    if config.findings.sns.enabled:
        from pipeline.aws.sns import publish_summary  # boto3 loads only when an export is enabled

        result["sns"] = publish_summary(config, findings, run_result, incidents)
    return result


def latest_run(storage, config: Config) -> tuple[list[dict], list[dict], dict]:
    """The latest scored findings and incidents of the workdir and a run result assembled from its state file."""
    state = RunContext(storage, config, "export").read_state()
    score = state.get("score")
    if not score:
        raise StageError("nothing scored yet in this workdir", hint="run `auditsift score` (or `auditsift run`) first")
    report = state.get("report") or {}
    run_result = {"run_id": score["run_id"], "cluster": config.cluster, "records": score["records"],
                  "flagged": score["flagged"], "suppressed": score["suppressed"], "ranges": score.get("ranges"),
                  "report": report.get("html")}
    return storage.read_json(f"{score['key']}/findings.json"), latest_incidents(storage, score), run_result
