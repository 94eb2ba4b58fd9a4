"""A class of lesson-01 submissions graded by ``efflab grade`` and by ``nbgrader autograde``.

The same N submissions (default 30: lesson 01's instructor version, as a learner who solved it
hands it in, ``SMOKE = True``) are graded twice in one run, one grader after the other:

- ``efflab grade --workers W`` (bubblewrap sandboxes, the reference run of the lesson and the
  probe runs included);
- ``nbgrader autograde`` in a throw-away course folder (``generate_assignment`` first, not
  timed), which runs each notebook in turn, unsandboxed.

Writes ``benchmarks/results/grading_vs_nbgrader.json``: wall seconds and the peak resident
memory of the grading process itself (its kernels and sandboxes not counted; sampled every
0.2 s), both graders' total points, the load average before and after each, and the machine.
Goal (efflab issue 18): efflab's wall time <= 0.6x nbgrader's.

    python benchmarks/grading_vs_nbgrader.py [--submissions 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil

from efflab.course import cells as C
from efflab.course.report import NOTEBOOK_DIR
from efflab.measurement.hardware import environment, fingerprint, load_average

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LESSON = "01_batching"


def _timed(command: list[str], cwd: Path) -> dict:
    """Run ``command``; its wall seconds and the peak RSS of that one process."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    load = load_average()
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    me, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, me.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    tail = proc.stdout.read()[-2000:]
    return {"wall_s": round(wall, 1), "peak_grader_rss_mib": round(peak / 2**20, 1),
            "returncode": proc.returncode, "loadavg_before": load,
            "loadavg_after": load_average(), "output_tail": tail}


def _phases(log: dict) -> dict:
    """Where efflab's time went, from its grading log: each submission's sandboxed run and its
    probe run (median, quartiles, count), so a ratio can be read against the work behind it."""
    import numpy as np

    def spread(values):
        v = np.asarray([x for x in values if isinstance(x, (int, float))], dtype=float)
        if not v.size:
            return {"n": 0}
        return {"median": round(float(np.median(v)), 1), "p25": round(float(np.percentile(v, 25)), 1),
                "p75": round(float(np.percentile(v, 75)), 1), "n": int(v.size)}

    subs = log.get("submissions", [])
    return {"submission_run": spread(s.get("seconds") for s in subs),
            "probe_run": spread((s.get("probes") or {}).get("seconds") for s in subs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--submissions", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    source = NOTEBOOK_DIR / f"{LESSON}.ipynb"
    solved = C.set_parameters(nbformat.read(str(source), as_version=4), SMOKE=True)
    names = [f"student{i:02d}" for i in range(args.submissions)]
    with tempfile.TemporaryDirectory(prefix="efflab-bench-vs-nbgrader-") as tmp:
        tmp = Path(tmp)
        subs = tmp / "submissions"
        subs.mkdir()
        for name in names:
            nbformat.write(solved, str(subs / f"{name}.ipynb"))
        ours = _timed([str(BIN / "efflab"), "grade", str(subs), "--source", str(source),
                       "--out", str(tmp / "out" / "gradebook.csv"),
                       "--workers", str(args.workers)], tmp)
        import pandas as pd

        if ours["returncode"] != 0:
            sys.exit(f"efflab grade failed (exit {ours['returncode']}), nothing to compare; "
                     f"its output:\n{ours['output_tail']}")
        book = pd.read_csv(tmp / "out" / "gradebook.csv")
        ours["points"] = float(book["points"].sum())
        ours["max_points"] = float(book["max_points"].sum())
        ours["statuses"] = book["status"].value_counts().to_dict()
        ours["feedback_not_correct"] = sorted(set(book.loc[book["status"] != "correct",
                                                            "feedback"]))[:5]
        log = json.loads((tmp / "out" / "gradebook.log.json").read_text())
        ours["phases_s"] = _phases(log)

        course = tmp / "course"
        (course / "source" / "ps").mkdir(parents=True)
        shutil.copy(source, course / "source" / "ps" / source.name)
        (course / "nbgrader_config.py").write_text(
            'c = get_config()\nc.CourseDirectory.course_id = "bench"\n'
            f"c.CourseDirectory.root = {str(course)!r}\nc.ExecutePreprocessor.timeout = 600\n")
        subprocess.run([str(BIN / "nbgrader"), "generate_assignment", "ps", "--create", "--force"],
                       cwd=course, check=True, capture_output=True,
                       env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
        for name in names:
            target = course / "submitted" / name / "ps"
            target.mkdir(parents=True)
            nbformat.write(solved, str(target / source.name))
        theirs = _timed([str(BIN / "nbgrader"), "autograde", "ps", "--create", "--force"], course)
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            scores = [gb.find_submission("ps", n).score for n in names]
            theirs["points"] = float(sum(scores))
    ratio = ours["wall_s"] / theirs["wall_s"] if theirs["wall_s"] else None
    payload = {
        "benchmark": "grading_vs_nbgrader", "fingerprint": fingerprint(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "env": environment(),
        "lesson": LESSON, "submissions": args.submissions, "workers": args.workers,
        "target": "efflab grade wall time <= 0.6x nbgrader autograde's on the same submissions",
        "efflab": ours, "nbgrader": theirs,
        "wall_ratio": round(ratio, 3) if ratio else None,
        "met": bool(ratio is not None and ratio <= 0.6),
        "note": ("one run of each (n=1): wall times on a shared host follow its load, see "
                 "loadavg; efflab also runs the lesson once more as its reference and one probe "
                 "sandbox per submission; nbgrader runs unsandboxed, one notebook at a time"),
    }
    out = HERE / "results" / "grading_vs_nbgrader.json"
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"efflab {ours['wall_s']} s, nbgrader {theirs['wall_s']} s, ratio {payload['wall_ratio']}"
          f" -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
