"""The report shows every log-derived string literally and nowhere executable: HTML under a
hash-based CSP with no element, attribute or URL an attacker can inject; Markdown with no
markup breakout; CSV with no formula; pivot queries that return exactly a finding's evidence
with hostile values escaped for SQL and Logs Insights."""
from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from html import escape
from html.parser import HTMLParser

import duckdb
import pytest
from markdown_it import MarkdownIt

from features.events import COLUMN_NAMES
from pipeline.config import parse_config
from pipeline.context import RunContext
from pipeline.io.storage import LocalStorage, resolve_inputs
from pipeline.report.incidents import group_incidents
from pipeline.report.pivots import ATHENA_COLUMNS, insights_query, pivot_queries, sql_string, sql_table
from pipeline.report.render import (
    HTML_INCIDENT_FINDINGS,
    MD_BUDGET,
    csp_hash,
    md_escape,
    md_fence,
    render_html,
    render_markdown,
    report_extras,
    svg_bars,
    svg_histogram,
    svg_timeline,
)
from pipeline.stages.archive import archive_inputs
from pipeline.stages.report import findings_csv, run_report
from pipeline.triage import record_verdict
from tests.e2e.test_hostile_inputs import full_run, hostile_input, sample_2d  # noqa: F401  (the suite's session run, built once)
from tests.factory import T0, event, write_jsonl
from tests.report_factory import (
    ATTRIBUTE,
    HOSTILE_AGENT,
    HOSTILE_NAME,
    HOSTILE_URI,
    HOSTILE_USER,
    PAYLOADS,
    SCRIPT,
    STYLE,
    TEMPLATE,
    URL,
    incidents_of,
    make_context,
    with_extras,
)

ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "script", "body", "header", "nav", "main", "section", "article", "footer", "h1", "h2",
    "h3", "h4", "p", "div", "span", "b", "code", "pre", "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "a", "br",
    "button", "input", "label", "details", "summary", "svg", "rect", "line", "text", "path", "dl", "dt", "dd",
}


