"""Exercises that check themselves: ``efflab.check.<name>(answer, **given)``.

Each lesson's checks live in a topic module (``batching``, ``attention``, ...); this package
re-exports every one of them, plus the machinery from :mod:`efflab.check.core`. See that
module's docstring for how an exercise is defined, logged and judged.
"""

from efflab.check.core import (
    REGISTRY,
    EvidenceError,
    Exercise,
    Feedback,
    Verdict,
    answers_path,
    exercise,
    judge,
    latest_answers,
    read_answers,
)
from efflab.check.attention import online_softmax
from efflab.check.batching import throughput

__all__ = ["REGISTRY", "EvidenceError", "Exercise", "Feedback", "Verdict", "answers_path",
           "exercise", "judge", "latest_answers", "read_answers",
           # the checks, one per exercise
           "online_softmax", "throughput"]
