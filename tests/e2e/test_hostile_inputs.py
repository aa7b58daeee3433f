"""Hostile strings and planted secrets through the whole pipeline (`auditsift run`, as a user runs it).

Everything in an audit event is attacker-controlled: a username chosen at sign-up, a user agent,
an object name, a request URI. Injected into realistic sample data, payloads for HTML, CSV, Markdown
and file paths must come out inert in every report file, and Secret or ConfigMap values written by
anyone must never be stored anywhere in the workdir.
"""
from __future__ import annotations

import csv
import fcntl
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from markupsafe import escape

from pipeline.cli import main
from pipeline.sample import sample_clock
from tests.factory import apiserver_line, envelope, event

BIN = Path(sys.executable).parent / "auditsift"

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '" onmouseover="alert(1)'
JS_URL = "javascript:alert(1)"
STYLE_BREAK = "</style><img src=x onerror=alert(1)>"
MD_LINK = "](http://evil)"
MD_PIPE = "| pipe |"
INJECTED_HEADING = "# injected heading"
TRAVERSAL_USER = "../../etc/passwd"
FORMULA_USERS = ('=HYPERLINK("http://evil")', "+cmd|' /C calc'!A0", "@SUM(1)", "-2+3")
USERS = (TRAVERSAL_USER, f"mallory{SCRIPT}", f"eve{MD_LINK} {MD_PIPE}\n{INJECTED_HEADING}", *FORMULA_USERS)
AGENTS = (f"kubectl/v1.29.2 {ATTRIBUTE}", f"curl/8.5.0 {JS_URL}", f"python-requests/2.31 {SCRIPT}")
OBJECT_NAME = f"db-creds{STYLE_BREAK}"
RESOURCE = f"widgets{STYLE_BREAK}"
HTML_PAYLOADS = (SCRIPT, ATTRIBUTE, STYLE_BREAK)

SECRET_VALUES = ("AKIAQPLANTED7KEY0001", "PLANTED-db-password-9f2c1e", "PLANTED-token-c0ffee-7731", "AKIAQPLANTED7KEY0002",
                 "PLANTED-configmap-password-55aa")


def hostile_events(day: datetime) -> list[dict]:
    """On the scored day, each hostile identity reads secrets across namespaces (some denied), execs
    into a pod and writes a Secret and a ConfigMap, from a new external address with a payload agent."""
    items = []
    for u, user in enumerate(USERS):
        start = day + timedelta(hours=3 + u, minutes=7)
        identity = {"username": user, "groups": ["system:authenticated"],
                    "extra": {"arn": [f"arn:aws:sts::111122223333:assumed-role/Contractor/{u}"], "sessionName": [str(u)]}}
        common = {"user": identity, "sourceIPs": [f"203.0.113.{60 + u}"], "userAgent": AGENTS[u % len(AGENTS)]}
        for i in range(30):
            namespace = ("default", "kube-system", "payments", "web")[i % 4]
            items.append(event(start + timedelta(seconds=20 * i), audit_id=f"hostile-{u}-read-{i}", verb="get" if i % 3 else "list",
                               objectRef={"resource": "secrets", "namespace": namespace, "name": OBJECT_NAME},
                               requestURI=f"/api/v1/namespaces/{namespace}/secrets/{OBJECT_NAME}?x={SCRIPT}{MD_LINK}",
                               responseStatus={"code": 403 if i % 5 == 0 else 200}, **common))
        at = start + timedelta(minutes=11)
        items.append(event(at, audit_id=f"hostile-{u}-exec", stage="ResponseStarted", verb="create",
                           objectRef={"resource": "pods", "subresource": "exec", "namespace": "payments", "name": OBJECT_NAME},
                           requestURI=f"/api/v1/namespaces/payments/pods/x/exec?command=sh&command=-c&command={JS_URL}{SCRIPT}",
                           responseStatus={"code": 101}, **common))
        items.append(event(at + timedelta(seconds=5), audit_id=f"hostile-{u}-secret", verb="create", level="RequestResponse",
                           objectRef={"resource": "secrets", "namespace": "payments", "name": "stolen"},
                           requestObject={"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "stolen"},
                                          "data": {"aws_access_key_id": SECRET_VALUES[0], "password": SECRET_VALUES[1]},
                                          "stringData": {"token": SECRET_VALUES[2]}},
                           responseObject={"kind": "Secret", "data": {"aws_access_key_id": SECRET_VALUES[0]}}, **common))
        items.append(event(at + timedelta(seconds=9), audit_id=f"hostile-{u}-configmap", verb="update", level="RequestResponse",
                           objectRef={"resource": "configmaps", "namespace": "payments", "name": OBJECT_NAME},
                           requestObject={"kind": "ConfigMap", "data": {"AWS_ACCESS_KEY_ID": SECRET_VALUES[3],
                                                                        "db_password": SECRET_VALUES[4], "note": SCRIPT}}, **common))
        items.append(event(at + timedelta(seconds=12), audit_id=f"hostile-{u}-custom", verb="delete",
                           objectRef={"resource": RESOURCE, "namespace": "payments", "name": OBJECT_NAME, "apiGroup": "evil.example"},
                           requestURI=f"/apis/evil.example/v1/namespaces/payments/{RESOURCE}/{OBJECT_NAME}", **common))
    return items


