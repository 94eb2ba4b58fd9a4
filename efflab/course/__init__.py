"""The course tools: student versions, submissions, bulk grading and a class's pooled results.

    efflab assign notebooks/ --out student/          student versions (solutions stripped)
    efflab submit 01_batching.ipynb --student ada    one zip to hand in
    efflab grade submissions/ --out gradebook.csv    run, check and score every submission
    efflab class-results submissions/                one chart: how hardware changes the answer

- :mod:`~efflab.course.cells`: which cell is which (nbgrader's metadata), restoring check cells
- :mod:`~efflab.course.assignment`: student versions with nbgrader's own preprocessors
- :mod:`~efflab.course.submission`: the submission zip, and opening one without trusting it
- :mod:`~efflab.course.sandbox`: running one submission in its own process, folder and limits
- :mod:`~efflab.course.gradebook`: the gradebook (verdicts recomputed in the grader's process)
- :mod:`~efflab.course.class_results`: records pooled across machines into ratios

docs/instructors.md is the guide. nbgrader comes with ``pip install 'efflab[class]'``.
"""

from efflab import _lazy_attributes

# public name -> the module that owns it, loaded on first use (as in ``efflab`` itself), so
# that ``efflab --help`` or one course command does not load nbformat and the sandbox for all
_OWNERS = {
    "assign": "efflab.course.assignment",
    "student_version": "efflab.course.assignment",
    "submit": "efflab.course.submission",
    "open_submission": "efflab.course.submission",
    "grade": "efflab.course.gradebook",
    "Limits": "efflab.course.sandbox",
}

__all__ = list(_OWNERS)
__getattr__, __dir__ = _lazy_attributes("efflab.course", globals(), _OWNERS)
