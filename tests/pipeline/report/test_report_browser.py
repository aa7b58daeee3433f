"""report.html in a real browser (Debian's headless Chromium, installed by `make browser`):
under its own CSP the shipped script runs with no console error or CSP violation, hostile
strings stay text, a tampered script is refused (so the check can fail), and the page
renders as a real report (the screenshot is far from blank)."""
from __future__ import annotations

import html as htmlmod
import json
import re
import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

from pipeline.report.render import render_html
from tests.pipeline.report.test_report_render import ALLOWED_TAGS, parse
from tests.report_factory import incidents_of, make_context, with_extras

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0")
PROBLEM = re.compile(r"Content Security Policy|Refused to|Uncaught|Error", re.I)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make browser` installs Debian's package)")]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{uuid.uuid4().hex[:8]}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


def console_problems(stderr: str) -> list[str]:
    """Console messages that are errors or CSP reports (Chromium logs page console output as CONSOLE lines)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line and PROBLEM.search(line)]


def decode_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, rows) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, compressed = 8, b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position: position + 8])
        body = data[position + 8: position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            compressed += body
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, previous, offset = zlib.decompress(compressed), width * bpp, [], bytearray(width * bpp), 0
    for _ in range(height):
        kind, line = raw[offset], bytearray(raw[offset + 1: offset + 1 + stride])
        offset += 1 + stride
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], (previous[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                guess = left + up - corner
                nearest = min((abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner))[2]
                line[i] = (line[i] + nearest) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, bpp, rows


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(with_extras(make_context())), encoding="utf-8")
    return path


def test_script_runs_under_the_csp_without_console_errors(report, tmp_path):
    result = chromium(tmp_path, "--dump-dom", report.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert re.search(r'<body[^>]*data-ready="1"', dom), "the report's script did not run"
    assert console_problems(result.stderr) == []
    page = parse(dom)
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS and len(page.raw["script"]) == 1
    assert not [name for _, attrs in page.tags for name in attrs if name.startswith("on")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert re.search(r'<div class="controls" id="findings-controls">', dom), "filter controls stay hidden"


def test_a_script_the_csp_does_not_name_is_refused(report, tmp_path):
    tampered = tmp_path / "tampered.html"
    tampered.write_text(report.read_text(encoding="utf-8").replace('"data-ready", "1"', '"data-ready", "2"'), encoding="utf-8")
    result = chromium(tmp_path, "--dump-dom", tampered.as_uri())
    assert 'data-ready="2"' not in result.stdout
    assert any("Content Security Policy" in line for line in console_problems(result.stderr))


DRIVER = """<script>
(function () {
  var rows = function () { return Array.prototype.slice.call(document.querySelectorAll("#findings-table tbody tr")); };
  var shown = function () { return rows().filter(function (r) { return !r.hidden; }).length; };
  var events = document.querySelector('#findings-table th button[data-col="7"]');
  events.click();
  var descending = rows().map(function (r) { return Number(r.cells[7].getAttribute("data-v")); });
  events.click();
  var ascending = rows().map(function (r) { return Number(r.cells[7].getAttribute("data-v")); });
  var filter = document.getElementById("findings-filter");
  filter.value = "ALICE@corp";
  filter.dispatchEvent(new Event("input"));
  var filtered = shown();
  filter.value = "";
  filter.dispatchEvent(new Event("input"));
  document.getElementById("findings-flagged").click();
  var result = {ascending: ascending, descending: descending, filtered: filtered, flagged: shown(), total: rows().length,
                label: document.getElementById("findings-shown").textContent};
  document.body.setAttribute("data-result", JSON.stringify(result));
}());
</script>"""


def test_table_sorts_filters_and_toggles_flagged_only(report, tmp_path):
    """The shipped script's behaviour, driven by a test-only script (this copy drops the CSP to let it run): a number column
    sorts highest first on the first click (the issue: sorting by score put the lowest first), lowest on the second."""
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", report.read_text(encoding="utf-8"))
    driven = tmp_path / "driven.html"
    driven.write_text(html.replace("</body>", DRIVER + "</body>"), encoding="utf-8")
    result = chromium(tmp_path, "--dump-dom", driven.as_uri())
    match = re.search(r'data-result="([^"]*)"', result.stdout)
    assert match, result.stderr[-2000:]
    data = json.loads(htmlmod.unescape(match[1]))
    assert data["ascending"] == sorted(data["ascending"]) and data["descending"] == sorted(data["ascending"], reverse=True)
    assert data["filtered"] == 1 and data["flagged"] == 3 and data["label"] == f"3 of {data['total']} shown"


def test_screenshot_is_a_real_report(report, tmp_path):
    shot = tmp_path / "report.png"
    result = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,2000", report.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, bpp, rows = decode_png(shot.read_bytes())
    assert (width, height) == (1400, 2000)
    pixels = [row[i: i + 3] for row in rows[::4] for i in range(0, width * bpp, bpp * 4)]
    colours = set(pixels)
    white = sum(p == b"\xff\xff\xff" for p in pixels)
    assert len(colours) > 200, f"only {len(colours)} colours: blank or unstyled"
    assert white / len(pixels) < 0.9
    reds = sum(1 for p in colours if p[0] > 180 and p[1] < 90 and p[2] < 80)
    assert reds, "no severity colour on the page"


@pytest.fixture(scope="module")
def report_with_incidents(tmp_path_factory) -> Path:
    context = with_extras(make_context())
    path = tmp_path_factory.mktemp("report-incidents") / "report.html"
    path.write_text(render_html(context, incidents_of(context)), encoding="utf-8")
    return path


# Headless Chromium will not make a window narrower than 500 px, so the report is laid out in an iframe of the width under
# test (its own viewport: media queries, innerWidth and scrolling are the iframe's). The wrapper reads the iframe's document
# (both file: pages, allowed by --allow-file-access-from-files); the report keeps its CSP and runs its own script.
VIEWPORT = """<!doctype html><html><body style="margin:0">
<iframe id="report" src="report.html" style="width:{width}px;height:900px;border:0"></iframe>
<script>
document.getElementById("report").addEventListener("load", function () {{
  var win = this.contentWindow, doc = win.document, page = doc.scrollingElement;
  var heads = Array.prototype.slice.call(doc.querySelectorAll("table.evidence")[0].tHead.rows[0].cells);
  var column = heads.findIndex(function (th) {{ return th.textContent.trim() === "why"; }});
  var why = heads[column], cell = doc.querySelectorAll("table.evidence")[0].tBodies[0].rows[0].cells[column];
  why.scrollIntoView({{block: "center", inline: "nearest"}});
  var box = why.closest(".scroll");
  box.scrollLeft = 0;
  var head = why.getBoundingClientRect(), body = cell.getBoundingClientRect(), shown = box.getBoundingClientRect();
  var charts = Array.prototype.map.call(doc.querySelectorAll("svg.chart"), function (svg) {{ return svg.getBoundingClientRect().width; }});
  var result = {{scrollWidth: page.scrollWidth, innerWidth: win.innerWidth, why: why.textContent,
    whyLeft: Math.min(head.left, body.left), whyRight: Math.max(head.right, body.right), boxRight: shown.right,
    incidents: doc.getElementById("incidents").getBoundingClientRect().top, findings: doc.getElementById("findings").getBoundingClientRect().top,
    narrowestChart: Math.min.apply(null, charts), ready: doc.body.getAttribute("data-ready"),
    memberWho: doc.querySelector("table.members td.wrap").getBoundingClientRect().width}};
  document.body.setAttribute("data-result", JSON.stringify(result));
}});
</script></body></html>"""


@pytest.mark.parametrize("width", [390, 1440])
def test_page_fits_the_width_and_the_evidence_why_column_is_in_view(report_with_incidents, tmp_path, width):
    """The issue at 390 px: the page was 969 px wide (the overview grid fixed at 300 + 420 px); at 1440 px the evidence
    tables' 12 columns pushed "why" off-screen. Now: no page-level horizontal scroll, "why" inside the viewport once
    scrolled to (down the page, not sideways in its table's box), incidents above the findings table, charts at a readable
    width."""
    (report_with_incidents.parent / f"at-{width}.html").write_text(VIEWPORT.format(width=width), encoding="utf-8")
    result = chromium(tmp_path, "--allow-file-access-from-files", "--window-size=1500,1000", "--virtual-time-budget=5000",
                      "--dump-dom", (report_with_incidents.parent / f"at-{width}.html").as_uri())
    match = re.search(r'data-result="([^"]*)"', result.stdout)
    assert match, result.stderr[-2000:]
    data = json.loads(htmlmod.unescape(match[1]))
    assert data["innerWidth"] == width and data["ready"] == "1"
    assert data["scrollWidth"] <= data["innerWidth"], data
    assert data["why"] == "why" and 0 <= data["whyLeft"] and data["whyRight"] <= min(data["innerWidth"], data["boxRight"]), data
    assert data["incidents"] < data["findings"]
    assert data["narrowestChart"] >= 300, data
    assert data["memberWho"] >= 180, "an incident's member names wrapped a few letters a line at 390 px"
