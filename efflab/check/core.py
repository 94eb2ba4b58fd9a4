"""Exercises that check themselves, and the answer log a grader re-judges.

An exercise is two functions and a name:

- ``collect(answer, **given) -> evidence`` runs in the learner's kernel. It turns the answer
  into plain JSON-able data. For a number it keeps the number; for a learner-written function
  it CALLS the function on seeded probe inputs and keeps the outputs (never the code). Data the
  check is given (the learner's own records, a batch size) goes into the evidence too, so the
  verdict can be recomputed elsewhere.
- ``judge(evidence) -> Verdict`` is pure: it recomputes the reference from the evidence's seeds
  and given data and compares. It runs in the kernel, for immediate feedback, and again in the
  grader's own process, where a patched ``efflab.check`` in the submission cannot reach it.

Registering one::

    @exercise("throughput", points=1, measured=('latency_ms',))
    def throughput(answer, *, latency_ms, tokens_per_step):       # collect
        return {"answer": number(answer), "latency_ms": float(latency_ms), ...}

    @throughput.judge_with
    def _(ev) -> Verdict:
        truth = ...                                                # recomputed here
        return Verdict(passed=..., expected=..., got=..., hint=...)

``throughput`` is now an :class:`Exercise` in :data:`REGISTRY`. Calling it,
``efflab.check.throughput(answer, **given)``:

1. an answer still ``None`` or ``...`` becomes ``{"unanswered": true}`` ("no answer yet"); a
   learner function that still raises a student version's ``NotImplementedError`` placeholder
   is logged the same way, and the call then re-raises it, so a student notebook run top to
   bottom stops at its first unanswered exercise, as it does at a placeholder answer cell;
2. ``collect`` runs; if it raises, the reason is kept as ``{"collect_error": "..."}``;
3. one JSON line ``{"exercise", "evidence", "efflab_version", "time"}`` is appended to the
   answer log (``$EFFLAB_ANSWERS``, else ``efflab_answers.jsonl`` in the working directory);
4. the evidence, as read back from JSON, is judged — the same input the grader sees;
5. the :class:`Feedback` is shown (printed; rich HTML in Jupyter) and returned.

A wrong, missing or crashing answer never raises, unless ``$EFFLAB_CHECKS_RAISE`` is "1": then a
check that does not pass raises AssertionError with its feedback, as ``nbgrader autograde``
needs (it passes every cell that does not raise). A hidden check calls the same exercise
again with other givens (a function check takes ``seed=``), logging a second line under the same
name; a grader judges every logged line. :func:`judge` is what a grader calls:
an unknown exercise or malformed evidence gives a zero :class:`Feedback` with the reason.
Checks never depend on absolute timings: they compare with references, the learner's own
records, orderings, ratios and tolerances.

Helpers for writing a check: :func:`number` (a float, or EvidenceError), :func:`close`,
:func:`miss_band` ("too high, within 2x"), :func:`judge_number` (a derived number against its truth
and the values known slips give, each with its hint), :func:`probe_outputs` (call a learner's
function on probes, keeping outputs or errors), :func:`judge_probed_numbers` (a learner function
of one number per probe against its reference) and :func:`seed_of` (the probe seed of evidence).
Test every check with its right answer and at least two plausible wrong ones.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ANSWERS_ENV = "EFFLAB_ANSWERS"
RAISE_ENV = "EFFLAB_CHECKS_RAISE"  # "1": a check that does not pass raises AssertionError
DEFAULT_ANSWERS = "efflab_answers.jsonl"

NO_ANSWER = "no answer yet"


def _efflab_version() -> str:
    try:
        return metadata.version("efflab")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer: what was expected, what came back, and a hint.

    ``bool(feedback)`` is ``passed``. ``status`` is "correct", "wrong", "unanswered" or
    "error" (the answer crashed, or the evidence could not be judged).
    """

    exercise: str
    passed: bool
    points: float
    max_points: float
    expected: str
    got: str
    hint: str
    status: str = "wrong"

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        head = {"correct": "✓ correct", "wrong": "✗ not yet", "unanswered": "… " + NO_ANSWER,
                "error": "✗ could not check"}.get(self.status, self.status)
        parts = [f"[{self.exercise}] {head} ({_fmt_points(self.points)}/"
                 f"{_fmt_points(self.max_points)} points)."]
        if self.expected:
            parts.append(f"Expected: {self.expected}.")
        if self.got:
            parts.append(f"Got: {self.got}.")
        if self.hint and not self.passed:
            parts.append(f"Hint: {self.hint}")
        return " ".join(parts)

    def _repr_html_(self) -> str:
        colour = {"correct": "#1a7f37", "unanswered": "#6e7781"}.get(self.status, "#cf222e")
        rows = "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{k}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in (("expected", self.expected), ("got", self.got),
                         ("hint", "" if self.passed else self.hint)) if v)
        title = html.escape(str(self).split(".")[0] + ")")
        return (f"<div style='border-left:4px solid {colour};padding:4px 8px'>"
                f"<b style='color:{colour}'>{title}</b><table>{rows}</table></div>")

    def _ipython_display_(self) -> None:
        # The check already showed this feedback when it ran; a cell ending in the call must
        # not show it twice. Any later display shows it again.
        if self.__dict__.pop("_shown", False):
            return
        _show(self)

    def to_dict(self) -> dict:
        """The fields as a plain dict (what a gradebook row stores)."""
        return {"exercise": self.exercise, "passed": self.passed, "points": self.points,
                "max_points": self.max_points, "expected": self.expected, "got": self.got,
                "hint": self.hint, "status": self.status}


