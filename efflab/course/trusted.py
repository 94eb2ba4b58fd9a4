"""What a grade rests on: the grader's own run of the instructor notebook, and its own probes.

The kernel that ran a submission is untrusted: its answer log says what the learner answered,
but not what the inputs of the verdict were. Two things the grader makes itself, at grading
time, close that gap (see docs/instructors.md for what is and is not defended):

- **The reference run.** Before the class, the grader runs the instructor notebook once, in
  the same sandbox and under the same limits, on this machine. Every check cell's logged
  evidence there is the reference for that cell. A submission's evidence must agree with it
  on everything that is not the answer (:func:`disagreement`): sizes, counts, configs and seeds
  exactly; values an exercise declares ``measured`` (timings, bandwidths, peaks, fits) within a
  factor (``measured_factor``, 3 by default), so a table invented to fit a wrong answer is
  caught, while an honest run on a busy machine is not.
- **Probes.** A learner-written function (an exercise registered with ``function=True``) is
  called again by the grader: in a fresh sandboxed interpreter that runs only the learner's
  solution cells (and the import lines before them), on probe seeds the grader draws from its
  own key (:func:`probe_seeds`) and never shows the submission. Only the outputs come back,
  over the driver's capped channel, and the grader judges them here against its own reference.

The seeds come from a key kept in the grader's cache folder (``grader-probe.key``, created once;
``efflab grade --probe-key FILE`` names another), so grading the same folder twice draws the
same probes and gives the same bytes.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import math
import os
import secrets
import statistics
from pathlib import Path
from typing import Any

from efflab.check import REGISTRY
from efflab.course import cells as C

MEASURED_FACTOR = 3.0
PROBE_SEEDS = 2          # grader-drawn seeds per function exercise
EXACT_REL = 1e-6         # "exactly", for floats the grader's run recomputes
KEY_NAME = "grader-probe.key"


# -- the reference run -----------------------------------------------------------------------

def _pairs(got: Any, want: Any, path: str, out: list) -> str:
    """Walk two evidence trees side by side: '' if they have one shape and equal non-float
    values (the path of the first difference otherwise); every float pair goes to ``out``."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return path
        for k in sorted(want):
            why = _pairs(got[k], want[k], f"{path}.{k}", out)
            if why:
                return why
        return ""
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return path
        for i, (g, w) in enumerate(zip(got, want)):
            why = _pairs(g, w, f"{path}[{i}]", out)
            if why:
                return why
        return ""
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        out.append((path, float(got), want))
        return ""
    return "" if type(got) is type(want) and got == want else path


def _ratio(g: float, w: float) -> float | None:
    """g / w for two finite numbers of one sign (1 for two zeros); None if they cannot agree."""
    if not (math.isfinite(g) and math.isfinite(w)):
        return 1.0 if g == w or (math.isnan(g) and math.isnan(w)) else None
    if g == w:
        return 1.0
    if g == 0 or w == 0 or (g > 0) != (w > 0):
        return None
    return g / w


def disagreement(exercise: str, got: Any, want: Any, factor: float = MEASURED_FACTOR) -> str:
    """Why a submission's evidence does not rest on the same data as the grader's own run of
    the instructor notebook ('' if it does). Everything but the exercise's answer keys is
    compared. Givens (sizes, counts, configs, seeds) must be equal (floats to 1e-6). Values
    under the exercise's measured keys may differ by the load on the machine: their typical
    ratio to the reference (the median, one "load" for the whole evidence) must be within
    ``factor``, and so must each value once divided by it — a whole run twice as slow
    agrees, one number invented to fit an answer does not. The reason names the field, never
    its value."""
    ex = REGISTRY.get(exercise)
    if ex is None or not isinstance(got, dict) or not isinstance(want, dict):
        return ""  # the judge zeroes an unknown exercise or malformed evidence itself
    if got.get("unanswered") or "collect_error" in got:
        return ""  # the judge says "no answer yet" or shows the error
    factor = max(factor, ex.measured_factor or 0)
    if ex.function:  # the outputs are the answer; the grader's probes judge them again
        given, truth = {"seed": got.get("seed")}, {"seed": want.get("seed")}
    else:
        given = {k: v for k, v in got.items() if k not in ex.answer_keys}
        truth = {k: v for k, v in want.items() if k not in ex.answer_keys}
    if set(given) != set(truth):
        missing = sorted(set(truth) - set(given)) or sorted(set(given) - set(truth))
        return f"its evidence has other fields than the grader's run ({', '.join(missing)})"

    def differs(path: str, how: str) -> str:
        return (f"{path} is not what the grader's own run of the lesson gives ({how}): the "
                "answer was checked against other data than the lesson's")

    measured: list = []
    for key in sorted(truth):
        floats: list = []
        why = _pairs(given[key], truth[key], key, floats)
        if why:
            return differs(why, "exactly")
        if key in ex.measured_keys:
            measured += floats
            continue
        for path, g, w in floats:
            if not (g == w or abs(g - w) <= EXACT_REL * abs(w)):
                return differs(path, "exactly")
    ratios = []
    for path, g, w in measured:
        r = _ratio(g, w)
        if r is None:
            return differs(path, f"within {factor:g}x")
        ratios.append((path, r))
    if ratios:
        load = statistics.median(r for _, r in ratios)
        if not 1 / factor <= load <= factor:
            return differs(ratios[0][0] if len(ratios) == 1 else "the measurements",
                           f"within {factor:g}x")
        for path, r in ratios:
            if not 1 / factor <= r / load <= factor:
                return differs(path, f"within {factor:g}x of the rest of the run")
    return ""