UNREADABLE_WRITER = "mallory-unread@corp.example"
GRANT_MASTERS = b'{"data":{"mapUsers":"- userarn: arn:aws:iam::111122223333:user/mallory\\n  groups: [system:masters]"}'


def unreadable_writes(day: datetime) -> dict[str, bytes]:
    """The issue's aws-auth patch granting system:masters, made unreadable two ways on the scored day:
    a body Go accepts and orjson refuses (1e400) in a JSON-lines file, and a 300 KB user agent that
    CloudWatch cuts at 256 KB, delivered by Firehose (the cut event's time is its log event's)."""
    common = {"verb": "patch", "level": "RequestResponse", "requestURI": "/api/v1/namespaces/kube-system/configmaps/aws-auth",
              "objectRef": {"resource": "configmaps", "namespace": "kube-system", "name": "aws-auth", "apiVersion": "v1"},
              "user": {"username": UNREADABLE_WRITER, "groups": ["system:authenticated"]}, "sourceIPs": ["203.0.113.90"]}
    at = day + timedelta(hours=14, minutes=3)
    infinite = apiserver_line(event(at, audit_id="unreadable-1e400", **common), GRANT_MASTERS + b',"x":1e400}')
    cut = apiserver_line(event(at + timedelta(minutes=4), audit_id="unreadable-cut", userAgent="kubectl/" + "A" * 300_000, **common),
                         GRANT_MASTERS + b"}")
    message = cut[: 256 * 1024 - len(b"[Truncated...]")].decode() + "[Truncated...]"
    firehose = envelope([message])
    firehose["logEvents"][0]["timestamp"] = int((at + timedelta(minutes=4)).timestamp() * 1000)
    return {"unreadable.jsonl": infinite + b"\n", "firehose-unreadable": gzip.compress(json.dumps(firehose).encode(), mtime=0)}


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The directory ``name``, filled by ``build(directory)`` once per test session and shared by the
    pytest-xdist workers (a module fixture would be rebuilt by every worker that runs one of its tests,
    and these are full pipeline runs): the first worker to take the file lock builds it."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    shared.mkdir(exist_ok=True)
    target = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / f"{name}.done").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            build(target)
            (shared / f"{name}.done").touch()
    return target


@pytest.fixture(scope="session")
def sample_2d(tmp_path_factory) -> Path:
    """Two days (train on the first, score the second): the smallest sample `run` accepts, about 17k events."""
    from pipeline.sample import generate_sample

    return built_once(tmp_path_factory, "sample-2d", lambda out: generate_sample(out, days=2, seed=3, scale=0.05))


@pytest.fixture(scope="session")
def hostile_input(sample_2d, tmp_path_factory) -> Path:
    """The hostile events, on the sample's scored day, as one gzipped JSON-lines file, and the unreadable
    aws-auth writes (``unreadable_writes``)."""
    end = datetime.fromisoformat(json.loads((sample_2d / "labels.json").read_text())["end"].replace("Z", "+00:00"))
    data = b"".join(json.dumps(e).encode() + b"\n" for e in hostile_events(end - timedelta(days=1)))
    files = {"hostile.jsonl.gz": gzip.compress(data, mtime=0), **unreadable_writes(end - timedelta(days=1))}
    return built_once(tmp_path_factory, "hostile-input", lambda out: [(out / name).write_bytes(body) for name, body in files.items()])


