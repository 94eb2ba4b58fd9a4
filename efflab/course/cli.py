"""The course commands of ``efflab``: assign, submit, grade, class-results.

Registered on the main parser by :func:`add_commands` (``efflab.cli.build_parser``); bad input
raises :class:`~efflab.core.config.ConfigError`, which the main command prints as one line.
"""

from __future__ import annotations

import argparse

# each command imports what it runs when it runs (nbformat, the sandbox, the charts): the
# parser itself stays light


def _mib(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MiB, got {text!r}") from None
    return int(value * 2**20)


def cmd_assign(args) -> int:
    from efflab.course.assignment import assign, exercise_table, exercise_table_markdown

    if args.list:
        print(exercise_table_markdown(exercise_table(args.notebooks)), end="")
        return 0
    written = assign(args.notebooks, args.out)
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_submit(args) -> int:
    from efflab.course.submission import submit

    out = submit(args.notebook, out=args.out, student=args.student, execute=args.execute,
                 results=args.results, answers=args.answers,
                 calibrate_if_missing=not args.no_calibrate)
    print(f"wrote {out}: hand in this one file")
    return 0


def cmd_grade(args) -> int:
    from efflab.course.gradebook import grade
    from efflab.course.sandbox import Limits

    limits = Limits(cell_s=args.cell_timeout, notebook_s=args.notebook_timeout,
                    memory_bytes=args.memory_mib)
    df = grade(args.submissions, out=args.out, source=args.source, limits=limits,
               workers=args.workers, progress=True, trusted_class=args.trusted_class,
               probe_key=args.probe_key, measured_factor=args.measured_factor)
    students = df["student"].nunique() if not df.empty else 0
    print(f"wrote {args.out} ({len(df)} rows, {students} students) and its .html summary")
    return 0


def cmd_class_results(args) -> int:
    from efflab.course.class_results import class_results

    table = class_results(args.submissions, out=args.out, csv=args.csv)
    if table.empty:
        print("no comparable records in these submissions yet")
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {args.out}")
    return 0


def add_commands(sub) -> None:
    """Add the four course commands to the ``efflab`` sub-command parser."""
    p = sub.add_parser("assign", help="write student versions (solutions and hidden checks removed)")
    p.add_argument("notebooks", nargs="?", default="notebooks",
                   help="instructor notebook or folder (default notebooks/)")
    p.add_argument("--out", default="student", help="folder for the student versions")
    p.add_argument("--list", action="store_true",
                   help="print what each lesson grades (a Markdown table) and write nothing")
    p.set_defaults(func=cmd_assign)

    p = sub.add_parser("submit", help="pack a notebook, its records and answers into one zip")
    p.add_argument("notebook")
    p.add_argument("--out", default=None, help="zip to write (default: beside the notebook)")
    p.add_argument("--student", default=None, help="your name or id, as the instructor asked")
    p.add_argument("--execute", action="store_true", help="run the notebook headless first")
    p.add_argument("--results", default=None, help="results store (default $EFFLAB_RESULTS or results/)")
    p.add_argument("--answers", default=None, help="answer log (default $EFFLAB_ANSWERS or "
                                                   "efflab_answers.jsonl beside the notebook)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not calibrate if this machine has no calibration yet")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("grade", help="run and check every submission; write a gradebook")
    p.add_argument("submissions", help="folder: one file or sub-folder per student")
    p.add_argument("--out", default="gradebook.csv")
    p.add_argument("--source", default=None,
                   help="instructor notebook or folder (default: efflab's lessons)")
    p.add_argument("--workers", type=int, default=1, help="submissions graded at once")
    p.add_argument("--cell-timeout", type=float, default=120.0, help="seconds per cell")
    p.add_argument("--notebook-timeout", type=float, default=600.0, help="seconds per notebook")
    p.add_argument("--memory-mib", type=_mib, default=6 * 2**30,
                   help="memory limit, MiB: private memory of each process of a run, and the "
                        "resident memory of all of them together (default 6144)")
    p.add_argument("--trusted-class", action="store_true",
                   help="run submissions as plain processes, without the bubblewrap sandbox "
                        "(only for a class you trust, or to grade where bwrap is missing)")
    p.add_argument("--probe-key", default=None,
                   help="secret file the learner-function probes are drawn from (default: "
                        "grader-probe.key in efflab's cache folder, made on first use); the same "
                        "key draws the same probes, so regrading gives the same gradebook")
    p.add_argument("--measured-factor", type=float, default=3.0,
                   help="how far a submission's measured values (timings, bandwidths, fits) may "
                        "be from the grader's own run of the lesson (default 3, i.e. within 3x)")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("class-results", help="pool a class's records into one chart of ratios")
    p.add_argument("submissions")
    p.add_argument("--out", default="class_results.html", help=".html, .svg, .png or .json")
    p.add_argument("--csv", default=None, help="the table (default: beside the chart)")
    p.set_defaults(func=cmd_class_results)


__all__ = ["add_commands"]
