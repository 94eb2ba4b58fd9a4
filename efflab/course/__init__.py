"""The course tools: student versions, submissions, bulk grading and a class's pooled results.

    efflab assign notebooks/ --out student/          student versions (solutions stripped)
    efflab submit 01_batching.ipynb --student ada    one zip to hand in
    efflab grade submissions/ --out gradebook.csv    run, check and score every submission
    efflab class-results submissions/                one chart: how hardware changes the answer

- :mod:`~efflab.course.cells`: which cell is which (nbgrader's metadata), restoring check cells
- :mod:`~efflab.course.assign`: student versions with nbgrader's own preprocessors
- :mod:`~efflab.course.submit`: the submission zip, and opening one without trusting it
- :mod:`~efflab.course.sandbox`: running one submission in its own process, folder and limits
- :mod:`~efflab.course.grade`: the gradebook (verdicts recomputed in the grader's process)
- :mod:`~efflab.course.class_results`: records pooled across machines into ratios

docs/instructors.md is the guide. nbgrader comes with ``pip install 'efflab[class]'``.
"""

from efflab.course.assignment import assign, student_version
from efflab.course.gradebook import grade
from efflab.course.sandbox import Limits
from efflab.course.submission import open_submission, submit

__all__ = ["assign", "student_version", "submit", "open_submission", "grade", "Limits"]
