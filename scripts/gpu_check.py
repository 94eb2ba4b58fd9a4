"""``make gpu-check``: one command that proves efflab's GPU path on a CUDA machine.

Parts, each in its own process under its own timeout, the run going on past a failing part:

1. ``calibrate``: the GPU's measured matmul peaks and bandwidths (efflab.calibrate, cached).
2. ``gpu_tests``: the tests marked ``gpu`` (``pytest -m gpu``), and beside them ``checkpoint``:
   the GPU preset's first-use checkpoint (``efflab.prepare_checkpoint("auto")``, cached).
3. ``bench:<part>``: the GPU benchmarks of ``benchmarks/gpu_bench.py`` (FlashAttention vs SDPA,
   bf16 vs fp32 with MFU, int8/int4 decode, compile vs eager, a real OOM).
4. ``lesson:<name>``: every lesson under papermill with ``SMOKE = True`` and
   ``PRESET = "auto"``, a few at a time.

Benchmarks run before the lessons so that no lesson shares the GPU with a timing. The whole run
keeps to ``--budget-s`` (default 540 s = 9 minutes): a part that would start past it is
recorded as ``skipped``, and each part's timeout is cut to what is left. Writes
``benchmarks/results/gpu/<device>.json`` and ``<device>.html`` (one page).

``--parts`` runs a subset (for example ``--parts checkpoint,lessons`` when a short GPU loan
should go to the lessons); a partial run writes ``<device>-<parts>.json`` and ``.html`` so the
full run's report stays.

On a machine without CUDA it says so and exits 0, running nothing.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
BENCH_PARTS = {"flash": 90, "precision": 60, "quant_decode": 60, "compile": 150, "oom": 45}
PARTS = ("calibrate", "gpu_tests", "checkpoint", "bench", "lessons")
NO_CUDA = ("make gpu-check needs a CUDA GPU, and torch sees none on this machine; nothing was "
           "run. Run it on a machine with an NVIDIA GPU.")


def device_slug(name: str) -> str:
    """A file name for a GPU: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def run_part(name: str, cmd: list[str], timeout_s: float, env: dict | None = None) -> dict:
    """Run ``cmd`` in its own process group; kill the whole group at ``timeout_s``.
    Returns ``{"part", "status": ok|failed|timeout, "rc", "seconds", "tail"}``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout_s, 1))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, status = proc.wait(), "timeout"
        log.seek(0)
        tail = log.read()[-3000:]
    return {"part": name, "status": status, "rc": rc, "timeout_s": round(timeout_s, 1),
            "seconds": round(time.perf_counter() - t0, 1), "tail": tail}


class Budget:
    """What is left of the whole run's time; each part's timeout is cut to it."""

    def __init__(self, total_s: float):
        self.end = time.perf_counter() + total_s

    def left(self) -> float:
        return self.end - time.perf_counter()

    def cut(self, want_s: float) -> float | None:
        """The timeout a part of ``want_s`` gets, or None when under 5 s are left."""
        left = self.left()
        return None if left < 5 else min(want_s, left)


def _skipped(name: str) -> dict:
    return {"part": name, "status": "skipped", "rc": None, "seconds": 0.0,
            "tail": "the run's time budget was spent before this part could start"}


CHECKPOINT_CODE = """
import efflab
rec = efflab.prepare_checkpoint("auto", progress=False)
print(rec.get("path"), rec.get("steps"), rec.get("final"))
"""

LESSON_CODE = """
import sys
from efflab.course.report import run_notebook
run_notebook(sys.argv[1], sys.argv[2], parameters={"SMOKE": True, "PRESET": "auto"},
             timeout_s=int(float(sys.argv[3])), results_dir=sys.argv[4])
