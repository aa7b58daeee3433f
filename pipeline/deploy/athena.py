"""Athena/Glue access to the archive: one external table with partition projection, and analyst queries.

The table's columns are ``features.events.EVENT_COLUMNS`` in order (the archive's own schema),
partitioned the way the archive is laid out:
``<location>cluster=<c>/date=YYYY-MM-DD/hour=HH/part-0.parquet``. Partition projection
computes partitions from the table properties, so new hours are queryable at once with no
crawler and no MSCK REPAIR. Queries should always filter on ``cluster`` and ``"date"`` so
Athena reads only those prefixes.

The example queries are written in the SQL subset Athena (Trino) and DuckDB share, with
``{table}`` standing for the table, so tests/pipeline/deploy/test_athena.py runs the same text over a
local archive with DuckDB.
"""
from __future__ import annotations

from datetime import date, timedelta

import pyarrow as pa

from features.events import EVENT_COLUMNS
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.io.storage import safe_segment

PROJECTION_START = "2024-01-01"


def hive_type(data_type: pa.DataType) -> str:
    """The Hive/Glue column type Athena reads an archive Parquet column as."""
    if pa.types.is_timestamp(data_type):
        return "timestamp"
    if pa.types.is_string(data_type):
        return "string"
    if pa.types.is_int32(data_type):
        return "int"
    if pa.types.is_int64(data_type):
        return "bigint"
    if pa.types.is_boolean(data_type):
        return "boolean"
    if pa.types.is_list(data_type):
        return f"array<{hive_type(data_type.value_type)}>"
    raise ValueError(f"no Hive type for Arrow type {data_type}")


def table_columns() -> list[tuple[str, str]]:
    """(name, Hive type) of every archive column, in EVENT_COLUMNS order."""
    return [(column.name, hive_type(column.type)) for column in EVENT_COLUMNS]


def archive_table_ddl(config: Config, location: str, clusters: list[str] | None = None) -> str:
    """CREATE EXTERNAL TABLE over the archive at ``location`` (``s3://bucket/prefix/archive/``).

    ``cluster`` is projected as an enum of ``clusters`` (default: the configured cluster),
    ``date`` as dates from 2024-01-01 to NOW, ``hour`` as 00..23.
    """
    if not location.startswith("s3://"):
        raise ConfigError(f"Athena needs an s3:// archive location, not {location!r}", hint="use an s3:// workdir")
    location = location.rstrip("/") + "/"
    table = config.report.athena_table
    names = ",".join(safe_segment(name) for name in (clusters or [config.cluster]))
    columns = ",\n".join(f"  `{name}` {kind}" for name, kind in table_columns())
    properties = {
        "projection.enabled": "true",
        "projection.cluster.type": "enum",
        "projection.cluster.values": names,
        "projection.date.type": "date",
        "projection.date.format": "yyyy-MM-dd",
        "projection.date.range": f"{PROJECTION_START},NOW",
        "projection.date.interval": "1",
        "projection.date.interval.unit": "DAYS",
        "projection.hour.type": "integer",
        "projection.hour.range": "0,23",
        "projection.hour.digits": "2",
        "storage.location.template": location + "cluster=${cluster}/date=${date}/hour=${hour}",
    }
    rendered = ",\n".join(f"  '{key}'='{value}'" for key, value in properties.items())
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS {table} (\n{columns}\n)\n"
        "PARTITIONED BY (\n  `cluster` string,\n  `date` string,\n  `hour` int\n)\n"
        "STORED AS PARQUET\n"
        f"LOCATION '{location}'\n"
        f"TBLPROPERTIES (\n{rendered}\n)"
    )


EXAMPLE_QUERIES: dict[str, tuple[str, str]] = {
    "top_denied_users": (
        "Who is refused most: stolen or expired credentials, or probing beyond granted rights.",
        """SELECT "user", count(*) AS denied, count(DISTINCT source_ip) AS addresses
FROM {table}
WHERE cluster = '{cluster}' AND "date" BETWEEN '{date_from}' AND '{date_to}'
  AND code IN (401, 403) AND stage = 'ResponseComplete'
GROUP BY "user"
ORDER BY denied DESC, "user"
LIMIT 20""",
    ),
    "secret_reads_by_user": (
        "Who read Secrets, and how many different ones: a sweep reads many.",
        """SELECT "user", count(*) AS reads, count(DISTINCT namespace || '/' || name) AS secrets
FROM {table}
WHERE cluster = '{cluster}' AND "date" BETWEEN '{date_from}' AND '{date_to}'
  AND resource = 'secrets' AND verb IN ('get', 'list', 'watch')
  AND code BETWEEN 200 AND 299 AND stage = 'ResponseComplete'
GROUP BY "user"
ORDER BY reads DESC, "user"
LIMIT 50""",
    ),
    "exec_sessions": (
        "Shells in containers (exec/attach), one row per request even though it logs two stages.",
        """SELECT audit_id, min("time") AS started, "user", source_ip, namespace, name AS pod, exec_command,
       max(code) AS code
FROM {table}
WHERE cluster = '{cluster}' AND "date" BETWEEN '{date_from}' AND '{date_to}'
  AND subresource IN ('exec', 'attach') AND stage <> 'RequestReceived'
GROUP BY audit_id, received_time, "user", source_ip, namespace, name, exec_command
ORDER BY started, audit_id""",
    ),
    "aws_auth_changes": (
        "Writes to kube-system/aws-auth: who mapped which IAM principals into the cluster.",
        """SELECT "time", "user", arn, source_ip, verb, code, grants_masters
FROM {table}
WHERE cluster = '{cluster}' AND "date" BETWEEN '{date_from}' AND '{date_to}'
  AND resource = 'configmaps' AND namespace = 'kube-system' AND name = 'aws-auth'
  AND verb IN ('create', 'update', 'patch', 'delete') AND stage = 'ResponseComplete'
ORDER BY "time", audit_id""",
    ),
}


def example_queries(config: Config, table: str | None = None, date_from: str | None = None,
                    date_to: str | None = None) -> dict[str, str]:
    """The analyst queries for the configured cluster over ``[date_from, date_to]`` (default: the last 7 days)."""
    today = date.today()
    values = {
        "table": table or config.report.athena_table,
        "cluster": safe_segment(config.cluster),
        "date_from": _date(date_from, "--date-from") if date_from else (today - timedelta(days=7)).isoformat(),
        "date_to": _date(date_to, "--date-to") if date_to else today.isoformat(),
    }
    return {name: sql.format(**values) for name, (_, sql) in EXAMPLE_QUERIES.items()}


def _date(text: str, flag: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a date", hint="e.g. 2026-11-01") from None


def athena_script(config: Config, location: str, date_from: str | None = None, date_to: str | None = None) -> str:
    """The DDL and the example queries as one SQL file for the Athena console or CLI."""
    queries = example_queries(config, date_from=date_from, date_to=date_to)
    parts = [f"-- auditsift archive table (partition projection; no crawler or MSCK REPAIR needed)\n"
             f"{archive_table_ddl(config, location)};"]
    for name, sql in queries.items():
        parts.append(f"-- {name}: {EXAMPLE_QUERIES[name][0]}\n{sql};")
    return "\n\n".join(parts)
