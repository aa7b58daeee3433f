"""Render the analyst report as Markdown and self-contained HTML.

Every string that came from a log is escaped: HTML through Jinja2 autoescaping, Markdown
through ``md_escape`` (which also neutralises inline HTML and link syntax).
"""
from __future__ import annotations

import re

from jinja2 import Environment, PackageLoader, select_autoescape

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def md_escape(value) -> str:
    """Text safe inside a Markdown table cell: no markup, no HTML, no line breaks."""
    text = "" if value is None else str(value)
    text = text.replace("\r", " ").replace("\n", " ")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("pipeline", "templates"), autoescape=select_autoescape(["html", "md"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["md"] = md_escape
    return env


def render_markdown(context: dict) -> str:
    env = Environment(loader=PackageLoader("pipeline", "templates"), autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["md"] = md_escape
    return env.get_template("report.md.j2").render(**context)


def render_html(context: dict) -> str:
    return _environment().get_template("report.html.j2").render(**context)