class Page(HTMLParser):
    """Every start tag with its attributes, the text of the page, and the raw script/style bodies."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.raw: dict[str, list[str]] = {"script": [], "style": []}
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in self.raw:
            self._in = tag
            self.raw[tag].append("")

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            self.raw[self._in][-1] += data
        else:
            self.text.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


@pytest.fixture(scope="module")
def context():
    return with_extras(make_context())


@pytest.fixture(scope="module")
def html(context):
    return render_html(context)


@pytest.fixture(scope="module")
def page(html):
    return parse(html)


# --------------------------------------------------------------------------- HTML
def test_html_has_only_known_elements_no_handlers_no_urls_from_logs(page):
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS
    for tag, attrs in page.tags:
        assert not [name for name in attrs if name.startswith("on") or name in ("style", "src", "srcdoc", "action", "formaction")], tag
        if "href" in attrs:
            assert re.fullmatch(r"#[a-z][a-z0-9-]*", attrs["href"]), attrs["href"]
        for value in attrs.values():
            assert "javascript:" not in (value or "") and "<" not in (value or "")
    assert sum(tag == "script" for tag, _ in page.tags) == 1 and sum(tag == "style" for tag, _ in page.tags) == 1


def test_html_csp_allows_exactly_the_shipped_script_and_style(html, page):
    meta = [attrs for tag, attrs in page.tags if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert len(meta) == 1
    assert html.index("Content-Security-Policy") < html.index("<style>") < html.index("<body")
    directives = {part.split()[0]: part.split()[1:] for part in meta[0]["content"].split(";") if part.strip()}
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == [csp_hash(page.raw["script"][0])]
    assert directives["style-src"] == [csp_hash(page.raw["style"][0])]
    assert directives["img-src"] == ["data:"]
    assert "unsafe-inline" not in meta[0]["content"] and "unsafe-eval" not in meta[0]["content"]
    assert not {"connect-src", "frame-src", "object-src", "script-src-attr"} & set(directives)
    assert "http://" not in html and "https://" not in html


def test_html_shows_hostile_strings_literally_and_never_raw(html, page):
    for payload in (SCRIPT, ATTRIBUTE, STYLE, "<img src=x onerror=alert(1)>", "<b>styled</b>"):
        assert payload not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&#34; onmouseover=&#34;x" in html
    text = "".join(page.text)
    for value in (HOSTILE_USER, HOSTILE_AGENT, HOSTILE_NAME, HOSTILE_URI, TEMPLATE, URL):
        assert value in text


def test_html_script_and_style_carry_no_log_data(page, context):
    for body in page.raw["script"] + page.raw["style"]:
        assert not any(payload in body for payload in PAYLOADS)
        assert context["findings"][0]["entity"] not in body


def test_html_without_report_extras_or_findings_still_renders(context):
    bare = make_context()
    html = render_html(bare)
    assert "Content-Security-Policy" in html and SCRIPT not in html
    empty = {**bare, "findings": [], "evidence": {}, "events": [], "timelines": {}}
    assert "Nothing was scored." in render_html(empty)
    assert "Incidents were not computed" in render_markdown(empty)
    assert "No incident: no finding was flagged." in render_markdown(empty, incidents=[])


def test_html_details_cover_top_findings_with_charts_evidence_and_pivots(html, context):
    first = context["findings"][0]
    assert f'id="f-{first["finding_id"]}"' in html and f'href="#f-{first["finding_id"]}"' in html
    section = html[html.index(f'id="f-{first["finding_id"]}"'):]
    section = section[: section.index("</article>")]
    assert section.count("<svg") == 2
    assert "secret_reads" in section and "a11ce000-0000-4000-8000-aw5a0th00001" in section
    assert "Logs Insights" in section and "&#34;auditsift&#34;.&#34;audit_events&#34;" in section
    suppressed = context["findings"][3]
    assert suppressed["suppressed"] and f'id="f-{suppressed["finding_id"]}"' not in html
    assert "triage-deployer &lt;script&gt;" in html


def test_a_quiet_findings_details_are_folded_under_its_header_and_a_flagged_ones_are_open(html, context):
    """At 390 px the sample's report was 165,655 px tall, 31 of its 50 detailed findings quiet: their charts,
    evidence and queries now wait behind a summary line, still in the page for find-in-page and links."""
    def article(finding):
        start = html.index(f'id="f-{finding["finding_id"]}"')
        return html[start: html.index("</article>", start)]
    flagged = next(f for f in context["findings"] if f["flagged"])
    quiet = next(f for f in context["findings"] if not f["flagged"] and not f["suppressed"])
    assert 'class="quiet-body"' not in article(flagged) and article(flagged).count("<svg") == 2
    folded = article(quiet)
    assert '<details class="quiet-body"><summary>' in folded and folded.index('class="quiet-body"') < folded.index("<svg")
    assert folded.count("<svg") == 2 and "evidence" in folded


def test_svg_charts_are_well_formed_with_labels_escaped():
    bars = svg_bars([{"feature": f"x{SCRIPT}&", "value": 12.0, "baseline": 0.5}, {"feature": "new_peers", "value": 1, "baseline": None},
                     {"feature": "requests_vs_baseline", "value": 7.8, "baseline": 0.0}])
    histogram = svg_histogram([0.1, 0.2, 5.0, -0.3], 1.0, label=f"score {STYLE}")
    timeline = svg_timeline([["2026-11-01T09:00:00Z", 5, 0], ["2026-11-04T14:00:00Z", 90, 30]], "2026-11-04T14:00:00Z",
                            "2026-11-04T15:00:00Z", {"train_from": "2026-11-01T00:00:00Z", "score_from": "2026-11-04T00:00:00Z",
                                                     "score_to": "2026-11-05T00:00:00Z"})
    for svg in (bars, histogram, timeline):
        root = ET.fromstring(str(svg))
        assert root.tag.endswith("svg") and SCRIPT not in str(svg) and STYLE not in str(svg)
    labels = [t.text for t in ET.fromstring(str(bars)).iter() if t.tag.endswith("text")]
    assert f"x{SCRIPT}&" in labels and "×24" in labels and "new" in labels and "z 7.8" in labels
    assert any(t.text == "model threshold (1)" for t in ET.fromstring(str(histogram)).iter() if t.tag.endswith("text"))


# --------------------------------------------------------------------------- Markdown
def test_md_escape_neutralises_breakouts():
    text = md_escape("a|b `c` [d](javascript:e) <i>f</i>\nG\r\n# h *i* _j_ ![k](l) &amp; @team www.evil.example")
    assert "\n" not in text and "\r" not in text
    assert re.search(r"(?<!\\)[|`\[\]<>*_#!&@]", text) is None
    assert md_fence("x ```` y", "sql").startswith("`````sql\n")


def test_markdown_renders_without_html_links_or_broken_tables(context):
    markdown = render_markdown(context) + render_markdown(context, incidents_of(context))
    renderer = MarkdownIt("commonmark", {"html": True}).enable("table")
    tokens = renderer.parse(markdown)
    flat = [t for token in tokens for t in ([token] + list(token.children or []))]
    assert not [t for t in flat if t.type in ("html_inline", "html_block", "link_open", "image")]
    rendered = renderer.render(markdown)
    assert "<script" not in rendered and "<img" not in rendered and "<b>styled" not in rendered
    for table in re.findall(r"<table>.*?</table>", rendered, flags=re.S):
        widths = {len(re.findall(r"<t[hd][ >]", row)) for row in re.findall(r"<tr>.*?</tr>", table, flags=re.S)}
        assert len(widths) == 1, widths
    assert HOSTILE_USER.replace("\n", " ")[:59] in "".join(t.content for t in flat if t.type == "text")


# --------------------------------------------------------------------------- CSV
def test_findings_csv_neutralises_formulas(context):
    hostile = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
    findings = [{**context["findings"][0], "entity": entity} for entity in hostile]
    findings[0]["reasons"] = [{**findings[0]["reasons"][0], "feature": "=cmd|' /C calc'!A0"}]
    rows = list(csv.DictReader(io.StringIO(findings_csv(findings))))
    assert [row["entity"] for row in rows] == ["'" + entity for entity in hostile[:4]] + ["\\tcmd", "\\rcmd"]
    assert rows[0]["top_reason"].startswith("'=")
    for row in rows:
        assert not any(str(cell).startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row.values())


# --------------------------------------------------------------------------- pivots
QUOTED_USER = "o'brien\" | display @message # x\\y\n/z/ [\"a\"]"


def insights_literals(query: str) -> tuple[int, list[str], list[str]]:
    """Lex a Logs Insights query: (commands, string literals, regex literals), honouring escapes."""
    commands, strings, regexes, i = 1, [], [], 0
    while i < len(query):
        char = query[i]
        if char in "\"/":
            j, body = i + 1, ""
            while query[j] != char:
                body += query[j: j + 2] if query[j] == "\\" else query[j]
                j += 2 if query[j] == "\\" else 1
            (strings if char == '"' else regexes).append(body)
            i = j + 1
            continue
        assert char != "#", "a comment outside literals"
        commands += char == "|"
        i += 1
    return commands, strings, regexes


@pytest.mark.parametrize("user", [QUOTED_USER, "alice@corp.example", "system:serviceaccount:kube-system:default", "ünï côdé\u2028x"])
def test_insights_query_keeps_hostile_values_inside_their_literals(user):
    finding = {"entity_type": "user", "entity": user, "window_start": "2026-11-01T09:00:00Z", "window_end": "2026-11-01T10:00:00Z"}
    audit_ids = ["plain-id-1", "q'uo\"te|id"]
    commands, strings, regexes = insights_literals(insights_query(finding, audit_ids, "kube-apiserver-audit"))
    assert commands == 5
    assert re.fullmatch(regexes[0], "kube-apiserver-audit")
    anchored = [re.compile(re.sub(r"\\x\{([0-9a-f]+)\}", lambda m: re.escape(chr(int(m[1], 16))), r)) for r in regexes[1:]]
    assert all(r.pattern.startswith("^") and r.pattern.endswith("$") for r in anchored)
    assert user in strings or any(r.fullmatch(user) for r in anchored)
    assert "plain-id-1" in strings and any(r.fullmatch("q'uo\"te|id") for r in anchored)


@pytest.mark.parametrize("value", [QUOTED_USER, "'; DROP TABLE x; --", "tab\tnul\x00end", "", "ünï'côdé"])
def test_sql_string_round_trips_through_duckdb(value):
    assert duckdb.sql(f"SELECT {sql_string(value)}").fetchall() == [(value,)]
    assert "\n" not in sql_string(value) and "\x00" not in sql_string(value)


def test_athena_columns_are_archive_columns():
    assert set(ATHENA_COLUMNS) <= set(COLUMN_NAMES)
    assert sql_table("auditsift.audit_events") == '"auditsift"."audit_events"'


def test_athena_pivot_returns_exactly_the_evidence_in_duckdb(tmp_path):
    hostile_id = "evt-'quoted\"-0"
    ours = [event(T0 + timedelta(minutes=3 * i), audit_id=hostile_id if i == 0 else f"evt-ours-{i}",
                  user={"username": QUOTED_USER, "groups": ["system:authenticated"]}, sourceIPs=["198.51.100.9"])
            for i in range(8)]
    other_user = [event(T0 + timedelta(minutes=5 + i), audit_id=f"evt-other-{i}", sourceIPs=["198.51.100.9"]) for i in range(3)]
    next_hour = [event(T0 + timedelta(hours=1, minutes=i), audit_id=f"evt-later-{i}",
                       user={"username": QUOTED_USER, "groups": ["system:authenticated"]}) for i in range(3)]
    write_jsonl(tmp_path / "audit.jsonl", ours + other_user + next_hour)
    storage = LocalStorage(tmp_path / "work")
    archive_inputs(storage, resolve_inputs([str(tmp_path / "audit.jsonl")]), "demo", "r1")
    config = parse_config({"cluster": "demo", "report": {"athena_table": "sec.audit_events"}})
    evidence = [{"audit_id": e["auditID"]} for e in ours[:5]]
    finding = {"entity_type": "user", "entity": QUOTED_USER, "window_start": "2026-11-01T09:00:00Z", "window_end": "2026-11-01T10:00:00Z",
               "audit_ids": []}
    queries = pivot_queries(finding, evidence, config)
    source = f"read_parquet('{tmp_path / 'work' / 'archive'}/**/*.parquet', hive_partitioning=true)"
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'America/New_York'")

    def run(sql: str) -> list[tuple]:
        assert sql.count(sql_table("sec.audit_events")) == 1
        return connection.sql(sql.replace(sql_table("sec.audit_events"), source)).fetchall()

    rows = run(queries["athena"])
    assert sorted(row[1] for row in rows) == sorted(e["audit_id"] for e in evidence)
    assert {row[3] for row in rows} == {QUOTED_USER}
    assert sorted(row[1] for row in run(queries["athena_entity"])) == sorted(e["auditID"] for e in ours)
    ip_finding = {**finding, "entity_type": "source_ip", "entity": "198.51.100.9"}
    assert len(run(pivot_queries(ip_finding, [], config)["athena_entity"])) == len(ours) + len(other_user)


def test_pivots_carry_the_time_range_and_log_group():
    config = parse_config({"cluster": "prod", "report": {"log_group": "/aws/eks/prod-eu/cluster"}})
    finding = {"entity_type": "source_ip", "entity": "203.0.113.7", "window_start": "2026-11-04T23:00:00Z",
               "window_end": "2026-11-05T00:00:00Z", "audit_ids": ["a", "b"]}
    queries = pivot_queries(finding, None, config)
    assert queries["time_range"] == {"start": "2026-11-04T23:00:00Z", "end": "2026-11-05T00:00:00Z",
                                     "start_epoch": 1793833200, "end_epoch": 1793836800}
    assert queries["log_group"] == "/aws/eks/prod-eu/cluster"
    assert "--start-time 1793833200 --end-time 1793836800" in queries["insights_cli"]
    assert "BETWEEN 23 AND 23" in queries["athena"] and "\"audit_id\" IN ('a', 'b')" in queries["athena"]
    assert "IN (" not in queries["athena_entity"]


# --------------------------------------------------------------------------- the report stage
def test_report_stage_writes_escaped_report_files(tmp_path):
    built = make_context()
    config = parse_config({"cluster": "demo"})
    ctx = RunContext(LocalStorage(tmp_path / "work"), config, "20261105T061500Z-a1b2c3")
    key = "scores/cluster=demo/20261105T061500Z-a1b2c3"
    for name in ("findings", "evidence", "events", "timelines"):
        ctx.storage.write_json(f"{key}/{name}.json", built[name])
    ctx.storage.write_json(f"{key}/incidents.json", [i.to_record() for i in group_incidents(built["findings"])])
    ctx.update_state("score", {**built["run"]["counts"]["score"], "key": key, "run_id": ctx.run_id})
    ctx.update_state("model", built["run"]["model"])
    run = run_report(ctx)
    folder = tmp_path / "work" / "reports" / "cluster=demo" / ctx.run_id
    html = (folder / "report.html").read_text()
    assert run["report"]["html"].endswith("report.html") and "Content-Security-Policy" in html
    prose = re.sub(r"^```.*?^```", "", (folder / "report.md").read_text(), flags=re.S | re.M)
    assert SCRIPT not in html and SCRIPT not in prose, "payloads only inside fenced query blocks, where Markdown shows them as code"
    assert len(list(csv.DictReader(io.StringIO((folder / "findings.csv").read_text())))) == len(built["findings"])


def test_report_extras_bring_rules_pivots_and_triage_into_the_report(tmp_path):
    built = make_context()
    ctx = RunContext(LocalStorage(tmp_path / "work"), parse_config({"cluster": "demo"}), "r1")
    first, second = built["findings"][:2]
    record_verdict(ctx.storage, "demo", first, "malicious", f"confirmed {SCRIPT}", reviewer="sam")
    record_verdict(ctx.storage, "demo", second, "benign", "scanner we run")
    extras = report_extras(ctx, built["findings"], built["evidence"])
    assert set(extras) == {"rules", "pivots", "triage"}
    assert extras["rules"]["aws_auth_modified"]["severity"] == "critical"
    assert set(extras["pivots"]) == set(built["evidence"])
    assert extras["triage"]["precision"]["precision"] == 0.5 and set(extras["triage"]["verdicts"]) == {first["finding_id"], second["finding_id"]}
    html = render_html({**built, **extras})
    assert "Triaged <b>malicious</b>" in html and "confirmed &lt;script&gt;" in html and "50%" in html
    assert "2 reviewed (1 malicious, 1 benign, 0 unsure); precision 0.50" in render_markdown({**built, **extras})


def test_a_findings_headline_and_its_rules_tactics_show_escaped_in_html():
    from tests.report_factory import SCRIPT, make_context, with_extras

    context = with_extras(make_context())
    finding = next(f for f in context["findings"] if f["rule_hits"] and f["finding_id"] in context["evidence"])
    finding["headline"] = f"{SCRIPT} patched deployments web/api"
    rule = context["rules"][finding["rule_hits"][0]["rule"]]
    html = render_html(context)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; patched deployments web/api" in html and SCRIPT not in html
    assert f">{rule['tactic']}</span>" in html and rule["technique"] in html


def test_a_findings_rule_rationales_and_feature_table_wait_in_folds_and_routine_or_copied_hits_say_so():
    """At 390 px a flagged finding's rule list with every rationale inline was 1,457 px of the sample's first finding;
    the rationales now wait in one fold under the list, each rule's title still on its line, and the table of what each
    feature reads in one under the charts."""
    context = with_extras(make_context())
    finding = next(f for f in context["findings"] if len(f["rule_hits"]) > 1 and f["finding_id"] in context["evidence"])
    finding["rule_hits"][0].update(copy_of="cronjobs default/log-rotate", copies=2, weight=0.25)
    finding["rule_hits"][1]["routine"] = True
    html = render_html(context)
    start = html.index(f'id="f-{finding["finding_id"]}"')
    article = html[start: html.index("</article>", start)]
    hits = article[article.index("<h4>Rule hits</h4>"): article.index("</ul>", article.index("<h4>Rule hits</h4>"))]
    fold = article[article.index('<details class="rule-why">'): article.index("</details>", article.index('<details class="rule-why">'))]
    for hit in finding["rule_hits"]:
        rule = context["rules"][hit["rule"]]
        assert escape(rule["title"]) in hits and escape(rule["rationale"]) not in hits and escape(rule["rationale"]) in fold
    assert "a controller's copies of cronjobs default/log-rotate" in hits and "<b>routine</b> for this identity" in hits
    features = article[article.index('<details class="feature-why">'):]  # the feature table waits in a fold under the charts
    assert finding["reasons"] and finding["reasons"][0]["feature"] in features[: features.index("</details>")]


# --------------------------------------------------------------------------- incidents lead (issue 18)
def test_incidents_lead_then_findings_in_no_incident_with_quiet_rows_behind_a_count(context):
    incidents = incidents_of(context)
    html = render_html(context, incidents)
    page = parse(html)
    assert html.index('id="incidents"') < html.index('id="findings"') < html.index('id="overview"')
    first = incidents[0]
    assert f'id="i-{first["incident_id"][4:]}"' in html and html.count('<article class="incident') == len(incidents)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and SCRIPT not in html
    table = html[html.index('<table id="findings-table">'): html.index("</table>", html.index('<table id="findings-table">'))]
    members = {fid for i in incidents for fid in i["finding_ids"]}
    in_table = re.findall(r'<tr class="[^"]*">\s*<td class="num" data-v="(\d+)">', table)
    assert in_table and not {int(r) for r in in_table} & {f["rank"] for f in context["findings"] if f["finding_id"] in members}
    loose = [f for f in context["findings"] if not f["suppressed"] and f["finding_id"] not in members][:context["top_n"]]
    quiet = sum(not f["flagged"] for f in loose)
    assert f'<label for="show-quiet" class="toggle-label">{quiet} quiet windows</label>' in html
    assert not {tag for tag, _ in page.tags} - ALLOWED_TAGS


def test_a_campaign_lists_its_best_findings_and_says_how_many_more(context):
    """A spray of alike new identities is one campaign incident (incidents.fold_campaigns); report.html shows its counts
    and its best HTML_INCIDENT_FINDINGS findings, not a table row per sprayed identity."""
    hit = {"rule": "unauthorized_secret_read", "severity": "medium", "count": 1, "routine": False, "weight": 0.5}
    findings = [dict(f, flagged=True, rule_hits=[hit], entity=f"system:serviceaccount:ci-{n:04d}:job")
                if not f["flagged"] else f for n, f in enumerate(context["findings"])]
    sprayed = {**context, "findings": findings}
    incidents = incidents_of(sprayed)
    [campaign] = [i for i in incidents if i.get("campaign")]
    assert len(campaign["finding_ids"]) > HTML_INCIDENT_FINDINGS
    html = render_html(sprayed, incidents)
    article = html[html.index(f'id="i-{campaign["incident_id"][4:]}"'):]
    article = article[:article.index("</article>")]
    assert article.count("<tr>") - 1 == HTML_INCIDENT_FINDINGS, "the header row and the best findings"
    assert f"The best {HTML_INCIDENT_FINDINGS} of its {len(campaign['finding_ids'])} findings" in article
    assert f"<dt>campaign</dt><dd>{campaign['campaign']['incidents']} alike incidents" in article


def test_repeat_and_incident_markers_sit_on_the_rows(context):
    findings = [dict(f) for f in context["findings"]]
    findings[1].update(repeats=findings[0]["finding_id"], repeats_rank=1)
    bare = {**context, "findings": findings}
    html = render_html(bare, incidents_of(bare))
    assert '<span class="mark rep" title="mostly the same requests as a higher finding, so ranked at a lower score">repeat of #1</span>' in html
    assert re.search(r'<a class="mark inc wrap" href="#i-[0-9a-f]{20}">incident 1: ', html)
    assert "repeat of #1" in render_markdown(bare, incidents_of(bare)) and "repeat of #1" in render_markdown(bare)


def test_evidence_reads_in_time_order_with_why_next_to_the_time(html, context):
    first = context["findings"][0]
    article = html[html.index(f'id="f-{first["finding_id"]}"'):]
    start = article.index('<table class="compact small evidence">')
    evidence = article[start: article.index("</table>", start)]
    assert re.findall(r"<th[^>]*>([^<]+)</th>", evidence)[:3] == ["time", "why", "request"]
    times = re.findall(r'<tr><td class="mono">([0-9:.]+)</td>', evidence)
    assert len(times) == len(context["evidence"][first["finding_id"]]) and times == sorted(times)


def _channel(value: int) -> float:
    c = value / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _luminance(colour: str) -> float:
    colour = colour.lstrip("#")
    if len(colour) == 3:
        colour = "".join(ch * 2 for ch in colour)
    r, g, b = (int(colour[i: i + 2], 16) for i in (0, 2, 4))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_every_badge_meets_wcag_aa_contrast():
    """Each badge, tag and marker rule's text colour on its background, read from the CSS colours declared once in :root."""
    from importlib.resources import files

    css = (files("pipeline.report") / "templates" / "report.css").read_text(encoding="utf-8")
    root = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{3,6})", css[css.index(":root"): css.index("}")]))
    checked = {}
    for selector, body in re.findall(r"([^{}]*\.(?:badge|tag|mark)[^{}]*)\{([^}]*)\}", css):
        colours = dict(re.findall(r"(?<![-\w])(background|color):\s*var\(--([\w-]+)\)", body))
        if {"background", "color"} <= set(colours):
            checked[selector.strip()] = contrast(root[colours["background"]], root[colours["color"]])
    assert len(checked) >= 10, checked
    assert contrast("#ffffff", "#e08a00") < 4.5  # the medium badge, so the check can fail
    assert {s: round(r, 2) for s, r in checked.items() if r < 4.5} == {}