def _fmt_points(p: float) -> str:
    return f"{p:g}"


@dataclass(frozen=True)
class Verdict:
    """What a judge function returns; :class:`Exercise` turns it into a :class:`Feedback`.

    ``fraction`` (0..1) gives partial credit; by default ``passed`` earns all points.
    """

    passed: bool
    expected: str = ""
    got: str = ""
    hint: str = ""
    fraction: float | None = None


class EvidenceError(ValueError):
    """The evidence lacks a field or holds a value of the wrong kind (raised inside judges)."""


def _show(fb: Feedback) -> None:
    """Print the feedback; in a Jupyter kernel show the HTML with the text beside it."""
    try:
        from IPython import get_ipython  # optional: plain Python has no display system
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with ipykernel, a dependency
        get_ipython = None
    shell = get_ipython() if get_ipython else None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        display({"text/plain": str(fb), "text/html": fb._repr_html_()}, raw=True)
    else:
        print(str(fb))


def answers_path() -> Path:
    """Where answers are logged: ``$EFFLAB_ANSWERS``, else ``./efflab_answers.jsonl``."""
    return Path(os.environ.get(ANSWERS_ENV) or DEFAULT_ANSWERS)


def read_answers(path: str | os.PathLike | None = None) -> list[dict]:
    """Every logged line, oldest first; unreadable lines are skipped."""
    p = Path(path) if path is not None else answers_path()
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "exercise" in entry:
            out.append(entry)
    return out


def latest_answers(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """The last logged evidence per exercise (a learner may try several times)."""
    return {e["exercise"]: e.get("evidence") for e in read_answers(path)}


def to_jsonable(x: Any) -> Any:
    """Numbers, strings, lists and dicts of them, from numpy/torch/pandas values.

    Non-finite floats become the strings "nan", "inf", "-inf" (strict JSON has no NaN);
    :func:`number` reads them back.
    """
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # numpy arrays/scalars, torch tensors
        if hasattr(x, "detach"):
            x = x.detach().cpu()
            if getattr(x, "is_floating_point", lambda: False)():
                x = x.double()
        return to_jsonable(x.tolist())
    if hasattr(x, "item"):
        return to_jsonable(x.item())
    return repr(x)


def number(x: Any) -> float:
    """A float from an answer or from evidence; raises EvidenceError if it is not one."""
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, bool) or x is None or isinstance(x, str):
        raise EvidenceError(f"expected a number, got {x!r}")
    try:
        return float(x)
    except (TypeError, ValueError) as e:
        raise EvidenceError(f"expected a number, got {x!r}") from e


def is_unanswered(answer: Any) -> bool:
    """``None`` and ``...`` mean the learner has not answered yet."""
    return answer is None or answer is Ellipsis


def close(got: float, want: float, rel: float = 0.02, abs_: float = 0.0) -> bool:
    """``got`` within ``rel`` (relative) or ``abs_`` (absolute) of ``want``; NaN never is."""
    if not (math.isfinite(got) and math.isfinite(want)):
        return got == want
    return abs(got - want) <= max(rel * abs(want), abs_)


def miss_band(got: float, want: float) -> str:
    """Which way an answer misses and by how much, in coarse bands that never give the value
    back: "too high by more than 10x", "too low, within 10x", "too high, within 2x",
    "within 10%, too low", "the wrong sign", "zero". The bands are a factor of 10, 2 and
    1.1 wide, so no number read from the reply lands within a check's tolerance."""
    if not math.isfinite(got) or not math.isfinite(want) or want == 0:
        return "off"
    if got == 0:
        return "zero"
    r = got / want
    if r < 0:
        return "the wrong sign"
    way = "too high" if r > 1 else "too low"
    factor = r if r > 1 else 1 / r
    if factor > 10:
        return f"{way} by more than 10x"
    if factor > 2:
        return f"{way}, within 10x"
    if factor > 1.1:
        return f"{way}, within 2x"
    return f"within 10%, {way}"


