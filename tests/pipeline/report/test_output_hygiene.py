"""Attacker strings in what auditsift prints and writes: terminals, findings.csv, report.md and pivot queries.

A username is whatever the identity provider or the request says. Through a full `auditsift run`:
ESC sequences, C1 controls, DEL and bidirectional overrides in usernames reach neither the terminal
(`run`, `report`, `triage`) nor findings.csv raw, but as visible escapes (``pipeline.text.printable``);
URLs, numeric hosts, `www.` hosts, fullwidth dots and e-mail addresses in usernames never become links
in report.md (checked with markdown-it-py and its GFM linkify extension). The Logs Insights and Athena
pivots for an address select exactly the events the archive attributes to it: those whose last
sourceIPs entry it is, however long the X-Forwarded-For list before it (issue 16).

Each test records a one-line ``result`` property for docs/reliability.md (`make reliability`).
"""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt

from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.report.pivots import pivot_queries, sql_table
from pipeline.sample import sample_clock
from pipeline.stages.archive import archive_inputs, read_archive
from pipeline.stages.clock import iso
from pipeline.text import printable
from tests.e2e.test_hostile_inputs import built_once, sample_2d  # noqa: F401  (two days of sample logs, built once per session)
from tests.factory import T0, event, write_jsonl
from tests.pipeline.report.test_report_render import insights_literals

# Terminal payloads: set the window title and clear the screen (OSC, CSI), the 8-bit CSI and NEL, DEL, and a
# right-to-left override that shows "...exe.png" as "...gnp.exe" (and an isolate left open).
TERMINAL_USERS = ("\x1b]0;pwned\x07\x1b[2J\x1b[1;31mroot@corp.example", "eve\x9b2J\x85\x7f@corp.example",
                  "system:serviceaccount:web:\u202egnp.exe\u2066")
# Markdown autolink payloads: a scheme with a numeric host (no dot to escape), www., e-mail, fullwidth dots.
LINK_USERS = ("http://1558377473/x", "see www.evil.example", "bob@evil.example", "https://evil\uff0eexample/login",
              "evil\u3002example/login", "www\uff61evil\uff61example")
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # what must never be printed (\t, \n are layout)


def cli(*args: str):
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "250"})


def identity_events(day, users) -> list[dict]:
    """Each identity, new on the scored day, reads Secrets across namespaces (some refused) from a new address."""
    items = []
    for u, user in enumerate(users):
        start = day + timedelta(hours=2 + u, minutes=11)
        common = {"user": {"username": user, "groups": ["system:authenticated"]}, "sourceIPs": [f"203.0.113.{120 + u}"],
                  "userAgent": "python-requests/2.31.0"}
        for i in range(24):
            namespace = ("default", "kube-system", "payments", "web")[i % 4]
            items.append(event(start + timedelta(seconds=20 * i), audit_id=f"hygiene-{u}-{i}", verb="get",
                               objectRef={"resource": "secrets", "namespace": namespace, "name": f"token-{i}"},
                               requestURI=f"/api/v1/namespaces/{namespace}/secrets/token-{i}",
                               responseStatus={"code": 403 if i % 4 == 0 else 200}, **common))
    return items


@pytest.fixture(scope="session")
def hostile_run(sample_2d, tmp_path_factory) -> dict:
    """`auditsift run` (in process, as a terminal user runs it) over the sample plus the hostile identities."""
    end = sample_clock(sample_2d)
    outputs = {}

    def build(root: Path) -> None:
        (root / "extra").mkdir()
        write_jsonl(root / "extra" / "hostile.jsonl", identity_events(end - timedelta(days=1), TERMINAL_USERS + LINK_USERS))
        result = cli("run", "--input", str(sample_2d), "--input", str(root / "extra"), "--workdir", str(root / "work"), "--quiet",
                     "--now", iso(end))
        assert result.exit_code == 0, result.output
        (root / "run-stdout.txt").write_text(result.stdout)

    root = built_once(tmp_path_factory, "hygiene-run", build)
    outputs["run"] = (root / "run-stdout.txt").read_text()
    report = next((root / "work" / "reports").rglob("report.md")).parent
    # split on "\n" only: str.splitlines() also splits at the NEL (U+0085) inside a username
    findings = [json.loads(line) for line in (report / "anomalies.jsonl").read_text().split("\n") if line]
    return {"root": root, "workdir": root / "work", "report": report, "findings": findings, "outputs": outputs}


