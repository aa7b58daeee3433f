"""How tall report.html is in headless Chromium at given widths: the page, each section and the parts of the first
finding's details, and how wide the page is (wider than the window means sideways scrolling). docs/report.md quotes
these for the sample run (``make run``):

    .venv/bin/python -m tools.page_height work/reports/cluster=default/RUN/report.html --widths 390 1440

Chromium (``make browser`` installs Debian's package) will not make a window narrower than 500 px, so the report is laid
out in an iframe of each width, its own viewport (media queries and scrolling are the iframe's), as
tests/pipeline/report/test_report_browser.py does.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """<!doctype html><html><body style="margin:0">
<iframe id="report" src="report.html" style="width:{width}px;height:900px;border:0"></iframe>
<script>
document.getElementById("report").addEventListener("load", function () {{
  var doc = this.contentWindow.document, height = function (e) {{ return Math.round(e.getBoundingClientRect().height); }};
  var sections = {{}};
  Array.prototype.forEach.call(doc.querySelectorAll("main > section[id]"), function (e) {{ sections[e.id] = height(e); }});
  var first = doc.querySelector("#details article.finding");
  var parts = first ? Array.prototype.map.call(first.children, function (e) {{
    return [(e.tagName + "." + e.className).toLowerCase(), height(e)]; }}) : [];
  document.body.setAttribute("data-result", JSON.stringify({{height: doc.scrollingElement.scrollHeight,
    scroll_width: doc.scrollingElement.scrollWidth, sections: sections, first_finding: parts}}));
}});
</script></body></html>"""


def measure(report: Path, width: int, chromium: str) -> dict:
    """The page's, its sections' and the first finding's parts' heights in CSS pixels at ``width``."""
    with tempfile.TemporaryDirectory(prefix="auditsift-height-") as work:
        shutil.copy(report, Path(work) / "report.html")
        probe = Path(work) / "probe.html"
        probe.write_text(PROBE.format(width=width), encoding="utf-8")
        result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                                 f"--user-data-dir={work}/profile", "--window-size=1500,1000", "--virtual-time-budget=5000",
                                 "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-result="([^"]*)"', result.stdout)
    if not found:
        raise SystemExit(f"error: Chromium did not lay the report out at {width} px: {result.stderr.strip()[-300:]}")
    return {"width": width, **json.loads(html.unescape(found[1]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--widths", type=int, nargs="+", default=[390, 1440])
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("error: chromium is not installed (hint: `make browser` installs Debian's package)")
    if not args.report.is_file():
        raise SystemExit(f"error: {args.report} is not a file (hint: `make run` writes the sample's report)")
    for width in args.widths:
        print(json.dumps(measure(args.report, width, chromium)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
