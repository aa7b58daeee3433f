"""Render the analyst report as self-contained HTML and as Markdown.

Every string that came from a log is attacker-controlled (usernames, user agents, object
names, request URIs, even audit IDs), so:
- HTML goes through Jinja2 with autoescaping forced on; charts are SVG built here with every
  label escaped; log data never lands in an ``href`` or an event-handler attribute;
- the page runs one script and one stylesheet shipped inside it, allowed by a Content
  Security Policy that names their SHA-256 hashes (no 'unsafe-inline', nothing external),
  and reads fully with scripts disabled;
- Markdown goes through ``md_escape`` (no markup, HTML, links or line breaks survive) and
  queries through ``md_fence`` (a fence longer than any backtick run inside).
"""
from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Mapping

from jinja2 import Environment, PackageLoader, Undefined
from markupsafe import Markup

from features.windows import FEATURE_BY_NAME
from pipeline.catalog import load_rule_pack
from pipeline.report.pivots import pivot_queries
from pipeline.triage import latest_verdicts, precision

DETAIL_TOP = 50
MD_TABLE_TOP = 20
MD_INCIDENTS_TOP = 25
MD_INCIDENT_FINDINGS = 8
HTML_INCIDENT_FINDINGS = 100
"""Findings listed under an incident in report.html: all of an ordinary one's (at most incidents.MAX_MEMBERS, 100), the best
of a campaign's (incidents.fold_campaigns)."""
MD_BUDGET = 30_000
"""report.md is a ticket: at most this many characters. Incidents beyond what fits are counted and left to report.html."""
TOP_EVENTS = 100
TOUCHED_TOP = 8
SEVERITY_ORDER = ("critical", "high", "medium", "low", "info")
_MD_PUNCTUATION = re.compile(r"([!#$&()*+\-.:<=>@\[\\\]^_`{|}~])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_FULLWIDTH_DOTS = str.maketrans({dot: f"&#x{ord(dot):x};" for dot in "\uff0e\u3002\uff61"})


# --------------------------------------------------------------------------- escaping
def esc(value) -> str:
    """Text safe in HTML/SVG element content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def md_escape(value) -> str:
    """Text safe anywhere in Markdown, including table cells: every markup character is
    backslash-escaped (so no emphasis, link, mention, inline HTML, entity or cell break survives)
    and control characters, line breaks included, become spaces. GFM autolinks need an unbroken
    ``scheme:``, ``www.`` or ``name@host.tld`` in one run of text: an escaped ':' breaks every
    scheme (``http://1558377473/x`` has no dot to escape), an escaped '.' bare and ``www.``
    domains, an escaped '@' e-mail addresses; the dots a browser reads as '.' in a host name
    (U+FF0E, U+3002, U+FF61) are written as character references, which split the run the same way."""
    text = _CONTROL.sub(" ", "" if value is None else str(value))
    return _MD_PUNCTUATION.sub(r"\\\1", text).translate(_FULLWIDTH_DOTS)


def md_fence(text: str, language: str = "") -> str:
    """A fenced code block whose fence is longer than any backtick run in ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def anchor(finding_id: str) -> str:
    """The in-page anchor of a finding: only the hex id the score stage derived, never log text."""
    return "f-" + re.sub(r"[^0-9a-f]", "", str(finding_id).lower())


def clip(value, most: int = 80) -> str:
    """At most ``most`` characters of a log value (names in a ticket-sized summary), marked when cut."""
    text = "" if value is None else str(value)
    return text if len(text) <= most else text[: most - 1] + "…"


def incident_anchor(incident_id: str) -> str:
    """The in-page anchor of an incident: the hex part of ``inc-<hex>``, never log text."""
    return "i-" + re.sub(r"[^0-9a-f]", "", str(incident_id).lower().removeprefix("inc-"))


# --------------------------------------------------------------------------- formatting
def num(value, digits: int = 3) -> str:
    """A number for people: integers as integers, others to ``digits`` significant digits."""
    if value is None or isinstance(value, Undefined):
        return "–"
    number = float(value)
    if math.isnan(number):
        return "–"
    if number == int(number) and abs(number) < 1e15:
        return f"{int(number):,}"
    return f"{number:.{digits}g}" if abs(number) >= 1 else f"{number:.{digits}f}".rstrip("0").rstrip(".")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def short_time(text: str | None) -> str:
    """'2026-11-01T09:00:00Z' -> '2026-11-01 09:00 UTC'."""
    return parse_time(text).strftime("%Y-%m-%d %H:%M UTC") if text else "–"


def window_label(finding: dict) -> str:
    """'2026-11-04 14:00–15:00' (UTC)."""
    start, end = parse_time(finding["window_start"]), parse_time(finding["window_end"])
    return f"{start:%Y-%m-%d %H:%M}–{end:%H:%M}"


def clock(text: str) -> str:
    """An evidence timestamp to the millisecond, without the date (the window gives it)."""
    moment = parse_time(text)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def time_span(first: str | None, last: str | None) -> str:
    """'2026-11-07 07:22–07:23 UTC', or with both dates when the span crosses midnight."""
    if not first or not last:
        return "–"
    start, end = parse_time(first), parse_time(last)
    tail = f"{end:%H:%M}" if start.date() == end.date() else f"{end:%Y-%m-%d %H:%M}"
    return f"{start:%Y-%m-%d %H:%M}–{tail} UTC"


def weighs_in_full(hit: Mapping) -> bool:
    """A rule hit that is neither the entity's routine nor a controller's copy of a template written in the same run
    (``pipeline.stages.score.rule_parts``): the hits a finding is named and grouped by."""
    return not hit.get("routine") and not hit.get("copy_of")


def campaign_members(incident: Mapping) -> str:
    """Who a campaign (``pipeline.report.incidents.fold_campaigns``) holds: its count of alike incidents and its identities
    by name, best-ranked first (the record keeps its first 100 entities), or its addresses when it holds no identity;
    empty for any other incident."""
    campaign = incident.get("campaign")
    if not campaign:
        return ""
    kind, total = ("user", campaign["identities"]) if campaign["identities"] else ("source_ip", campaign["addresses"])
    names = [e["entity"] for e in incident["entities"] if e["entity_type"] == kind]
    more = f" and {total - len(names):,} more" if total > len(names) else ""
    return f"{campaign['incidents']:,} alike incidents: {', '.join(names)}{more}"


def finding_level(finding: dict) -> str:
    """How loudly to show a finding: suppressed, quiet (not flagged), or medium/high/critical by
    combined score, raised to critical by any critical rule hit."""
    if finding.get("suppressed"):
        return "suppressed"
    if not finding["flagged"]:
        return "quiet"
    if finding["score"] >= 3 or any(h["severity"] == "critical" for h in finding["rule_hits"]):
        return "critical"
    return "high" if finding["score"] >= 2 else "medium"


# --------------------------------------------------------------------------- SVG charts
def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def svg_histogram(values: list[float], threshold: float, flagged: list[bool] | None = None, bins: int = 36, width: int = 720,
                  height: int = 220, label: str = "combined score") -> Markup:
    """Histogram of ``values`` with a dashed line at ``threshold`` (a bin edge) and the flagged
    share of each bin in red; bar height is log(1 + count) so the few anomalous windows stay
    visible next to thousands of ordinary ones."""
    left, right, top, bottom = 48, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [float(v) for v in values]
    flagged = flagged or [False] * len(values)
    floor, high = min([0.0, *values]), max([threshold * 1.25, *values, 1.0])
    step = (high - floor) / bins
    low = threshold - math.ceil((threshold - floor) / step) * step
    bins = math.ceil((high - low) / step - 1e-9)
    counts, red = [0] * bins, [0] * bins
    for value, hit in zip(values, flagged):
        index = min(bins - 1, int((value - low) / step))
        counts[index] += 1
        red[index] += bool(hit)
    peak = math.log1p(max(counts, default=0)) or 1.0

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * plot_w

    def bar(index: int, count: int, css: str, title: str) -> str:
        bar_h = max(1.5, math.log1p(count) / peak * plot_h)
        return (f'<rect class="{css}" x="{x(low + index * step) + 0.5:.1f}" y="{top + plot_h - bar_h:.1f}" '
                f'width="{max(1.0, plot_w / bins - 1):.1f}" height="{bar_h:.1f}"><title>{esc(title)}</title></rect>')

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{esc(f"histogram of {len(values)} {label}s")}">']
    for power in range(0, int(math.log10(max(max(counts, default=1), 1))) + 1):
        y = top + plot_h - math.log1p(10 ** power) / peak * plot_h
        parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(num(10 ** power))}</text>')
    for index, count in enumerate(counts):
        start = low + index * step
        if count:
            parts.append(bar(index, count, "bar", f"{num(start)} to {num(start + step)}: {count} windows, {red[index]} flagged"))
        if red[index]:
            parts.append(bar(index, red[index], "bar over", f"{num(start)} to {num(start + step)}: {red[index]} flagged"))
    tick = _nice_step(high - low, 8)
    value = math.ceil(low / tick) * tick
    while value <= high + 1e-9:
        parts.append(f'<text class="tick" x="{x(value):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{esc(num(value))}</text>')
        value += tick
    parts.append(f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}"/>')
    tx = x(threshold)
    parts.append(f'<line class="threshold" x1="{tx:.1f}" x2="{tx:.1f}" y1="{top - 4}" y2="{top + plot_h}"/>'
                 f'<text class="threshold-label" x="{tx + 5:.1f}" y="{top + 8}">{esc(f"model threshold ({num(threshold)})")}</text>')
    parts.append(f'<text class="axis-label" x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">{esc(label)}</text>')
    parts.append(f'<text class="axis-label" x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">windows (log)</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def svg_bars(reasons: list[dict], width: int = 560) -> Markup:
    """One pair of bars per reason: this window's value against the entity's own baseline, each
    pair on its own scale (features are counts, fractions or z-scores), labelled with both numbers
    and how far apart they are: ×ratio, ``new`` when the usual is 0, the z-score for the
    ``*_vs_baseline`` features (already relative to the entity's own history)."""
    label_w, row_h, top = 170, 36, 6
    plot_w = width - label_w - 110
    height = top + row_h * len(reasons) + 8
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{esc("features against the entity baseline")}">']
    for index, reason in enumerate(reasons):
        y = top + index * row_h
        value = float(reason["value"] or 0)
        baseline = reason.get("baseline")
        base = float(baseline) if baseline is not None else 0.0
        scale = max(abs(value), abs(base), 1e-9)
        value_w = abs(value) / scale * plot_w
        base_w = abs(base) / scale * plot_w
        if reason["feature"].endswith("_vs_baseline"):
            ratio = f"z {num(value, 2)}"
        else:
            ratio = f"×{num(value / base, 2)}" if base > 0 else ("new" if value > 0 else "")
        parts.append(f'<text class="bar-label" x="{label_w - 8}" y="{y + 17}" text-anchor="end">{esc(reason["feature"])}</text>')
        parts.append(f'<rect class="val" x="{label_w}" y="{y + 4}" width="{max(value_w, 1.5):.1f}" height="13">'
                     f'<title>{esc(f"this window: {num(value)}")}</title></rect>')
        parts.append(f'<text class="bar-num" x="{label_w + max(value_w, 1.5) + 5:.1f}" y="{y + 15}">{esc(num(value))}</text>')
        parts.append(f'<rect class="base" x="{label_w}" y="{y + 19}" width="{max(base_w, 1.5):.1f}" height="11">'
                     f'<title>{esc(f"usual for this entity: {num(baseline)}")}</title></rect>')
        parts.append(f'<text class="bar-num muted" x="{label_w + max(base_w, 1.5) + 5:.1f}" y="{y + 29}">'
                     f'{esc("usual " + num(baseline))}</text>')
        parts.append(f'<text class="ratio" x="{width - 8}" y="{y + 21}" text-anchor="end">{esc(ratio)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def svg_timeline(series: list, window_start: str, window_end: str, ranges: dict | None = None, width: int = 640,
                 height: int = 180) -> Markup:
    """Requests (and denials) per window over the training range and the scored day, with the
    scored range shaded and the finding's window marked, so a burst reads against the entity's
    own history at a glance."""
    left, right, top, bottom = 48, 12, 20, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    ranges = ranges or {}
    points = [(parse_time(t), int(n), int(d)) for t, n, d in series]
    start, end = parse_time(window_start), parse_time(window_end)
    span = end - start
    bounds = [p[0] for p in points] + [start] + [parse_time(ranges[k]) for k in ("train_from",) if ranges.get(k)]
    first = min(bounds)
    last = max([p[0] + span for p in points] + [end] + [parse_time(ranges[k]) for k in ("score_to",) if ranges.get(k)])
    total = (last - first).total_seconds() or 1.0
    peak = max([n for _, n, _ in points] + [1])

    def x(moment: datetime) -> float:
        return left + (moment - first).total_seconds() / total * plot_w

    def y(count: float) -> float:
        return top + plot_h - count / peak * plot_h

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{esc("requests per window over time")}">']
    if ranges.get("score_from"):
        sx = x(parse_time(ranges["score_from"]))
        parts.append(f'<rect class="scored" x="{sx:.1f}" y="{top}" width="{left + plot_w - sx:.1f}" height="{plot_h}"/>'
                     f'<text class="band-label" x="{sx + 4:.1f}" y="{top - 6}">scored</text>'
                     f'<text class="band-label" x="{left + 2}" y="{top - 6}">training</text>')
    day = first.replace(hour=0, minute=0, second=0, microsecond=0)
    while day <= last:
        if day >= first and x(day) < left + plot_w - 30:
            dx = x(day)
            parts.append(f'<line class="grid" x1="{dx:.1f}" x2="{dx:.1f}" y1="{top}" y2="{top + plot_h}"/>'
                         f'<text class="tick" x="{dx + 3:.1f}" y="{top + plot_h + 14}">{esc(day.strftime("%m-%d"))}</text>')
        day += timedelta(days=1)
    bar_w = max(1.0, span.total_seconds() / total * plot_w - 0.5)
    hx = x(start)
    parts.append(f'<rect class="window" x="{hx - 2:.1f}" y="{top}" width="{bar_w + 4:.1f}" height="{plot_h}">'
                 f'<title>{esc("this finding’s window")}</title></rect>')
    base = top + plot_h
    requests = "".join(f"M{x(m):.1f} {base}V{y(n):.1f}h{bar_w:.1f}V{base}Z" for m, n, _ in points if n)
    denials = "".join(f"M{x(m):.1f} {base}V{y(d):.1f}h{bar_w:.1f}V{base}Z" for m, _, d in points if d)
    parts.append(f'<path class="req" d="{requests}"/>' + (f'<path class="deny" d="{denials}"/>' if denials else ""))
    parts.append(f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}"/>'
                 f'<text class="tick" x="{left - 6}" y="{top + 4}" text-anchor="end">{esc(num(peak))}</text>'
                 f'<text class="tick" x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>'
                 f'<text class="axis-label" x="{left}" y="{height - 4}">requests per window (red: denied); '
                 f'{esc(f"{first:%Y-%m-%d} to {last:%Y-%m-%d} UTC")}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# --------------------------------------------------------------------------- view model
def touched(events: list[dict], entity_type: str) -> list[tuple[str, list[tuple[str, int]]]]:
    """What the evidence touched, most frequent first: verbs, resources, namespaces, codes and the
    peers (users of an address, or addresses and clients of a user)."""
    def resource(event: dict) -> str | None:
        name = event.get("resource") or (event.get("request_uri") or "").split("?", 1)[0] or None
        return f"{name}/{event['subresource']}" if name and event.get("subresource") else name

    groups = [
        ("verbs", [e.get("verb") for e in events]),
        ("resources", [resource(e) for e in events]),
        ("namespaces", [e.get("namespace") for e in events]),
        ("response codes", [e.get("code") for e in events]),
    ]
    if entity_type == "user":
        groups += [("source IPs", [e.get("source_ip") for e in events]), ("user agents", [e.get("user_agent") for e in events])]
    else:
        groups += [("users", [e.get("user") for e in events]), ("user agents", [e.get("user_agent") for e in events])]
    return [(name, Counter(str(v) for v in values if v not in (None, "")).most_common(TOUCHED_TOP)) for name, values in groups]


def incident_records(incidents) -> list[dict]:
    """Incidents as records (``pipeline.report.incidents.Incident.to_record`` or incidents.jsonl lines), rank order."""
    records = [i.to_record() if hasattr(i, "to_record") else dict(i) for i in incidents or ()]
    return sorted(records, key=lambda i: i["rank"])


def build_view(context: dict) -> dict:
    """Everything the templates show, derived from the report context (charts already rendered). Incidents lead: each
    with its member findings; the findings table holds the findings in no incident, quiet ones behind a count."""
    run = context["run"]
    findings = context["findings"]
    top_n = context.get("top_n", 200)
    weight = float(((run.get("config") or {}).get("scoring") or {}).get("model_weight", 1.0))
    scored = ((run.get("counts") or {}).get("score") or {})
    active = [f for f in findings if not f.get("suppressed")]
    details = finding_details(active, context.get("evidence") or {}, context.get("timelines") or {}, run.get("ranges") or {})
    events = context.get("events") or []
    left_out = scored.get("quiet_left_out") or {}
    by_type = scored.get("by_entity_type")
    by_id = {f["finding_id"]: f for f in findings}
    incidents = [{**record, "members": [by_id[i] for i in record["finding_ids"] if i in by_id]}
                 for record in incident_records(context.get("incidents"))]
    member_of = {fid: incident for incident in incidents for fid in incident["finding_ids"]}
    loose = [f for f in active if f["finding_id"] not in member_of]
    table = loose[:top_n]
    return {
        "threshold": weight,
        "histogram": svg_histogram([f["score"] for f in findings], weight, [f["flagged"] for f in findings]) if findings else None,
        "flagged": sum(f["flagged"] for f in findings),
        "suppressed": [f for f in findings if f.get("suppressed")][:top_n],
        "suppressed_total": len(findings) - len(active),
        "scored_total": scored.get("records", len(findings)),
        "entities": sum(t["entities"] for t in by_type.values()) if by_type else len({(f["entity_type"], f["entity"]) for f in findings}),
        "left_out": {t: n for t, n in left_out.items() if n},
        "left_out_total": sum(left_out.values()),
        "quiet_per_entity_type": ((run.get("config") or {}).get("report") or {}).get("quiet_per_entity_type"),
        "incidents": incidents,
        "incidents_flagged": sum(bool(i["flagged"]) for i in incidents),
        "member_of": member_of,
        "table": table,
        "table_quiet": sum(not f["flagged"] for f in table),
        "loose_total": len(loose),
        "loose_flagged": [f for f in loose if f["flagged"]],
        "active_total": len(active),
        "details": details,
        "detail_ids": {d["finding"]["finding_id"] for d in details},
        "rule_rows": rule_rows(findings, context.get("rules") or {}, scored.get("rule_hits") or {}),
        "entity_rows": entity_rows(findings, by_type, left_out),
        "model": run.get("model") or {},
        "ranges": run.get("ranges") or {},
        "top_events": events[:TOP_EVENTS],
        "events_total": len(events),
    }


def finding_details(active: list[dict], evidence: dict, timelines: dict, ranges: dict) -> list[dict]:
    """The top DETAIL_TOP unsuppressed findings that have evidence, with their charts and what they touched; evidence in
    time order (the score stage keeps the most relevant events; read in order, an attack reads as it happened)."""
    details = []
    for finding in active:
        if len(details) == DETAIL_TOP:
            break
        if finding["finding_id"] not in evidence:
            continue
        events = sorted(evidence[finding["finding_id"]], key=lambda e: (e.get("time") or "", e.get("audit_id") or ""))
        series = timelines.get(f"{finding['entity_type']}|{finding['entity']}", [])
        details.append({
            "finding": finding,
            "events": events,
            "reasons_svg": svg_bars(finding["reasons"]) if finding["reasons"] else None,
            "timeline_svg": svg_timeline(series, finding["window_start"], finding["window_end"], ranges) if series else None,
            "touched": touched(events, finding["entity_type"]),
        })
    return details


def rule_rows(findings: list[dict], rules: dict, event_counts: dict) -> list[dict]:
    """Every rule that fired: events matched (whole scored range), windows hit and flagged; most severe first."""
    in_windows = Counter(h["rule"] for f in findings for h in f["rule_hits"])
    in_flagged = Counter(h["rule"] for f in findings if f["flagged"] for h in f["rule_hits"])
    severity_of = {h["rule"]: h["severity"] for f in findings for h in f["rule_hits"]}
    rows = []
    for rule in set(event_counts) | set(in_windows):
        known = rules.get(rule) or {}
        rows.append({"rule": rule, "title": known.get("title"), "severity": known.get("severity") or severity_of.get(rule, "info"),
                     "events": event_counts.get(rule, 0), "findings": in_windows[rule], "flagged": in_flagged[rule]})
    rank = {severity: index for index, severity in enumerate(SEVERITY_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r["severity"], len(rank)), -r["events"], r["rule"]))


def entity_rows(findings: list[dict], by_type: dict | None = None, left_out: dict | None = None) -> list[dict]:
    """Per entity type: windows and entities scored (from the score stage's counts when given: the findings may
    leave quiet windows out), flagged, suppressed, quiet windows left out of the files, and the top score."""
    rows = []
    for entity_type in sorted({f["entity_type"] for f in findings} | set(by_type or {})):
        subset = [f for f in findings if f["entity_type"] == entity_type]
        scored = (by_type or {}).get(entity_type) or {"windows": len(subset), "entities": len({f["entity"] for f in subset})}
        rows.append({"entity_type": entity_type, "windows": scored["windows"], "entities": scored["entities"],
                     "flagged": sum(f["flagged"] for f in subset), "suppressed": sum(bool(f.get("suppressed")) for f in subset),
                     "left_out": (left_out or {}).get(entity_type, 0), "top_score": max((f["score"] for f in subset), default=None)})
    return rows


# --------------------------------------------------------------------------- rendering
def _environment(autoescape: bool) -> Environment:
    env = Environment(loader=PackageLoader("pipeline.report", "templates"), autoescape=autoescape, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True, finalize=lambda value: "" if value is None else value)
    env.filters.update(campaign_members=campaign_members, md=md_escape, fence=md_fence, num=num, short_time=short_time, window=window_label, clock=clock,
                       level=finding_level, anchor=anchor, incident_anchor=incident_anchor, span=time_span, clip=clip)
    env.globals.update(features=FEATURE_BY_NAME)
    return env


def _asset(env: Environment, name: str) -> str:
    return env.loader.get_source(env, name)[0]


def csp_hash(text: str) -> str:
    """The CSP source expression allowing exactly this inline script or style text."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _with_incidents(context: dict, incidents) -> dict:
    return context if incidents is None else {**context, "incidents": incidents}


def render_markdown(context: dict, incidents: list[dict] | None = None) -> str:
    """report.md: a ticket-sized summary (under ``MD_BUDGET`` characters): run facts, incidents (``incidents``: the run's
    incident records, ``incidents.json``), the flagged findings in no incident, and where report.html is for the rest.
    Incidents that do not fit are counted, never cut mid-record."""
    context = _with_incidents(context, incidents)
    env = _environment(autoescape=False)
    view = build_view(context)
    template = env.get_template("report.md.j2")
    shown = min(len(view["incidents"]), MD_INCIDENTS_TOP)
    while True:
        text = template.render(**context, view=view, md_incidents_top=shown, md_table_top=MD_TABLE_TOP,
                               md_incident_findings=MD_INCIDENT_FINDINGS)
        if len(text) < MD_BUDGET or shown == 0:
            return text
        shown //= 2


def render_html(context: dict, incidents: list[dict] | None = None) -> str:
    """report.html from the report context; ``incidents`` as for ``render_markdown``."""
    context = _with_incidents(context, incidents)
    env = _environment(autoescape=True)
    script, style = _asset(env, "report.js"), _asset(env, "report.css")
    csp = (f"default-src 'none'; script-src {csp_hash(script)}; style-src {csp_hash(style)}; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    return env.get_template("report.html.j2").render(**context, view=build_view(context), csp=csp, script=Markup(script),
                                                     style=Markup(style), members_shown=HTML_INCIDENT_FINDINGS)


def rule_context(pack) -> dict:
    """What the report shows of each rule: title, severity, rationale, ATT&CK tactic name and technique."""
    return {r.id: {"title": r.title, "severity": r.severity, "rationale": r.rationale, "tactic": r.tactic_name,
                   "technique": r.technique, "technique_name": r.technique_name} for r in pack.rules}


def report_extras(ctx, findings: list[dict], evidence: dict) -> dict:
    """Context the report adds to the score stage's files: rule titles, pivot queries per finding
    with evidence, and the triage record (each finding's latest verdict, precision so far)."""

    ids = {f["finding_id"] for f in findings}
    return {
        "rules": rule_context(load_rule_pack(ctx.config)),
        "pivots": {f["finding_id"]: pivot_queries(f, evidence[f["finding_id"]], ctx.config) for f in findings if f["finding_id"] in evidence},
        "triage": {"precision": precision(ctx.storage, ctx.cluster),
                   "verdicts": {k: v for k, v in latest_verdicts(ctx.storage, ctx.cluster).items() if k in ids}},
    }