@pytest.mark.slow
def test_terminal_output_shows_control_characters_as_escapes(hostile_run, record_property):
    """The usernames with ESC, C1, DEL and bidi payloads rank at the top; the tables `auditsift run` and
    `auditsift report --no-write` print and the line `auditsift triage` prints hold none of those characters
    raw, and show them escaped (\\x1b, \\x9b, \\u202e)."""
    workdir = str(hostile_run["workdir"])
    ranked = [f for f in hostile_run["findings"] if f["entity"] in TERMINAL_USERS]
    top = sorted(ranked, key=lambda f: f["rank"])[0]
    listed = cli("report", "--workdir", workdir, "--no-write", "--top", str(max(f["rank"] for f in ranked)))
    triaged = cli("triage", top["finding_id"], "--workdir", workdir, "--verdict", "unsure")
    outputs = {"run": hostile_run["outputs"]["run"], "report --no-write": listed.stdout, "triage": triaged.stderr}
    raw = {name: sorted({f"U+{ord(c):04X}" for c in RAW.findall(text)}) for name, text in outputs.items()}
    record_property("result", f"{len(ranked)} hostile users ranked; raw control characters printed: {raw}")
    assert {f["entity"] for f in ranked} == set(TERMINAL_USERS)
    assert listed.exit_code == 0 and triaged.exit_code == 0, (listed.output, triaged.output)
    assert raw == {name: [] for name in outputs}
    assert all(printable(user) in listed.stdout for user in TERMINAL_USERS), listed.stdout
    assert printable(top["entity"]) in triaged.stderr


@pytest.mark.slow
def test_findings_csv_shows_control_characters_as_escapes(hostile_run, record_property):
    """findings.csv holds every hostile username, with control characters and bidi overrides as visible escapes."""
    text = (hostile_run["report"] / "findings.csv").read_text(encoding="utf-8")
    entities = {row["entity"] for row in csv.DictReader(io.StringIO(text))}
    raw = sorted({f"U+{ord(c):04X}" for c in RAW.findall(text)})
    record_property("result", f"raw control characters in findings.csv: {raw}")
    assert raw == []
    assert {printable(user) for user in TERMINAL_USERS} <= entities
    assert "system:serviceaccount:web:\\u202egnp.exe\\u2066" in entities and "eve\\x9b2J\\x85\\x7f@corp.example" in entities


@pytest.mark.slow
def test_report_md_has_no_autolinks_for_urls_hosts_or_addresses_in_usernames(hostile_run, record_property):
    """report.md shows each URL-, host- and e-mail-like username as text: no link under GFM linkify."""
    markdown = (hostile_run["report"] / "report.md").read_text()
    renderer = MarkdownIt("gfm-like", {"html": True, "linkify": True})
    tokens = renderer.parse(markdown)
    flat = [t for token in tokens for t in ([token] + list(token.children or []))]
    links = [t.attrs.get("href") for t in flat if t.type == "link_open"]
    text = "".join(t.content for t in flat if t.type == "text")
    shown = [user for user in LINK_USERS if user in text]
    record_property("result", f"{len(shown)} of {len(LINK_USERS)} link-like usernames shown as text; links: {links}")
    assert shown == list(LINK_USERS)
    assert links == []


@pytest.mark.parametrize("user", LINK_USERS + ("http://evil.example/a?b=c", "mailto:bob@evil.example", "1.2.3.4:8080/x"))
def test_md_escape_leaves_no_autolink(user):
    from pipeline.report.render import md_escape

    renderer = MarkdownIt("gfm-like", {"html": True, "linkify": True})
    renderer.linkify.set({"fuzzy_ip": True})
    tokens = renderer.parse(f"| {md_escape(user)} |")
    flat = [t for token in tokens for t in ([token] + list(token.children or []))]
    assert not [t for t in flat if t.type in ("link_open", "html_inline")]
    assert "".join(t.content for t in flat if t.type == "text").strip("| ") == user


# --------------------------------------------------------------------------- pivots attribute like the archive
ADDRESS, OTHER, PROXY = "198.51.100.9", "203.0.113.77", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
GO_ORDER = ("kind", "apiVersion", "level", "auditID", "stage", "requestURI", "verb", "user", "impersonatedUser", "sourceIPs",
            "userAgent", "objectRef", "responseStatus", "requestObject", "responseObject", "requestReceivedTimestamp",
            "stageTimestamp", "annotations")


def as_apiserver_writes(item: dict) -> str:
    """The event as the API server logs it (the CloudWatch message): compact JSON, fields in the Go struct's order."""
    return json.dumps({key: item[key] for key in GO_ORDER if key in item}, separators=(",", ":"))