"""


def run_all(budget_s: float, lesson_timeout_s: float, workers: int, out_dir: Path,
            parts_wanted: tuple[str, ...] = PARTS) -> dict:
    """Run the ``parts_wanted`` (of :data:`PARTS`, in that order) under one budget."""
    unknown = sorted(set(parts_wanted) - set(PARTS))
    if unknown or not parts_wanted:
        raise ValueError(f"parts={','.join(parts_wanted)!r}: each must be one of {', '.join(PARTS)}")
    py = sys.executable
    budget = Budget(budget_s)
    parts: list[dict] = []

    def step(name, cmd, want_s, env=None):
        t = budget.cut(want_s)
        part = _skipped(name) if t is None else run_part(name, cmd, t, env)
        print(f"[gpu-check] {name}: {part['status']} ({part['seconds']:.0f} s)", flush=True)
        parts.append(part)
        return part

    if "calibrate" in parts_wanted:
        step("calibrate", [py, "-c", "import efflab, json; c = efflab.calibrate('cuda'); "
                                     "print(json.dumps(c['matmul']))"], 90)
    # the GPU preset's first-use checkpoint (what lesson 05 reads), trained once and cached, as a
    # learner's first run would; alongside the gpu tests, which check correctness, not speed
    ckpt_t = budget.cut(300) if "checkpoint" in parts_wanted else None
    with ThreadPoolExecutor(max_workers=1) as side:
        ckpt = side.submit(run_part, "checkpoint", [py, "-c", CHECKPOINT_CODE], ckpt_t) \
            if ckpt_t else None
        if "gpu_tests" in parts_wanted:
            step("gpu_tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               "tests"], 120)
        part = ckpt.result() if ckpt else _skipped("checkpoint")
    if "checkpoint" in parts_wanted:
        print(f"[gpu-check] checkpoint: {part['status']} ({part['seconds']:.0f} s)", flush=True)
        parts.append(part)
    bench = {}
    for name, want in BENCH_PARTS.items() if "bench" in parts_wanted else ():
        path = out_dir / f"bench-{name}.json"
        part = step(f"bench:{name}", [py, str(ROOT / "benchmarks" / "gpu_bench.py"), name,
                                      "--out", str(path)], want)
        if path.exists():
            try:
                bench[name] = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                part["status"], part["tail"] = "failed", f"unreadable result: {e}"
    lessons = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) \
        if "lessons" in parts_wanted else []
    store = out_dir / "store"

    def lesson(nb: Path) -> dict:
        name = f"lesson:{nb.stem}"
        t = budget.cut(lesson_timeout_s)
        if t is None:
            return _skipped(name)
        return run_part(name, [py, "-c", LESSON_CODE, str(nb), str(out_dir / "lessons"),
                               str(t), str(store / nb.stem)], t + 10)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(lesson, lessons):
            print(f"[gpu-check] {part['part']}: {part['status']} ({part['seconds']:.0f} s)",
                  flush=True)
            parts.append(part)
    return {"parts": parts, "benchmarks": bench}


def summary(result: dict) -> dict:
    counts: dict[str, int] = {}
    for p in result["parts"]:
        counts[p["status"]] = counts.get(p["status"], 0) + 1
    targets = [t for b in result["benchmarks"].values() for t in b.get("targets", [])]
    return {"parts": counts, "targets_met": sum(t["met"] is True for t in targets),
            "targets_missed": sum(t["met"] is False for t in targets),
            "targets_unmeasured": sum(t["met"] is None for t in targets)}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def render_html(result: dict) -> str:
    """One page: what ran and how it ended, the targets, and each benchmark's rows."""
    e = html.escape
    out = [f"<!doctype html><meta charset='utf-8'><title>efflab gpu-check: {e(result['device'])}"
           "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
           "table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;"
           "padding:2px 8px;font-size:13px}.ok{color:#070}.bad{color:#b00}</style>",
           f"<h1>efflab gpu-check on {e(result['device'])}</h1>",
           f"<p>{e(result['finished_at'])}, {result['seconds']:.0f} s in all (budget "
           f"{result['budget_s']:.0f} s); torch {e(str(result.get('torch')))}, efflab "
           f"{e(str(result.get('efflab')))}. Every number below was measured in this run.</p>",
           "<h2>Targets</h2><table><tr><th>benchmark</th><th>target</th><th>value</th>"
           "<th>threshold</th><th>met</th></tr>"]
    for name, b in result["benchmarks"].items():
        for t in b.get("targets", []):
            cls = "ok" if t["met"] else "bad"
            out.append(f"<tr><td>{e(name)}</td><td>{e(t['target'])}</td><td>{_fmt(t['value'])}"
                       f"</td><td>{_fmt(t['threshold'])}</td><td class='{cls}'>"
                       f"{_fmt(t['met'])}</td></tr>")
    out.append("</table><h2>Parts</h2><table><tr><th>part</th><th>status</th><th>seconds</th>"
               "<th>last output</th></tr>")
    for p in result["parts"]:
        cls = "ok" if p["status"] == "ok" else "bad"
        tail = "" if p["status"] == "ok" else p["tail"][-600:]
        out.append(f"<tr><td>{e(p['part'])}</td><td class='{cls}'>{e(p['status'])}</td>"
                   f"<td>{_fmt(p['seconds'])}</td><td><pre>{e(tail)}</pre></td></tr>")
    out.append("</table>")
    for name, b in result["benchmarks"].items():
        rows = b.get("rows", [])
        if not rows:
            continue
        cols = list(dict.fromkeys(k for r in rows for k in r))
        out.append(f"<h2>{e(name)}</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols)
                   + "</tr>")
        for r in rows:
            out.append("<tr>" + "".join(f"<td>{e(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>")
        out.append("</table>")
    return "\n".join(out)


def write_report(result: dict, results_dir: Path = RESULTS) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    slug = device_slug(result["device"])
    if tuple(result.get("parts_wanted", PARTS)) != PARTS:
        slug += "-" + "-".join(result["parts_wanted"]).replace("_", "-")
    js, page = results_dir / f"{slug}.json", results_dir / f"{slug}.html"
    js.write_text(json.dumps(result, indent=1, default=str))
    page.write_text(render_html(result))
    return js, page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="efflab's GPU check (make gpu-check)")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--lesson-timeout-s", type=float, default=150.0)
    ap.add_argument("--workers", type=int, default=4, help="lessons run side by side")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"a comma-separated subset of {','.join(PARTS)} (default: all)")
    args = ap.parse_args(argv)
    wanted = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if not wanted or set(wanted) - set(PARTS):
        ap.error(f"--parts {args.parts!r}: each must be one of {', '.join(PARTS)}")
    wanted = tuple(p for p in PARTS if p in wanted)
    import torch
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    from efflab.measurement.hardware import efflab_commit
    device = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    print(f"[gpu-check] {device}: budget {args.budget_s:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="efflab-gpu-check-") as tmp:
        result = run_all(args.budget_s, args.lesson_timeout_s, args.workers, Path(tmp), wanted)
    result.update(device=device, parts_wanted=list(wanted), budget_s=args.budget_s, seconds=time.perf_counter() - t0,
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), torch=torch.__version__,
                  efflab=efflab_commit())
    result["summary"] = summary(result)
    js, page = write_report(result, args.results)
    print(f"[gpu-check] {json.dumps(result['summary'])}\n[gpu-check] wrote {js} and {page}")
    return 0 if all(p["status"] == "ok" for p in result["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