@dataclass
class Exercise:
    """A registered exercise: ``collect`` in the learner's kernel, ``judge`` anywhere.

    Call it like a function, ``ex(answer, **given)``: collect, log, judge, show, return the
    :class:`Feedback`.
    """

    name: str
    max_points: float
    collect_fn: Callable[..., dict]
    judge_fn: Callable[[dict], Verdict] | None = None
    doc: str = ""
    topic: str = ""
    extra: dict = field(default_factory=dict)
    answer_keys: tuple[str, ...] = ("answer",)
    measured_keys: tuple[str, ...] = ()
    function: bool = False
    measured_factor: float | None = None

    def __post_init__(self):
        self.__doc__ = self.doc

    def judge_with(self, fn: Callable[[dict], Verdict]) -> Callable[[dict], Verdict]:
        """Decorator: set the pure judge function (returns ``fn`` unchanged)."""
        self.judge_fn = fn
        return fn

    # -- the two halves -------------------------------------------------------------------
    def collect(self, answer: Any, *args: Any, **given: Any) -> dict:
        """Evidence for ``answer``; never raises (a crash is kept as ``collect_error``)."""
        if is_unanswered(answer):
            return {"unanswered": True}
        try:
            ev = self.collect_fn(answer, *args, **given)
        except Unanswered as e:
            return {"unanswered": True, **({"placeholder": e.placeholder} if e.placeholder else {})}
        except NotImplementedError as e:  # nbgrader's placeholder is still there
            return {"unanswered": True, "placeholder": str(e) or "not answered yet"}
        except Exception as e:  # the learner's answer or code: report, never crash
            return {"collect_error": f"{type(e).__name__}: {e}"}
        if not isinstance(ev, dict):
            return {"collect_error": f"collect returned {type(ev).__name__}, not a dict"}
        return to_jsonable(ev)

    def judge(self, evidence: Any) -> Feedback:
        """The Feedback for ``evidence`` (pure; malformed evidence gives zero, not an error)."""
        if not isinstance(evidence, dict):
            return self._feedback(Verdict(False, got=f"evidence of type {type(evidence).__name__}",
                                          hint="malformed evidence"), status="error")
        if evidence.get("unanswered"):
            return self._feedback(Verdict(False, got=NO_ANSWER,
                                          hint="replace None with your answer and re-run"),
                                  status="unanswered")
        if "collect_error" in evidence:
            return self._feedback(Verdict(False, got=f"your answer raised {evidence['collect_error']}",
                                          hint="fix the error above and run the check again"),
                                  status="error")
        if self.judge_fn is None:
            return self._feedback(Verdict(False, hint=f"exercise {self.name!r} has no judge"),
                                  status="error")
        try:
            verdict = self.judge_fn(evidence)
        except Exception as e:  # malformed evidence (or a judge's bug): zero, with the reason
            return self._feedback(Verdict(False, got=f"malformed evidence ({type(e).__name__}: {e})",
                                          hint="run the check cell as given"), status="error")
        if not isinstance(verdict, Verdict):
            return self._feedback(Verdict(False, hint=f"judge of {self.name!r} returned "
                                                      f"{type(verdict).__name__}"), status="error")
        return self._feedback(verdict, status="correct" if verdict.passed else "wrong")

    def _feedback(self, v: Verdict, status: str) -> Feedback:
        frac = v.fraction if v.fraction is not None else (1.0 if v.passed else 0.0)
        frac = min(1.0, max(0.0, float(frac)))
        return Feedback(exercise=self.name, passed=bool(v.passed),
                        points=round(self.max_points * frac, 6), max_points=self.max_points,
                        expected=v.expected, got=v.got, hint=v.hint, status=status)

    # -- what a notebook calls ------------------------------------------------------------
    def __call__(self, answer: Any = None, *args: Any, **given: Any) -> Feedback:
        evidence = self.collect(answer, *args, **given)
        line = json.dumps({"exercise": self.name, "evidence": evidence,
                           "efflab_version": _efflab_version(),
                           "time": _dt.datetime.now(_dt.timezone.utc).isoformat()},
                          allow_nan=False)
        try:
            path = answers_path()
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:  # a read-only folder must not hide the feedback
            print(f"(could not log the answer to {answers_path()}: {e})")
        fb = self.judge(json.loads(line)["evidence"])  # judge what the grader will see
        _show(fb)
        fb.__dict__["_shown"] = True  # the cell's own display of the return value is skipped
        if evidence.get("placeholder"):
            # a student version's placeholder ran (nbgrader's NotImplementedError): stop here,
            # as the placeholder of an answer cell does, with its message
            raise NotImplementedError(evidence["placeholder"])
        if not fb.passed and os.environ.get(RAISE_ENV) == "1":
            # for graders that pass a cell that does not raise (nbgrader autograde)
            raise AssertionError(str(fb))
        return fb

    def __repr__(self) -> str:
        return f"<efflab exercise {self.name!r} ({_fmt_points(self.max_points)} points)>"


