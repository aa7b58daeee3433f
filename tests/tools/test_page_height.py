"""tools.page_height measures a real report in headless Chromium, as docs/report.md quotes it."""
from __future__ import annotations

import json
import shutil

import pytest

from pipeline.report.render import render_html
from tests.report_factory import incidents_of, make_context, with_extras
from tools import page_height

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                                 reason="chromium is not installed (`make browser` installs Debian's package)")]


def test_a_narrow_screen_makes_the_page_taller_and_every_section_is_measured(tmp_path, capsys):
    context = with_extras(make_context())
    report = tmp_path / "report.html"
    report.write_text(render_html(context, incidents_of(context)), encoding="utf-8")
    page_height.main([str(report), "--widths", "390", "1440"])
    narrow, wide = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (narrow["width"], wide["width"]) == (390, 1440) and narrow["height"] > wide["height"] > 1000
    assert {"incidents", "findings", "details"} <= narrow["sections"].keys()
    assert sum(narrow["sections"].values()) < narrow["height"], "the sections lie within the page"
    parts = dict(narrow["first_finding"])
    assert parts["header."] > 0 and parts["div.scroll evidence-box"] > 0


def test_a_missing_report_is_one_line_with_a_hint(tmp_path):
    with pytest.raises(SystemExit, match="is not a file .*make run"):
        page_height.main([str(tmp_path / "nope.html")])
