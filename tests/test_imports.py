"""The house: layers are folders, imports run one way through them, no package hides a module,
every module imports on its own, and ``import efflab`` stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "efflab"

# the layers of the architecture, lowest first: a module may import its own layer or lower ones
LAYERS = ["efflab.core", "efflab.kernels", "efflab.techniques", "efflab.measurement",
          "efflab.systems", "efflab.studies", "efflab.ui", "efflab.check", "efflab.course",
          "efflab.theory", "efflab.cli"]


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
    for i, top in enumerate(LAYERS):
        if module == top or module.startswith(top + "."):
            return i
    return None


def test_every_module_belongs_to_a_layer_and_the_top_level_is_small():
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")} - {"efflab"}
    assert not sorted(m for m in modules if _layer(m) is None)
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top


def test_every_layer_says_what_it_holds():
    for top in LAYERS:
        rel = Path(*top.split(".")[1:])
        init = PACKAGE / rel / "__init__.py" if (PACKAGE / rel).is_dir() else PACKAGE / f"{rel}.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init} needs a docstring saying what the layer holds"


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


def _upward(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for m, deps in graph.items():
        lm = _layer(m)
        for d in deps:
            ld = _layer(d)
            if lm is not None and ld is not None and ld > lm:
                wrong.append(f"{m} ({LAYERS[lm]}) imports {d} ({LAYERS[ld]})")
    return sorted(wrong)


def test_imports_run_one_way_through_the_layers():
    wrong = _upward(_graph())
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_catches_an_upward_import():
    assert _upward({"efflab.core.model": {"efflab.ui.lab"}}) == [
        "efflab.core.model (efflab.core) imports efflab.ui.lab (efflab.ui)"]
    assert _upward({"efflab.course.sandbox": {"efflab.check.core", "efflab.core.store"}}) == []


def test_no_package_hides_a_submodule_behind_a_same_named_export():
    hidden = []
    for init in PACKAGE.rglob("__init__.py"):
        pkg = init.parent
        for node in ast.walk(ast.parse(init.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    name = a.asname or a.name
                    if (pkg / f"{name}.py").exists() or (pkg / name).is_dir():
                        if node.module != f"{_module_name(init)}" or a.name != name:
                            hidden.append(f"{init.relative_to(PACKAGE.parent)}: {name}")
    assert not hidden, hidden


@pytest.mark.parametrize("module", ["efflab.measurement.memory", "efflab.measurement.sweeping",
                                    "efflab.core.weights", "efflab.theory",
                                    "efflab.kernels.flash_attention", "efflab.ui.predictions",
                                    "efflab.course.sandbox"])
def test_a_module_imports_on_its_own(module):
    out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def test_public_functions_do_not_hide_their_modules():
    import importlib

    import efflab

    assert callable(efflab.measure) and callable(efflab.sweep)
    sweeping = importlib.import_module("efflab.measurement.sweeping")
    assert sweeping.sweep is efflab.sweep  # patching efflab.measurement.sweeping.measure reaches the sweep
    assert importlib.import_module("efflab.measurement").measure is efflab.measure


def _fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter (nothing imported by this test session)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_efflab_is_light_and_names_load_on_first_use():
    code = (
        "import json, sys\n"
        "import efflab\n"
        "heavy = ('triton', 'altair', 'ipywidgets', 'pandas', 'efflab.systems.distributed',\n"
        "         'efflab.check', 'efflab.theory', 'efflab.ui.lab')\n"
        "before = sorted(m for m in heavy if m in sys.modules)\n"
        "ours = sorted(m for m in sys.modules if m.startswith('efflab.'))\n"
        "knobs = efflab.Knobs(batch_size=2)\n"
        "check = efflab.check\n"
        "print(json.dumps({'before': before, 'ours': ours, 'after': 'efflab.check' in sys.modules,\n"
        "                  'names': sorted(efflab.__all__), 'dir': 'measure' in dir(efflab),\n"
        "                  'batch': knobs.batch_size}))\n")
    import json

    got = json.loads(_fresh_python(code))
    assert got["before"] == [] and got["ours"] == []  # nothing of efflab but its __init__
    assert got["after"] and got["dir"] and got["batch"] == 2
    assert 12 <= len(got["names"]) <= 20


def test_one_check_loads_its_own_topic_and_the_registry_is_whole():
    # a grader's probe run of lesson 01's function: no torch, no other lesson's module
    code = ("import json, sys\n"
            "import efflab.check as check\n"
            "ex = check.largest_fitting_batch\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('efflab.check.'))\n"
            "alone = {'torch': 'torch' in sys.modules, 'loaded': loaded, 'name': ex.name}\n"
            "alone['judged'] = check.judge('score_bytes', {}).exercise\n"  # judge loads the rest
            "alone['known'] = 'unknown' not in check.judge('score_bytes', {}).got\n"
            "print(json.dumps(alone))\n")
    import json

    got = json.loads(_fresh_python(code))
    from efflab import check

    every = sorted(n for names in check._TOPICS.values() for n in names)
    whole = _fresh_python("import json, efflab.check as c; print(json.dumps(sorted(c.REGISTRY)))")
    assert json.loads(whole) == every  # REGISTRY, asked for as a whole, holds every check
    assert got == {"torch": False, "loaded": ["efflab.check.batching", "efflab.check.core"],
                   "name": "largest_fitting_batch", "judged": "score_bytes", "known": True}
    assert all(getattr(check, n) is check.REGISTRY[n] for n in every)


def test_the_command_line_parser_loads_none_of_the_notebook_stack():
    # `efflab --help` or a mistyped flag answers at once: each command imports what it runs
    code = ("import json, sys\n"
            "from efflab.cli import build_parser\n"
            "build_parser()\n"
            "heavy = ('nbformat', 'altair', 'pandas', 'triton', 'ipywidgets', 'nbclient',\n"
            "         'efflab.course.gradebook', 'efflab.course.sandbox', 'efflab.measurement')\n"
            "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n")
    assert _fresh_python(code).strip() == "[]"
    import efflab.course as course

    assert course.grade.__module__ == "efflab.course.gradebook"  # the lazy names still resolve
    with pytest.raises(AttributeError, match="has no attribute 'grades'"):
        course.grades  # noqa: B018


def test_an_unknown_top_level_name_is_a_clear_attribute_error():
    import efflab

    with pytest.raises(AttributeError, match="no attribute 'batching_table'"):
        efflab.batching_table  # noqa: B018 - it moved to efflab.studies.analysis