@pytest.fixture(scope="session")
def full_run(sample_2d, hostile_input, tmp_path_factory) -> dict:
    """One uninterrupted `auditsift run` over the sample plus the hostile events; the report is in the workdir.
    tests/e2e/test_crash_recovery.py compares killed-and-rerun runs against it."""
    def build(root: Path) -> None:
        done = subprocess.run([str(BIN), "run", "--input", str(sample_2d), "--input", str(hostile_input), "--workdir", str(root / "work"),
                               "--now", sample_clock(sample_2d).isoformat(),
                               "--json", "--quiet"], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        (root / "result.json").write_text(done.stdout[done.stdout.index("{"):])

    root = built_once(tmp_path_factory, "full-run", build)
    result = json.loads((root / "result.json").read_text())
    report = Path(result["report_dir"])
    return {"root": root, "workdir": root / "work", "report": report, "counts": result["counts"],
            "html": (report / "report.html").read_text(), "md": (report / "report.md").read_text(),
            "csv": (report / "findings.csv").read_text(),
            "findings": [json.loads(line) for line in (report / "anomalies.jsonl").read_text().splitlines()]}


@pytest.mark.slow
def test_hostile_identities_reach_the_report(full_run, record_property):
    """The payloads are really there: every hostile username is a scored entity and is shown in report.html."""
    entities = {f["entity"] for f in full_run["findings"]}
    shown = [user for user in USERS if _escaped(user) in full_run["html"]]
    record_property("result", f"{len(shown)} of {len(USERS)} hostile usernames shown (escaped) in report.html")
    assert set(USERS) <= entities
    assert shown == list(USERS)


def _escaped(text: str) -> str:
    """The text as Jinja's autoescape writes it."""
    return str(escape(text))


def _stored_strings(path: Path) -> bytes:
    """Every value of a Parquet file as text: its pages are compressed, so a raw byte scan alone proves nothing."""
    table = pq.read_table(path)
    return json.dumps(table.to_pylist(), default=str).encode()


@pytest.mark.slow
def test_no_planted_secret_value_is_stored_anywhere(full_run, record_property):
    """No Secret data/stringData value, response body value or credential-looking ConfigMap value appears
    in any file below the workdir (archive, features, models, scores, quarantine, state, reports),
    neither as raw bytes nor inside a decoded Parquet file."""
    files = [p for p in full_run["workdir"].rglob("*") if p.is_file()]
    leaks = []
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data += _stored_strings(path)
        leaks.extend((path.relative_to(full_run["workdir"]).as_posix(), s) for s in SECRET_VALUES if s.encode() in data)
    record_property("result", f"{len(files)} files scanned ({sum(p.suffix == '.parquet' for p in files)} Parquet decoded); leaks: {leaks}")
    assert full_run["counts"]["quarantined"] == 0, "every secret-bearing event went through normalisation"
    assert len(files) > 50
    assert leaks == []


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.mark.slow
def test_report_html_shows_payloads_as_text_under_a_strict_csp(full_run, record_property):
    """No payload appears unescaped; no log value becomes an element, an event handler or a URL; the
    Content-Security-Policy forbids remote and inline script (only the shipped script's hash runs)."""
    page = full_run["html"]
    raw = [p for p in HTML_PAYLOADS if p in page]
    parser = _Elements()
    parser.feed(page)
    handlers = [(t, k) for t, attrs in parser.tags for k in attrs if k.startswith("on")]
    urls = [v for _, attrs in parser.tags for k, v in attrs.items() if k in ("href", "src", "action", "formaction", "xlink:href")
            and v and not v.startswith("#") and not v.startswith("data:")]
    scripts = [a for t, a in parser.tags if t == "script"]
    (csp,) = [a["content"] for t, a in parser.tags if t == "meta" and a.get("http-equiv", "").lower() == "content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    record_property("result", f"raw payloads {raw}; event handlers {handlers}; URLs {urls}; CSP default-src {directives['default-src']}, "
                              f"script-src {len(directives['script-src'])} hash(es)")
    assert raw == [] and handlers == [] and urls == []
    assert not any(t in ("img", "iframe", "object", "embed", "base", "form") for t, _ in parser.tags)
    assert scripts == [{}], "exactly one inline script, the shipped one"
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] and all(s.startswith("'sha256-") for s in directives["script-src"])
    assert "'unsafe-inline'" not in csp and "http" not in csp and "*" not in csp
    assert directives.get("base-uri") == ["'none'"] and directives.get("form-action") == ["'none'"]