REGISTRY: dict[str, Exercise] = {}


def exercise(name: str, points: float = 1, *, topic: str = "", answer: tuple[str, ...] = ("answer",),
             measured: tuple[str, ...] = (), function: bool = False,
             measured_factor: float | None = None) -> Callable[[Callable], Exercise]:
    """Decorator registering a collect function as the exercise ``name`` (see module doc).

    What the grader may trust in the evidence (see :mod:`efflab.course.trusted`):

    - ``answer``: the evidence keys that hold the learner's answer;
    - ``measured``: keys whose values (every number below them) are measured on the machine —
      timings, bandwidths, peaks, fits of measured losses. The grader's own run of the
      instructor's notebook must agree with them within a factor;
    - every other key is a given the grader's run must reproduce exactly (sizes, counts,
      configs, seeds);
    - ``measured_factor``: a wider factor for measurements noisier than a step time (queueing
      delays near overload); the grader uses the larger of it and its own;
    - ``function=True``: the answer is a learner-written function, collected as
      ``collect(fn, seed=...) -> {"seed", "outputs"}``; the grader calls it again, on probe
      seeds of its own, in a fresh sandboxed process.
    """

    def register(collect_fn: Callable[..., dict]) -> Exercise:
        if name in REGISTRY:
            raise ValueError(f"exercise name {name!r} is already registered "
                             f"(names must be unique; taken: {sorted(REGISTRY)})")
        ex = Exercise(name=name, max_points=float(points), collect_fn=collect_fn,
                      doc=collect_fn.__doc__ or "", topic=topic or collect_fn.__module__,
                      answer_keys=("outputs",) if function else tuple(answer),
                      measured_keys=tuple(measured), function=bool(function),
                      measured_factor=measured_factor)
        REGISTRY[name] = ex
        return ex

    return register