def test_markdown_is_a_ticket_even_with_a_flood_of_hostile_incidents(context):
    incidents = incidents_of(context)
    flood = [{**incidents[0], "incident_id": f"inc-{n:020x}", "rank": n, "title": HOSTILE_USER * 20, "summary": HOSTILE_NAME * 40}
             for n in range(1, 400)]
    markdown = render_markdown(context, flood)
    assert len(markdown) < MD_BUDGET
    assert re.search(r"\d+ more incidents \(ranks \d+ to 399\) are in report\.html", markdown)
    normal = render_markdown(context, incidents)
    assert len(normal) < 8000 and all(i["incident_id"].replace("-", "\\-") in normal for i in incidents)
    assert "report.html" in normal and "Incidents" in normal


@pytest.mark.slow
def test_report_md_of_a_sample_run_is_a_ticket_naming_every_flagged_incident(full_run):  # noqa: F811
    """The suite's sample run (with the hostile inputs): report.md with its incidents stays under the budget and names
    each flagged incident (`make run` on the 4-day sample: 173,481 characters before issue 18, 11,408 after)."""
    import json

    run = json.loads((full_run["report"] / "run.json").read_text())
    scores = sorted((full_run["workdir"] / "scores").glob("cluster=*/*"))[-1]
    context = {"run": run, "findings": full_run["findings"], "evidence": json.loads((scores / "evidence.json").read_text()),
               "events": [], "timelines": {}}
    incidents = incidents_of(context)
    markdown = render_markdown(context, incidents)
    assert len(markdown) < MD_BUDGET
    flagged = [i for i in incidents if i["flagged"]]
    assert flagged and all(md_escape(i["incident_id"]) in markdown for i in flagged[:25])


