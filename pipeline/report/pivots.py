"""Pivot queries: for each finding, ready queries that bring back its events at the source.

Raw events live in two places: CloudWatch Logs (the EKS control-plane log group, queried
with Logs Insights) and the archive (hour-partitioned Parquet, queried with Athena). For
each finding there is an evidence query (exactly its evidence events: entity AND window AND
audit IDs) and an entity query (everything the entity did in the window, beyond the capped
evidence).

Every value in a query came from a log and is attacker-controlled: usernames, addresses,
even audit IDs (a client may set the Audit-ID header). Each is escaped for its language:
SQL string literals double their single quotes and spell control characters as ``chr(n)``;
Logs Insights values that are not plain text are matched with an anchored regex in which
every non-alphanumeric character is hex-escaped, so no quote, slash or pipe survives.
"""
from __future__ import annotations

import re
import shlex
from datetime import datetime, timedelta, timezone

from pipeline.config import Config
from pipeline.io.storage import safe_segment

# The event columns a finding's evidence shows (the score stage selects them; the report and pivots print them).
EVIDENCE_COLUMNS = ("time", "audit_id", "stage", "user", "source_ip", "claimed_ip", "user_agent", "verb", "resource",
                    "subresource", "namespace", "name", "code", "request_uri", "impersonated_user")
ATHENA_COLUMNS = EVIDENCE_COLUMNS + ("decision", "authz_reason", "arn")
INSIGHTS_FIELDS = ("@timestamp", "auditID", "stage", "user.username", "verb", "objectRef.resource", "objectRef.subresource",
                   "objectRef.namespace", "objectRef.name", "responseStatus.code", "userAgent", "sourceIPs.0", "requestURI")
LAST_SOURCE_IP = "auditsiftSourceIP"
# The last non-empty entry of the event's own sourceIPs list, as the archive's ``source_ip`` column takes it. The
# API server writes the event as compact JSON in which the top-level "sourceIPs" follows the user (or impersonated
# user) object, so it is the first ``},"sourceIPs":[`` of the line: a user's extra values are lists (a key there
# follows '{' or ']'), and request and response bodies come after it. Quotes as \x22, like every regex built here.
LAST_SOURCE_IP_PATTERN = (r"\},\x22sourceIPs\x22:\[(?:\x22[^\x22]*\x22,)*\x22(?<" + LAST_SOURCE_IP + r">[^\x22]+)\x22"
                          r"(?:,\x22\x22)*\]")
_PLAIN = re.compile(r"[A-Za-z0-9 ._:@/+=,%*~-]*")
_REGEX_LITERAL = frozenset("-_@:,=")


def pivot_queries(finding: dict, evidence: list[dict] | None, config: Config) -> dict:
    """Logs Insights and Athena queries for one finding, with the time range Insights takes out of band.

    The evidence queries filter by the finding's entity, its window and the audit IDs of its
    evidence (``evidence`` when given, else the finding's own ``audit_ids``); every stage of
    those requests comes back (exec requests log ResponseStarted and ResponseComplete).
    """
    start, end = _window(finding)
    audit_ids = sorted({e["audit_id"] for e in evidence or [] if e.get("audit_id")} or set(finding.get("audit_ids") or ()))
    log_group = config.report.log_group or config.deploy.log_group or f"/aws/eks/{config.cluster}/cluster"
    insights = insights_query(finding, audit_ids, config.archive.audit_stream_prefix)
    table = sql_table(config.report.athena_table)
    return {
        "time_range": {"start": _iso(start), "end": _iso(end), "start_epoch": int(start.timestamp()), "end_epoch": int(end.timestamp())},
        "log_group": log_group,
        "insights": insights,
        "insights_entity": insights_query(finding, [], config.archive.audit_stream_prefix),
        "insights_cli": " ".join([
            "aws logs start-query", "--log-group-name", shlex.quote(log_group), "--start-time", str(int(start.timestamp())),
            "--end-time", str(int(end.timestamp())), "--query-string", shlex.quote(insights),
        ]),
        "athena": athena_sql(finding, audit_ids, config.cluster, table),
        "athena_entity": athena_sql(finding, [], config.cluster, table),
    }


def _window(finding: dict) -> tuple[datetime, datetime]:
    def parse(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)

    return parse(finding["window_start"]), parse(finding["window_end"])


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- Logs Insights
def insights_query(finding: dict, audit_ids: list[str], stream_prefix: str) -> str:
    """A Logs Insights query for the finding's entity (and, when given, these audit IDs), oldest first."""
    lines = [
        "fields " + ", ".join(INSIGHTS_FIELDS),
        f"| filter @logStream like /{insights_regex_body(stream_prefix)}/",
        *insights_entity_filter(finding["entity_type"], finding["entity"]),
    ]
    if audit_ids:
        lines.append(f"| filter {insights_in('auditID', audit_ids)}")
    lines.append("| sort @timestamp asc")
    return "\n".join(lines)


