"""Run every reliability case (bad input, bad configuration, crashes, concurrency, AWS faults, hostile
strings and secrets) and print the table of input or fault -> result; ``make reliability`` runs it.

The cases are the tests in RELIABILITY_TESTS. Each records a one-line ``result`` property saying what
actually happened; a known bug is an ``xfail(strict=True)`` test and shows as BUG with its reason.
The table replaces the generated section of docs/reliability.md (``--no-write`` leaves it alone).
Exit status 1 when any case failed (a regression, or a fixed bug whose xfail now passes).
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RELIABILITY_TESTS = ("tests/e2e/test_reliability.py", "tests/pipeline/io/test_properties.py", "tests/e2e/test_crash_recovery.py", "tests/e2e/test_hostile_inputs.py",
                     "tests/pipeline/stages/test_clock.py", "tests/pipeline/report/test_output_hygiene.py", "tests/pipeline/io/test_readers_hostile.py")
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- reliability:results:start -->", "<!-- reliability:results:end -->"


class Collector:
    """A pytest plugin keeping each case's outcome, recorded result and duration (also under xdist)."""

    def __init__(self):
        self.cases: dict[str, dict] = {}
        self.order: list[str] = []

    def pytest_collection_modifyitems(self, items):
        self.order = [item.nodeid for item in items]

    def pytest_xdist_node_collection_finished(self, node, ids):
        self.order = list(ids)

    def pytest_runtest_logreport(self, report):
        case = self.cases.setdefault(report.nodeid, {"outcome": "passed", "result": "", "seconds": 0.0})
        case["seconds"] += report.duration
        properties = dict(report.user_properties)
        if properties.get("result"):
            case["result"] = properties["result"]
        if report.failed:
            fixed = "XPASS(strict)" in str(report.longrepr)
            case["outcome"] = "FIXED (strict xpass): remove its xfail" if fixed else "FAILED" + (" in setup" if report.when == "setup" else "")
        elif hasattr(report, "wasxfail"):
            case["outcome"] = "BUG (xfail): " + report.wasxfail
        elif report.skipped and report.when == "setup":
            case["outcome"] = "skipped"


def summary(docstring: str | None) -> str:
    """The first sentence of a test's docstring: what is tried and what must hold."""
    text = " ".join((docstring or "").split())
    match = re.match(r"(.+?\.)(\s|$)", text)
    return match.group(1) if match else text


# A test's temporary directory (pytest's basetemp) in a recorded result: the page must rerun anywhere.
_PYTEST_TMP = re.compile(r"\S*/pytest-of-[^/\s]+/pytest-\d+/(?:popen-gw\d+/)?")


def cell(text: str) -> str:
    return _PYTEST_TMP.sub("TMP/", text).replace("|", "\\|").replace("\n", " ")


def table(cases: dict[str, dict]) -> str:
    """Markdown: per test file a section, per test its purpose, then one row per case."""
    by_test: dict[tuple[str, str], list[tuple[str, dict]]] = defaultdict(list)
    for nodeid, case in cases.items():
        path, _, name = nodeid.partition("::")
        function, _, param = name.partition("[")
        by_test[(path, function)].append((param.rstrip("]") or "-", case))
    out, current = [], None
    for (path, function), rows in by_test.items():
        if path != current:
            current = path
            out.append(f"\n### `{path}`\n")
        module = importlib.import_module(path[:-3].replace("/", "."))
        out.append(f"**{cell(summary(getattr(module, function).__doc__))}** (`{function}`)\n")
        out.append("| input or fault | result | outcome |")
        out.append("|---|---|---|")
        for param, case in rows:
            out.append(f"| {cell(param)} | {cell(case['result'])} | {cell(case['outcome'])} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2", help="pytest-xdist workers (0: run in this process)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave docs/reliability.md unchanged")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    collector = Collector()
    options = ["-q", "-p", "no:cacheprovider", "-o", "addopts="] + (["-n", args.workers] if args.workers != "0" else [])
    status = pytest.main([*options, *(str(ROOT / t) for t in RELIABILITY_TESTS)], plugins=[collector])
    rank = {nodeid: index for index, nodeid in enumerate(collector.order)}
    ordered = sorted(collector.cases.items(), key=lambda item: rank.get(item[0], len(rank)))
    cases = {nodeid.replace(str(ROOT) + "/", ""): case for nodeid, case in ordered}
    text = table(cases)
    print(text)
    counts = defaultdict(int)
    for case in cases.values():
        counts[case["outcome"].split(" ", 1)[0]] += 1
    print("\n" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f"; {sum(c['seconds'] for c in cases.values()):.0f} s of test time")
    if not args.no_write:
        doc = DOC.read_text()
        head, _, rest = doc.partition(START)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    return 1 if status not in (0, 5) or counts["FAILED"] or counts["FIXED"] else 0


if __name__ == "__main__":
    sys.exit(main())
