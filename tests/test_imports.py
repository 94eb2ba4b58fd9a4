"""The house: imports run one way, no module imports itself back, and every module imports
on its own (``python -c "import efflab.measurement.memory"``)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "efflab"

# the layers of the architecture, lowest first: a module may import its own layer or lower
LAYERS = [
    {"efflab.config", "efflab.records"},
    {"efflab.data", "efflab.model"},
    {"efflab.kernels", "efflab.weights"},
    {"efflab.techniques"},
    {"efflab.workloads"},
    {"efflab.measurement", "efflab.profiling", "efflab.memory_timeline", "efflab.fusion"},
    {"efflab.store", "efflab.sweeping", "efflab.theory", "efflab.train", "efflab.analysis",
     # the later lessons' engines: they measure, train and store, and draw nothing
     "efflab.profiling", "efflab.memory_timeline", "efflab.fusion", "efflab.kv_cache",
     "efflab.speculative", "efflab.shapes", "efflab.serving", "efflab.compression",
     "efflab.distill", "efflab.scaling", "efflab.distributed"},
    {"efflab.viz", "efflab.check", "efflab.predictions"},
    {"efflab.lab", "efflab.panel_state", "efflab.panel_runner", "efflab.cli", "efflab.report",
     "efflab.grading"},
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """module -> the efflab modules it imports anywhere in its body (functions included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import submodule` depends on the submodule; `from mod import name`
                # on the module
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                           else node.module for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t.startswith("efflab") and t != name and t != "efflab":
                    graph[name].add(t)
    return graph


def _layer(module: str) -> int | None:
    for i, group in enumerate(LAYERS):
        if any(module == g or module.startswith(g + ".") for g in group):
            return i
    return None


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_imports_run_one_way_through_the_layers():
    wrong = []
    for m, deps in _graph().items():
        lm = _layer(m)
        for d in deps:
            ld = _layer(d)
            if lm is not None and ld is not None and ld > lm:
                wrong.append(f"{m} (layer {lm}) imports {d} (layer {ld})")
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize("module", ["efflab.measurement.memory", "efflab.sweeping",
                                    "efflab.weights", "efflab.theory", "efflab.kernels.flash_attention"])
def test_a_module_imports_on_its_own(module):
    out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def test_public_functions_do_not_hide_their_modules():
    import importlib

    import efflab

    assert callable(efflab.measure) and callable(efflab.sweep)
    sweeping = importlib.import_module("efflab.sweeping")
    assert sweeping.sweep is efflab.sweep  # patching efflab.sweeping.measure reaches the sweep
    assert importlib.import_module("efflab.measurement").measure is efflab.measure