def load_all() -> dict[str, Exercise]:
    """Import every topic module of this package (each registers its checks when it loads);
    the registry, now whole. ``efflab.check`` loads its modules on first use, so a process
    that asks for one check holds that check's module alone."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name != "core":
            importlib.import_module(f"{__package__}.{module.name}")
    return REGISTRY


def judge(name: str, evidence: Any) -> Feedback:
    """The grader's entry point: re-judge ``evidence`` for the exercise ``name``.

    Never raises: an unknown name or malformed evidence gives a zero Feedback with the reason.
    """
    ex = REGISTRY.get(name)
    if ex is None:  # its topic module may not be loaded yet (efflab.check loads them lazily)
        ex = load_all().get(name)
    if ex is None:
        return Feedback(exercise=str(name), passed=False, points=0.0, max_points=0.0,
                        expected="", got=f"unknown exercise {name!r}",
                        hint=f"known exercises: {', '.join(sorted(REGISTRY))}", status="error")
    return ex.judge(evidence)


def judge_number(got: float, truth: float, *, expected: str, unit: str = "",
                 slips: list[tuple[float, str]] = (), hint: str = "", rel: float = 0.02,
                 abs_: float = 0.0) -> Verdict:
    """The verdict on a derived number: within tolerance of ``truth``, or which slip it matches.

    ``slips``: (the value a known mistake gives, the hint for it), tried in order. The reply
    says which way the answer misses, in a coarse band (:func:`miss_band`), never the value.
    """
    shown = f"{got:,.6g}{' ' + unit if unit else ''}" if math.isfinite(got) else str(got)
    if close(got, truth, rel=rel, abs_=abs_):
        return Verdict(True, expected=expected, got=shown)
    for value, slip_hint in slips:
        if value != truth and close(got, value, rel=rel, abs_=abs_):
            return Verdict(False, expected=expected,
                           got=f"{shown} ({miss_band(got, truth)})", hint=slip_hint)
    return Verdict(False, expected=expected, got=f"{shown} ({miss_band(got, truth)})", hint=hint)


def probe_outputs(fn: Callable, probes: list[dict]) -> list:
    """Call a learner's ``fn(**probe)`` on each probe; keep each output or the error it raised.

    Returns a list with one entry per probe: ``{"out": <jsonable>}`` or ``{"error": "..."}``.
    ``None`` from every probe, or a NotImplementedError (nbgrader's placeholder), means the
    function is still the template: raise Unanswered.
    """
    if not callable(fn):
        raise TypeError(f"expected your function, got {type(fn).__name__}")
    outs = []
    for p in probes:
        try:
            outs.append({"out": to_jsonable(fn(**p))})
        except NotImplementedError as e:  # the student version's placeholder: not answered yet
            raise Unanswered(str(e) or "not answered yet") from e
        except Exception as e:  # the learner's code: keep the reason
            outs.append({"error": f"{type(e).__name__}: {e}"})
    if outs and all(o.get("out", 0) is None for o in outs):
        raise Unanswered()
    return outs


class Unanswered(Exception):
    """Raised by a collect function when the learner's function is still the template;
    ``placeholder`` is the message of a student version's placeholder, if that is what ran."""

    def __init__(self, placeholder: str | None = None):
        super().__init__(placeholder or "not answered yet")
        self.placeholder = placeholder


def probed(evidence: dict, make_probes: Callable[[int], list], default_seed: int) -> tuple[list, list]:
    """(probes, outputs) of a learner-function exercise: the probes rebuilt from the seed the
    evidence was collected with, beside the outputs it holds, one each (else EvidenceError)."""
    probes, outs = make_probes(seed_of(evidence, default_seed)), evidence["outputs"]
    if len(outs) != len(probes):
        raise EvidenceError(f"{len(outs)} outputs for {len(probes)} probes")
    return probes, outs


def first_slip(got: float, slips: list[tuple[float | None, str]], otherwise: str, *,
               want: float | None = None, rel: float = 0.0, abs_: float = 0.0) -> str:
    """The hint for a wrong answer: that of the first known slip ``(value, hint)`` the answer
    ``got`` lands on (within ``rel`` or ``abs_``, see :func:`close`; exactly by default), else
    ``otherwise``. A slip whose value is ``None``, not finite, or ``want`` itself is passed over,
    so a slip list may hold cases that do not apply to the probe at hand."""
    for value, hint in slips:
        if value is None or not math.isfinite(value) or (want is not None and value == want):
            continue
        if close(got, value, rel=rel, abs_=abs_):
            return hint
    return otherwise


def judge_probed_numbers(ev: dict, make_probes: Callable[[int], list], default_seed: int,
                         reference: Callable[..., float], *, expected: str,
                         case: Callable[[int, dict], str], takes: str | Callable[[dict], str],
                         slip_hint: Callable[[float, dict], str], unit: str = "",
                         rel: float = 0.0) -> Verdict:
    """The verdict on a learner function that returns one number per probe: each output must
    equal ``reference(**probe)`` (exactly, or within ``rel``). The first miss is reported with
    its probe (``case(i, probe)``), the way it misses in a coarse band, and ``slip_hint(got,
    probe)``; a raise with ``takes`` (what the function is given). The probes are rebuilt
    from the evidence's seed (:func:`probed`)."""
    probes, outs = probed(ev, make_probes, default_seed)
    for i, (p, o) in enumerate(zip(probes, outs)):
        where = case(i, p)
        if "error" in o:
            return Verdict(False, expected=expected,
                           got=f"{where}: your function raised {o['error']}",
                           hint=takes(p) if callable(takes) else takes)
        got, want = number(o["out"]), reference(**p)
        if (got == want) if rel == 0 else close(got, want, rel=rel):
            continue
        shown = (f"{got:,.0f}" if float(got).is_integer() and abs(got) >= 1000 else f"{got:.6g}") \
            if math.isfinite(got) else str(got)
        return Verdict(False, expected=expected,
                       got=f"{where}: {shown}{' ' + unit if unit else ''} ({miss_band(got, want)})",
                       hint=slip_hint(got, p))
    how = "exact" if rel == 0 else f"within {100 * rel:.3g}%"
    return Verdict(True, expected=expected, got=f"all {len(probes)} {how}")


def seed_of(evidence: dict, default: int) -> int:
    """The probe seed an evidence was collected with (a hidden check may use another one)."""
    seed = evidence.get("seed", default)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise EvidenceError(f"seed={seed!r}: expected an integer in [0, 2^31)")
    return seed
