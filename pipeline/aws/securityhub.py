"""AWS Security Hub: the flagged incidents as ASFF (``pipeline.report.asff``) through BatchImportFindings.

Any rejected finding raises one ``AwsCallError`` naming the call and the first FailedFindings
reason, after every batch has been sent.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Mapping

from features.rules import Rule
from pipeline.aws import session as aws
from pipeline.config import Config
from pipeline.errors import AwsCallError
from pipeline.report.asff import BATCH_SIZE, clean, incident_asff, product_arn

log = logging.getLogger(__name__)


def caller_account(config: Config) -> str:
    """``findings.securityhub.account_id``, else the caller's own account (the default product requires it)."""
    configured = config.findings.securityhub.account_id
    if configured:
        return configured
    sts = aws.client("sts", config)
    return aws.call(sts.get_caller_identity)["Account"]


def import_to_security_hub(config: Config, incidents: list[dict], findings: list[dict], run_result: dict,
                           rules: Mapping[str, Rule], now: datetime | None = None) -> dict:
    """One ASFF finding per incident (``findings``: the run's findings, its members are looked up there; ``rules``: the
    rule pack by id, for the types), BatchImportFindings in batches of 100; every batch is sent before rejections are raised."""
    client = aws.client("securityhub", config)
    region = client.meta.region_name
    account = caller_account(config)
    product = product_arn(config, region, account)
    updated_at = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    by_id = {f["finding_id"]: f for f in findings}
    items = [incident_asff(i, [by_id[f] for f in i["finding_ids"] if f in by_id], rules=rules, cluster=config.cluster, region=region,
                           account=account, product=product, updated_at=updated_at, run_result=run_result) for i in incidents]
    imported, failed = 0, []
    for start in range(0, len(items), BATCH_SIZE):
        batch = items[start:start + BATCH_SIZE]
        response = aws.call(client.batch_import_findings, f"{len(batch)} findings into {product}", Findings=batch)
        imported += int(response.get("SuccessCount", 0))
        failed.extend(response.get("FailedFindings", []))
    if failed:
        first = failed[0]
        raise AwsCallError(
            f"SecurityHub.BatchImportFindings rejected {len(failed)} of {len(items)} findings: "
            f"{first.get('ErrorCode', 'Unknown')}: {clean(first.get('ErrorMessage', ''), 300)} (Id {first.get('Id')})",
            hint="the other findings were imported; fix the reported field and rerun (Ids are stable, nothing duplicates)",
        )
    log.info("imported %d incidents into Security Hub (%s)", imported, product)
    return {"imported": imported, "batches": -(-len(items) // BATCH_SIZE), "product_arn": product}