def reference_of(result, grade_cells: list[C.GradeCell], positions: dict) -> dict:
    """The reference evidence of each grade cell from the instructor notebook's own run:
    ``{grade_id: [{"exercise", "evidence"}, ...]}``, or ``{grade_id: "why it is missing"}``."""
    by_index = {c.index: c for c in result.cells}
    out: dict = {}
    for g in grade_cells:
        run = by_index.get(positions.get(g.grade_id))
        if run is None:
            out[g.grade_id] = f"it did not run ({result.note or 'no report'})"
        elif run.status != "ok":
            out[g.grade_id] = f"it ended with {run.status}: {run.reason}"
        else:
            out[g.grade_id] = [e for e in run.evidence if e.get("exercise") in g.exercises]
    return out


# -- probes --------------------------------------------------------------------------------

def grader_key(path: str | os.PathLike | None = None) -> bytes:
    """The secret the probe seeds are drawn from: ``path``, else the grader's cache folder's
    key file, created (readable by its owner only) on first use."""
    if path is None:
        from efflab.measurement import hardware

        path = Path(hardware.CACHE_DIR) / KEY_NAME
    p = Path(path)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return p.read_bytes().strip()


def probe_seeds(key: bytes, exercise: str, n: int = PROBE_SEEDS) -> list[int]:
    """``n`` probe seeds in [0, 2^31) for ``exercise``, drawn from the grader's key."""
    out = []
    for k in range(n):
        digest = hmac.new(key, f"{exercise}/{k}".encode(), hashlib.sha256).digest()
        out.append(int.from_bytes(digest[:4], "big") % 2**31)
    return out


def _strip_magics(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())


def function_calls(source: str) -> list[tuple[str, str]]:
    """(exercise, source of the function argument) for each function-exercise call in a check
    cell's source, in order, once each: ``efflab.check.route(route)`` -> ("route", "route")."""
    try:
        tree = ast.parse(_strip_magics(source))
    except SyntaxError:
        return []
    seen, out = set(), []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name = node.func.attr
        ex = REGISTRY.get(name)
        if ex is None or not ex.function or not node.args or name in seen:
            continue
        seen.add(name)
        out.append((name, ast.unparse(node.args[0])))
    return out


def _defined(tree: ast.Module) -> set[str]:
    """Names a cell binds at its top level (functions, classes, assignments, imports)."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                out.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return out


def _used(tree: ast.AST) -> set[str]:
    """Names a tree reads, less the parameters of the functions it defines (a rough set of its
    free names: enough to find which cells define what a function needs)."""
    loads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    params = {a.arg for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                              ast.Lambda))
              for a in (*n.args.posonlyargs, *n.args.args, *n.args.kwonlyargs,
                        *([n.args.vararg] if n.args.vararg else []),
                        *([n.args.kwarg] if n.args.kwarg else []))}
    return loads - params


def probe_program(submission, instructor, check_index: int, exprs: list[str]) -> list[str]:
    """The code a probe run executes before calling ``exprs`` (the functions the check cells
    at or before ``check_index`` of ``submission``, restored, pass to their exercises): each of
    the learner's solution cells that defines a name the functions need (followed through the
    helpers those cells use), and the import lines of the cells before it that bind a name that
    code reads (star imports always), in order. Nothing else the notebook ran: no sweep, no
    other answer, no scratch cell, no import of a library the function does not touch (a
    lesson's chart imports alone cost a probe run seconds)."""
    solution_ids = {c.get("id") for c in instructor.cells if C.is_solution(c)}
    solution_ids.discard(None)
    cells = []  # (source, tree, is a solution cell)
    for cell in submission.cells[:check_index]:
        if cell.get("cell_type") != "code":
            continue
        source = _strip_magics(cell.get("source", ""))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            tree = None
        cells.append((source, tree, cell.get("id") in solution_ids))
    needed: set[str] = set()
    for expr in exprs:
        needed |= _used(ast.parse(expr, mode="eval"))
    chosen: set[int] = set()
    while True:  # the solution cells defining what is needed, and what they need in turn
        more = {i for i, (_, tree, sol) in enumerate(cells)
                if sol and tree is not None and i not in chosen and _defined(tree) & needed}
        if not more:
            break
        chosen |= more
        for i in more:
            needed |= _used(cells[i][1])
    def wanted(node) -> bool:  # an import the chosen code reads a name of (or a star import)
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            return False
        return any(a.name == "*" or (a.asname or a.name).split(".")[0] in needed
                   for a in node.names)

    code = []
    for i, (source, tree, _) in enumerate(cells):
        if i in chosen:
            code.append(source)
        elif tree is not None:
            imports = [ast.unparse(n) for n in tree.body if wanted(n)]
            if imports:
                code.append("\n".join(imports))
    return code
