"""The Athena table matches the archive's layout and schema, and the example queries answer correctly.

The queries are run verbatim (only the table name substituted) with DuckDB over a real
archive read with hive partitioning, which is how Athena sees the same objects.
"""
from __future__ import annotations

import re
from datetime import timedelta, timezone

import duckdb
import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner

from features.events import EVENT_COLUMNS
from pipeline.config import load_config, parse_config
from pipeline.deploy.athena import archive_table_ddl, example_queries, hive_type, table_columns
from pipeline.errors import ConfigError
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.stages.archive import archive_inputs
from tests.factory import T0, event, write_jsonl

UTC = timezone.utc
DAY2 = T0 + timedelta(days=1, hours=5)


def person(name: str) -> dict:
    return {"username": name, "groups": ["system:authenticated"]}


def denied(at, audit_id, user, ip, code=403):
    return event(at, audit_id=audit_id, user=person(user), sourceIPs=[ip], verb="get", requestURI="/api/v1/namespaces/web/pods/x",
                 objectRef={"resource": "pods", "namespace": "web", "name": "x"}, responseStatus={"code": code},
                 annotations={"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""})


def secret(at, audit_id, user, name=None, code=200, verb="get"):
    ref = {"resource": "secrets", "namespace": "payments", **({"name": name} if name else {})}
    return event(at, audit_id=audit_id, user=person(user), verb=verb, objectRef=ref, responseStatus={"code": code},
                 requestURI="/api/v1/namespaces/payments/secrets" + (f"/{name}" if name else ""))


def exec_stage(at, audit_id, stage, code, user="mallory@corp.example", received=None):
    """One stage of an exec request; every stage carries the time the request was received (``received``, default ``at``)."""
    return event(at, audit_id=audit_id, stage=stage, user=person(user), sourceIPs=["203.0.113.50"], verb="create",
                 objectRef={"resource": "pods", "subresource": "exec", "namespace": "web", "name": "web-0"},
                 requestURI="/api/v1/namespaces/web/pods/web-0/exec?command=cat&command=%2Fvar%2Frun%2Fsecrets%2Ftoken",
                 responseStatus={"code": code}, requestReceivedTimestamp=(received or at).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def aws_auth(at, audit_id, verb, code=200, body=None):
    extra = {"requestObject": body} if body else {}
    return event(at, audit_id=audit_id, user=person("ops-admin"), verb=verb, responseStatus={"code": code},
                 objectRef={"resource": "configmaps", "namespace": "kube-system", "name": "aws-auth"},
                 requestURI="/api/v1/namespaces/kube-system/configmaps/aws-auth", **extra)


def scenario() -> list[dict]:
    """Two days, several hour partitions: known denials, Secret reads, exec sessions and aws-auth writes."""
    items = [denied(T0 + timedelta(minutes=i), f"d-a-{i}", "alice@corp.example", "10.0.12.34") for i in range(3)]
    items.append(denied(T0 + timedelta(hours=2), "d-b-0", "bob@corp.example", "10.0.40.2", code=401))
    items += [denied(DAY2 + timedelta(minutes=i), f"d-m-{i}", "mallory@corp.example", f"203.0.113.{50 + i % 2}") for i in range(5)]
    items += [secret(T0 + timedelta(hours=1, minutes=i), f"s-a-{i}", "alice@corp.example", "db") for i in range(2)]
    items.append(secret(T0 + timedelta(hours=3), "s-a-list", "alice@corp.example", verb="list"))
    items.append(secret(DAY2, "s-c-0", "carol@corp.example", "api"))
    items.append(secret(DAY2 + timedelta(minutes=1), "s-m-0", "mallory@corp.example", "db", code=403))
    started = DAY2 + timedelta(hours=1)
    items += [exec_stage(started, "x-1", "ResponseStarted", 101), exec_stage(started + timedelta(minutes=4), "x-1", "ResponseComplete", 101, received=started),
              exec_stage(started + timedelta(minutes=10), "x-2", "ResponseComplete", 403)]
    masters = {"data": {"mapRoles": "- rolearn: arn:aws:iam::111122223333:role/x\n  groups: [system:masters]"}}
    items += [aws_auth(T0 + timedelta(hours=4), "c-get", "get"), aws_auth(T0 + timedelta(hours=4, minutes=5), "c-upd", "update", body=masters),
              aws_auth(DAY2 + timedelta(hours=2), "c-patch", "patch", code=403)]
    items += [event(T0 + timedelta(hours=h), audit_id=f"ok-{h}") for h in range(6)]
    return items


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("athena")
    source = write_jsonl(root / "audit.jsonl", scenario())
    archive_inputs(LocalStorage(root / "work"), resolve_inputs([str(source)]), "demo", "r1")
    return root / "work"


@pytest.fixture(scope="module")
def answers(archive):
    """Every example query's rows, from DuckDB over the archive's Parquet files."""
    table = f"read_parquet('{archive}/archive/**/*.parquet', hive_partitioning = true)"
    queries = example_queries(parse_config({"cluster": "demo"}), table=table, date_from="2026-11-01", date_to="2026-11-02")
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    return {name: connection.execute(sql).fetchall() for name, sql in queries.items()}


def test_top_denied_users_counts_every_refused_request(answers):
    """mallory: 5 refused pod reads from two addresses, a refused Secret read and a refused exec."""
    assert answers["top_denied_users"] == [("mallory@corp.example", 7, 3), ("alice@corp.example", 3, 1),
                                           ("bob@corp.example", 1, 1), ("ops-admin", 1, 1)]


def test_secret_reads_by_user_count_allowed_reads_and_named_secrets(answers):
    assert answers["secret_reads_by_user"] == [("alice@corp.example", 3, 1), ("carol@corp.example", 1, 1)]


def test_exec_sessions_are_one_row_per_request(answers):
    rows = answers["exec_sessions"]
    started = DAY2 + timedelta(hours=1)
    assert [(r[0], r[1].astimezone(UTC), r[2], r[7]) for r in rows] == [
        ("x-1", started, "mallory@corp.example", 101),
        ("x-2", started + timedelta(minutes=10), "mallory@corp.example", 403),
    ]
    assert rows[0][6] == "cat /var/run/secrets/token"


def test_aws_auth_changes_list_writes_with_their_outcome(answers):
    rows = [(r[0].astimezone(UTC), r[1], r[4], r[5], r[6]) for r in answers["aws_auth_changes"]]
    assert rows == [(T0 + timedelta(hours=4, minutes=5), "ops-admin", "update", 200, True),
                    (DAY2 + timedelta(hours=2), "ops-admin", "patch", 403, None)]


def test_queries_only_read_the_requested_dates(archive):
    table = f"read_parquet('{archive}/archive/**/*.parquet', hive_partitioning = true)"
    sql = example_queries(parse_config({"cluster": "demo"}), table=table, date_from="2026-11-02", date_to="2026-11-02")
    assert duckdb.connect().execute(sql["top_denied_users"]).fetchall() == [("mallory@corp.example", 7, 3), ("ops-admin", 1, 1)]


def test_ddl_columns_are_event_columns_in_order_then_the_partition_columns():
    ddl = archive_table_ddl(parse_config({"cluster": "demo"}), "s3://audit-bucket/auditsift/archive")
    body = ddl.split("(\n", 1)[1].split("\n)", 1)[0]
    assert re.findall(r"`(\w+)` ([\w<>]+)", body) == table_columns()
    assert [name for name, _ in table_columns()] == [c.name for c in EVENT_COLUMNS]
    assert "PARTITIONED BY (\n  `cluster` string,\n  `date` string,\n  `hour` int\n)" in ddl
    assert "STORED AS PARQUET" in ddl and "LOCATION 's3://audit-bucket/auditsift/archive/'" in ddl


def test_partition_projection_matches_the_archive_layout():
    ddl = archive_table_ddl(parse_config({"cluster": "prod-eu"}), "s3://audit-bucket/auditsift/archive/")
    properties = dict(re.findall(r"'([\w.]+)'='([^']*)'", ddl))
    assert properties == {
        "projection.enabled": "true",
        "projection.cluster.type": "enum", "projection.cluster.values": "prod-eu",
        "projection.date.type": "date", "projection.date.format": "yyyy-MM-dd", "projection.date.range": "2024-01-01,NOW",
        "projection.date.interval": "1", "projection.date.interval.unit": "DAYS",
        "projection.hour.type": "integer", "projection.hour.range": "0,23", "projection.hour.digits": "2",
        "storage.location.template": "s3://audit-bucket/auditsift/archive/cluster=${cluster}/date=${date}/hour=${hour}",
    }


def test_archive_keys_fill_the_location_template(archive):
    template = "cluster=${cluster}/date=${date}/hour=${hour}"
    keys = sorted(p.parent.relative_to(archive / "archive").as_posix() for p in (archive / "archive").rglob("*.parquet"))
    pattern = re.escape(template).replace(r"\$\{cluster\}", "demo").replace(r"\$\{date\}", r"\d{4}-\d{2}-\d{2}").replace(r"\$\{hour\}", r"\d{2}")
    assert keys and all(re.fullmatch(pattern, key) for key in keys)


@pytest.mark.parametrize("arrow, hive", [
    (pa.timestamp("us", tz="UTC"), "timestamp"), (pa.string(), "string"), (pa.int32(), "int"),
    (pa.bool_(), "boolean"), (pa.list_(pa.string()), "array<string>"),
])
def test_arrow_types_map_to_hive_types(arrow, hive):
    assert hive_type(arrow) == hive


def test_athena_needs_an_s3_location():
    with pytest.raises(ConfigError, match="s3://"):
        archive_table_ddl(parse_config({}), "/var/lib/auditsift/archive")


def test_deploy_athena_prints_the_table_and_the_queries(tmp_path):
    from pipeline.cli.deploy import deploy_command

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"cluster": "demo", "deploy": {"bucket": "audit-bucket"}}))
    result = CliRunner().invoke(deploy_command, ["athena", "--config", str(config), "--date-from", "2026-11-01",
                                                 "--date-to", "2026-11-02"])
    assert result.exit_code == 0, result.output
    assert result.output.count("CREATE EXTERNAL TABLE IF NOT EXISTS auditsift.audit_events") == 1
    assert "LOCATION 's3://audit-bucket/auditsift/archive/'" in result.output
    assert all(f"-- {name}:" in result.output for name in example_queries(load_config(config)))
    assert "\"date\" BETWEEN '2026-11-01' AND '2026-11-02'" in result.output