def test_tables_show_a_findings_three_heaviest_rule_hits_and_count_the_rest():
    """The findings and incident tables carry the headline and the three heaviest hits; the details list them all, the
    lighter ones in a fold (at 390 px the sample's first finding's ten hits took 625 px)."""
    context = with_extras(make_context())
    finding = next(f for f in context["findings"] if f["rule_hits"] and f["finding_id"] in context["evidence"])
    extra = [{"rule": rule, "severity": "low", "count": 1, "routine": False, "weight": 0.25}
             for rule in ("exec_into_pod", "rbac_object_changed", "secret_written", "refused_create")]
    finding["rule_hits"] = finding["rule_hits"][:1] + extra
    html = render_html(context)
    table = html[html.index('<table id="findings-table">'): html.index("</table>", html.index('<table id="findings-table">'))]
    row = table[table.index(f'href="#f-{finding["finding_id"]}"'):]
    row = row[: row.index("</tr>")]
    assert row.count('class="tag rule"') == 3 and "+2 more" in row
    start = html.index(f'id="f-{finding["finding_id"]}"')
    details = html[start: html.index("</article>", start)]
    assert all(f">{hit['rule']}</span>" in details for hit in finding["rule_hits"])
    shown = details[details.index("<h4>Rule hits</h4>"): details.index("</ul>", details.index("<h4>Rule hits</h4>"))]
    fold = details[details.index('<details class="more-hits">'): details.index("</details>", details.index('<details class="more-hits">'))]
    assert [hit["rule"] for hit in finding["rule_hits"] if f">{hit['rule']}</span>" in shown] == [hit["rule"] for hit in finding["rule_hits"][:3]]
    assert "2 more rule hits" in fold and all(f">{hit['rule']}</span>" in fold for hit in finding["rule_hits"][3:])
