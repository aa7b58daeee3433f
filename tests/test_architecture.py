"""The layering the tree shows, enforced: the import graph of pipeline/, features/, training/ and tools/, read
from the source (top-level AND function-level imports, so an import moved into a function to dodge a circle
still counts).

Layers, top to bottom; a module may import its own layer and any layer below it, never one above:

    tools      developer tooling (bench, evaluate, reliability): may use everything, shipped in no wheel
    cli        pipeline.cli: the only package that imports click or rich; pipeline.launch, the executable
    deploy     pipeline.deploy: pure builders of the deployment artefacts (they name what the stages cache)
    stages     pipeline.stages: archive, features, train, score, report, export, the run, scale-out
    adapters   pipeline.report (render, pivots, ASFF), pipeline.aws (every boto3 call), pipeline.triage, pipeline.sample
    context    pipeline.context: one run's storage, config, clock and state
    io         pipeline.io: storage (local or s3://, by scheme name), readers, the JSON scanner
    shared     pipeline.config, errors, text, catalog (the registries and the rule pack)
    pure       features/ and training/: no pipeline, no AWS, no I/O

A new module under pipeline/ must be placed in a layer here (the test names it).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "features", "training", "tools")
LAYERS = [
    ("tools", ("tools",)),
    ("cli", ("pipeline.cli", "pipeline.__main__", "pipeline.launch")),
    ("deploy", ("pipeline.deploy",)),
    ("stages", ("pipeline.stages",)),
    ("adapters", ("pipeline.report", "pipeline.aws", "pipeline.triage", "pipeline.sample")),
    ("context", ("pipeline.context",)),
    ("io", ("pipeline.io",)),
    ("shared", ("pipeline.config", "pipeline.errors", "pipeline.text", "pipeline.catalog", "pipeline.sources", "pipeline")),
    ("pure", ("features", "training")),
]
ONLY_IN = {  # third-party packages and the one place that may import them
    "click": "pipeline.cli", "rich": "pipeline.cli",
    "boto3": "pipeline.aws", "botocore": "pipeline.aws", "sagemaker": "pipeline.aws",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = modules()


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports, wherever the import statement is (module level, in a function, in a try)."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # ``from .x import y`` inside package p is ``from p.x import y``
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.append((base, node.lineno))
            # ``from pipeline.stages import archive`` imports the module pipeline.stages.archive
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return found


def first_party(name: str) -> str | None:
    """The module of ours ``name`` is (or is in), None for the standard library and third-party packages."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    edges = {}
    for module, path in MODULES.items():
        targets = {first_party(name) for name, _ in imports(path)}
        # importing pipeline.x.y runs pipeline/x/__init__.py, but that is not a dependency on what it holds
        edges[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return edges


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if within(module, prefix) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py"
    if module.startswith("pipeline.") and best[1] == len("pipeline"):
        pytest.fail(f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py (and docs/architecture.md)")
    return best[0]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_function_level_imports():
    """A function-level import is an edge like any other (the old storage <-> aws.s3 circle hid in one)."""
    edges = graph()
    assert "pipeline.aws.securityhub" in edges["pipeline.stages.export"]  # imported inside export_findings
    assert "pipeline.stages.features" in edges["pipeline.stages.train"]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_layers_only_import_downwards():
    edges = graph()
    wrong = [f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
             for module, targets in edges.items() for target in sorted(targets) if layer_of(target) < layer_of(module)]
    assert wrong == []


def test_click_rich_only_in_the_cli_and_boto3_sagemaker_only_in_aws():
    wrong = []
    for module, path in MODULES.items():
        for name, line in imports(path):
            top = name.split(".")[0]
            if top in ONLY_IN and not within(module, ONLY_IN[top]):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name} (only {ONLY_IN[top]} may)")
    assert wrong == []


@pytest.mark.parametrize("package, forbidden", [
    ("features", ("pipeline", "training", "tools", "pathlib", "boto3", "botocore", "sagemaker", "click", "rich")),
    ("training", ("pipeline", "tools", "boto3", "botocore", "sagemaker", "click", "rich")),
])
def test_features_and_training_stay_pure(package, forbidden):
    """features/ is events in, tables out; training/ is detectors behind one contract: neither knows the pipeline."""
    wrong = []
    for module, path in MODULES.items():
        if not within(module, package):
            continue
        for name, line in imports(path):
            if name.split(".")[0] in forbidden:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
        if package == "features":
            tree = ast.parse(path.read_text(encoding="utf-8"))
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno} calls open()" for node in ast.walk(tree)
                      if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"]
    assert wrong == []


def test_a_circle_would_fail():
    """The checks catch what they claim to: a two-module circle and an upward import."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert layer_of("pipeline.io.storage") > layer_of("pipeline.cli.stages")