@pytest.mark.slow
def test_findings_csv_cells_cannot_be_formulas(full_run, record_property):
    """Every text cell that would start with = + - @ (or tab/CR) is prefixed so spreadsheets show it as
    text; numbers (a negative score) stay numbers."""
    rows = list(csv.reader(io.StringIO(full_run["csv"])))
    formulas = [cell for row in rows for cell in row if cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(cell)]
    entities = {row[rows[0].index("entity")] for row in rows[1:]}
    record_property("result", f"{len(rows) - 1} rows; formula-leading cells: {formulas[:3]}; e.g. {sorted(e for e in entities if e.startswith(chr(39)))[:2]}")
    assert formulas == []
    assert {"'" + user for user in FORMULA_USERS} <= entities


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@pytest.mark.slow
def test_report_md_has_no_html_links_or_broken_tables_from_payloads(full_run, record_property):
    """Markdown renders log values as text: no raw <script, no link syntax, no injected heading or table cell."""
    text = full_run["md"]
    injected = [line for line in text.splitlines() if line.lstrip().startswith(INJECTED_HEADING)]
    tables = [block.splitlines() for block in re.findall(r"(?:^\|.*\n?)+", text, flags=re.M)]
    shapes = [{len(re.findall(r"(?<!\\)\|", line)) for line in rows} for rows in tables]
    columns = set().union(*shapes) if shapes else set()
    prose = re.sub(r"^(`{3,})[^\n]*\n.*?\n\1$", "", text, flags=re.M | re.S)  # pivot queries: fenced, shown as typed
    unescaped = re.findall(r"(?<!\\)<script", prose, re.I)
    record_property("result", f"unescaped <script: {len(unescaped)}; link: {MD_LINK in prose}; injected heading lines: {len(injected)}; "
                              f"table rows with {sorted(columns)} cell separators")
    assert unescaped == [], "every < from a log is backslash-escaped"
    assert MD_LINK not in prose and "](javascript:" not in prose
    assert MD_PIPE not in prose
    assert injected == []
    assert all(len(shape) == 1 for shape in shapes), "every row of each table has the same number of cells (none may be split)"


@pytest.mark.slow
def test_no_path_uses_a_log_value_as_a_segment(full_run, record_property):
    """Usernames, object names and resources never become path segments: no '..', no 'etc/passwd',
    nothing written outside the workdir."""
    workdir, root = full_run["workdir"], full_run["root"]
    paths = [p.relative_to(workdir).as_posix() for p in workdir.rglob("*")]
    bad = [p for p in paths if any(s in ("..", ".") for s in p.split("/")) or "etc/passwd" in p or "<" in p or "\n" in p]
    outside = sorted(p.name for p in root.iterdir())
    record_property("result", f"{len(paths)} paths checked; unsafe: {bad}; top-level entries: {outside}")
    assert bad == []
    assert outside == ["result.json", "work"]
    assert not list(root.parent.rglob("passwd")), "nothing escaped next to the run either"


def test_a_quarantined_line_does_not_store_secret_values(tmp_path, record_property):
    """A Secret write cut off by CloudWatch (`[Truncated...]`) is quarantined; its sample must not carry
    the Secret's values. With keys in sorted order (any tool that re-serialises with sort_keys) and no
    annotations (the RequestReceived stage), requestObject.data falls inside the 300-character sample."""
    secret = event(audit_id="cut-secret", stage="RequestReceived", verb="create", level="RequestResponse",
                   objectRef={"resource": "secrets", "namespace": "payments", "name": "db"},
                   requestObject={"kind": "Secret", "data": {"aws_access_key_id": SECRET_VALUES[0]}})
    for name in ("annotations", "responseStatus"):
        secret.pop(name)
    line = json.dumps(secret, sort_keys=True, separators=(",", ":")).encode()[:400] + b"[Truncated...]"
    (tmp_path / "audit.jsonl").write_bytes(json.dumps(event(audit_id="fine")).encode() + b"\n" + line + b"\n")
    result = CliRunner().invoke(main, ["archive", "--input", str(tmp_path / "audit.jsonl"), "--workdir", str(tmp_path / "work"), "--quiet"])
    assert result.exit_code == 0, result.output
    leaks = [p.relative_to(tmp_path / "work").parent.as_posix() for p in (tmp_path / "work").rglob("*")
             if p.is_file() and SECRET_VALUES[0].encode() in p.read_bytes()]
    record_property("result", f"secret value stored in: {leaks}")
    assert leaks == []
