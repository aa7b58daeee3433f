"""ARN parts that depend only on the region (no AWS call, no boto3)."""
from __future__ import annotations


def partition(region: str) -> str:
    """The ARN partition of ``region``: aws, aws-cn or aws-us-gov."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"