def insights_entity_filter(entity_type: str, entity: str) -> list[str]:
    """The commands selecting the entity's events. An address is attributed as the archive attributes it:
    the last sourceIPs entry (earlier ones are X-Forwarded-For, which the client sets), however long the
    list, parsed out of the raw message (Logs Insights has no "last element"); an address that is only
    claimed in X-Forwarded-For does not select the event."""
    if entity_type == "user":
        return [f"| filter {insights_equals('user.username', entity)}"]
    return [f"| parse @message /{LAST_SOURCE_IP_PATTERN}/", f"| filter {insights_equals(LAST_SOURCE_IP, entity)}"]


def insights_equals(field: str, value: str) -> str:
    """``field = "value"`` for plain text, else an anchored, fully escaped regex match."""
    if _PLAIN.fullmatch(value):
        return f'{field} = "{value}"'
    return f"{field} like /^{insights_regex_body(value)}$/"


def insights_in(field: str, values: list[str]) -> str:
    """Set membership: plain values in one ``in [...]`` list, the rest as escaped regex matches."""
    plain = [v for v in values if _PLAIN.fullmatch(v)]
    conditions = [f"{field} in [" + ", ".join(f'"{v}"' for v in plain) + "]"] if plain else []
    conditions += [f"{field} like /^{insights_regex_body(v)}$/" for v in values if not _PLAIN.fullmatch(v)]
    return " or ".join(conditions)


def insights_regex_body(value: str) -> str:
    """A regex matching ``value`` literally: letters, digits and ``-_@:,=`` as they are, every other
    ASCII character (quotes, slashes, pipes, control bytes) as ``\\xHH``, unprintable others as ``\\x{H}``."""
    out = []
    for char in value:
        code = ord(char)
        if (char.isascii() and char.isalnum()) or char in _REGEX_LITERAL:
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\x{{{code:x}}}")
    return "".join(out)


# --------------------------------------------------------------------------- Athena
def athena_sql(finding: dict, audit_ids: list[str], cluster: str, table: str) -> str:
    """Athena (Trino) SQL over the archive table; the same text runs in DuckDB over the Parquet files.

    Partition filters (``cluster``, ``date``, ``hour``) prune the scan to the window's hours;
    ``hour`` is cast because DuckDB's Hive reader types ``hour=09`` as text. Times are
    compared as UTC instants so neither engine's session time zone matters.
    """
    start, end = _window(finding)
    last = end - timedelta(microseconds=1)
    column = "user" if finding["entity_type"] == "user" else "source_ip"
    where = [f'{sql_identifier("cluster")} = {sql_string(safe_segment(cluster))}']
    if start.date() == last.date():
        where.append(f'{sql_identifier("date")} = {sql_string(start.strftime("%Y-%m-%d"))}')
        where.append(f'CAST({sql_identifier("hour")} AS INTEGER) BETWEEN {start.hour} AND {last.hour}')
    else:
        where.append(f'{sql_identifier("date")} BETWEEN {sql_string(start.strftime("%Y-%m-%d"))} AND {sql_string(last.strftime("%Y-%m-%d"))}')
    where.append(f'{sql_identifier("time")} >= {sql_instant(start)}')
    where.append(f'{sql_identifier("time")} < {sql_instant(end)}')
    where.append(f"{sql_identifier(column)} = {sql_string(finding['entity'])}")
    if audit_ids:
        where.append(f'{sql_identifier("audit_id")} IN (' + ", ".join(sql_string(a) for a in audit_ids) + ")")
    return "\n".join([
        "SELECT " + ", ".join(sql_identifier(c) for c in ATHENA_COLUMNS),
        f"FROM {table}",
        "WHERE " + "\n  AND ".join(where),
        "ORDER BY " + ", ".join(sql_identifier(c) for c in ("time", "audit_id", "stage")),
    ])


def sql_string(value: str) -> str:
    """A SQL string literal equal to ``value``: quotes doubled, control characters as chr(n) so no
    raw line break or NUL ever sits inside the query text."""
    parts, buffer = [], []
    for char in value:
        if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 or char in "\u2028\u2029":
            if buffer:
                parts.append("'" + "".join(buffer).replace("'", "''") + "'")
                buffer = []
            parts.append(f"chr({ord(char)})")
        else:
            buffer.append(char)
    if buffer or not parts:
        parts.append("'" + "".join(buffer).replace("'", "''") + "'")
    return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"


def sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_instant(moment: datetime) -> str:
    return f"CAST('{moment.strftime('%Y-%m-%d %H:%M:%S')} UTC' AS TIMESTAMP WITH TIME ZONE)"


def sql_table(name: str) -> str:
    """``db.table`` from the config as quoted identifiers."""
    return ".".join(sql_identifier(part) for part in name.split("."))