def attribution_events() -> list[dict]:
    """Five-entry X-Forwarded-For lists with the address first or last, and decoys: the address in an
    impersonated user's extra values, in a request body, or followed by an empty entry."""
    at = T0 + timedelta(minutes=5)
    masters = {"metadata": {}, "sourceIPs": [ADDRESS]}
    return [
        event(at, audit_id="claimed-only", sourceIPs=[ADDRESS, *PROXY, OTHER]),
        event(at + timedelta(minutes=1), audit_id="connection", sourceIPs=[OTHER, *PROXY, ADDRESS]),
        event(at + timedelta(minutes=2), audit_id="single", sourceIPs=[ADDRESS]),
        event(at + timedelta(minutes=3), audit_id="impersonated-extra", sourceIPs=[OTHER],
              impersonatedUser={"username": "bob", "extra": {"sourceIPs": [ADDRESS]}}),
        event(at + timedelta(minutes=4), audit_id="body", sourceIPs=[OTHER], verb="create", requestObject=masters),
        event(at + timedelta(minutes=5), audit_id="trailing-empty", sourceIPs=[OTHER, ADDRESS, ""]),
    ]


def insights_selects(query: str, item: dict, stream: str = "kube-apiserver-audit-0123abcd") -> bool:
    """Evaluate the pivot's filter and parse commands on one event as Logs Insights would: discovered fields are
    the flattened JSON (``sourceIPs.0``), ``@message`` the line, ``parse`` sets its named group's field."""
    fields = {"@message": as_apiserver_writes(item), "@logStream": stream, **flatten(item)}
    for line in query.splitlines():
        command = line.lstrip("| ").split(" ", 1)
        if command[0] == "parse":
            pattern = python_regex(re.fullmatch(r"@message /(.*)/", command[1])[1])
            match = re.search(pattern, fields["@message"])
            fields.update(match.groupdict() if match else {})
        elif command[0] == "filter":
            terms = re.findall(r'([\w.@]+) (=|like|in) ("(?:[^"\\]|\\.)*"|/(?:[^/\\]|\\.)*/|\[[^\]]*\])', command[1])
            if not any(term_holds(fields.get(name), op, literal) for name, op, literal in terms):
                return False
    return True


def term_holds(value, op: str, literal: str) -> bool:
    if value is None:
        return False
    if op == "=":
        return value == json.loads(literal)
    if op == "in":
        return value in json.loads(literal)
    return re.search(python_regex(literal[1:-1]), value) is not None


def python_regex(pattern: str) -> str:
    pattern = pattern.replace("(?<", "(?P<")
    return re.sub(r"\\x\{([0-9a-f]+)\}", lambda m: re.escape(chr(int(m[1], 16))), pattern)


def flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for index, item in enumerate(value) for k, v in flatten(item, f"{prefix}{index}.").items()}
    return {prefix[:-1]: value if isinstance(value, str) else json.dumps(value)}


def test_address_pivots_select_exactly_what_the_archive_attributes(tmp_path, record_property):
    """For an address, the Logs Insights pivot (on the raw messages) and the Athena pivot (on the archive, in
    DuckDB) select exactly the events whose last sourceIPs entry is that address: not one where it is only
    claimed first in a 5-entry X-Forwarded-For list, nor decoys in an impersonated user's extra or a body."""
    items = attribution_events()
    write_jsonl(tmp_path / "audit.jsonl", items)
    storage = LocalStorage(tmp_path / "work")
    archive_inputs(storage, resolve_inputs([str(tmp_path / "audit.jsonl")]), "demo", "r1")
    archived = {row["audit_id"] for table in read_archive(storage, "demo", columns=["audit_id", "source_ip"])
                for row in table.to_pylist() if row["source_ip"] == ADDRESS}
    config = parse_config({"cluster": "demo", "report": {"athena_table": "sec.audit_events"}})
    finding = {"entity_type": "source_ip", "entity": ADDRESS, "window_start": "2026-11-01T09:00:00Z",
               "window_end": "2026-11-01T10:00:00Z", "audit_ids": []}
    queries = pivot_queries(finding, [], config)
    insights = {item["auditID"] for item in items if insights_selects(queries["insights_entity"], item)}
    source = f"read_parquet('{tmp_path / 'work' / 'archive'}/**/*.parquet', hive_partitioning=true)"
    athena = {row[1] for row in duckdb.connect().sql(queries["athena_entity"].replace(sql_table("sec.audit_events"), source)).fetchall()}
    record_property("result", f"archive: {sorted(archived)}; Logs Insights: {sorted(insights)}; Athena: {sorted(athena)}")
    assert archived == {"connection", "single", "trailing-empty"}
    assert insights == archived and athena == archived
    commands, strings, _ = insights_literals(queries["insights_entity"])
    assert commands == 5 and ADDRESS in strings
