"""Lesson 02's FP8 exercise: the E4M3 rounding of a value, probed on unseen inputs."""

import math
import random

import pytest
import torch

from efflab import check
from efflab.check import core
from efflab.check.precision import E4M3, E5M2, _f32, e4m3, e4m3_probes, round_to_format


@pytest.fixture(autouse=True)
def answer_log(tmp_path, monkeypatch):
    path = tmp_path / "answers.jsonl"
    monkeypatch.setenv(core.ANSWERS_ENV, str(path))
    return path


def _hint_of(fb):
    assert not fb and fb.status == "wrong", str(fb)
    return fb.hint


def _torch_e4m3(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).to(torch.float8_e4m3fn).float().item()


def _learner_frexp(x: float) -> float:
    """An independent solution, as a learner would write it (the notebook's)."""
    if x == 0:
        return x
    _, e = math.frexp(x)
    step = 2.0 ** (max(e - 1, -6) - 3)
    return max(-448.0, min(448.0, round(x / step) * step))


def test_the_reference_is_torchs_cast_on_probes_and_on_random_values():
    rng = random.Random(0)
    xs = e4m3_probes() + e4m3_probes(20) + [
        _f32(rng.uniform(-1, 1) * 2.0 ** rng.randint(-12, 8)) for _ in range(5000)]
    xs = [x for x in xs if abs(x) <= 448]
    assert [e4m3(x) for x in xs] == [_torch_e4m3(x) for x in xs]
    t = torch.tensor(xs, dtype=torch.float32).to(torch.float8_e5m2).float().tolist()
    assert [round_to_format(x, **E5M2) for x in xs] == t


def test_probes_hold_ties_subnormals_and_large_values():
    xs = e4m3_probes()
    assert all(abs(x) <= 448 for x in xs)
    assert sum(0 < abs(x) < 2.0 ** -6 for x in xs) >= 5  # subnormals
    ties = [x for x in xs if round_to_format(x, **E4M3, mode="half_up") != e4m3(x)]
    assert len(ties) >= 3  # exact ties, where half-up and half-even part
    assert e4m3_probes(5) != xs


def test_right_answers_pass_on_the_default_and_a_hidden_seed(answer_log):
    assert check.fp8_e4m3_round(_torch_e4m3)
    assert check.fp8_e4m3_round(_learner_frexp)
    assert check.fp8_e4m3_round(_learner_frexp, seed=20)
    regraded = [check.judge(e["exercise"], e["evidence"]) for e in check.read_answers(answer_log)]
    assert len(regraded) == 3 and all(regraded)


@pytest.mark.parametrize("wrong, hint", [
    (lambda x: round_to_format(x, **E4M3, mode="truncate"), "chops"),
    (lambda x: round_to_format(x, **E4M3, mode="half_up"), "half to even"),
    (lambda x: round_to_format(x, **E4M3, subnormals=False), "subnormals"),
    (lambda x: torch.tensor(x).to(torch.float8_e5m2).float().item(), "E5M2"),
    (lambda x: round_to_format(x, 4, -6, 480.0), "3 mantissa bits, not 4"),
    (lambda x: round_to_format(x, 3, -7, 240.0), "bias 7"),  # off by one in the exponent bias
    (lambda x: torch.tensor(x).to(torch.bfloat16).item(), "E4M3"),
    (lambda x: x, "unchanged"),
], ids=["truncate", "half_up", "flush", "e5m2", "4 bits", "bias 8", "bf16", "identity"])
def test_plausible_wrong_roundings_get_their_hint(wrong, hint):
    fb = check.fp8_e4m3_round(wrong)
    assert hint in _hint_of(fb)


def test_feedback_does_not_hand_over_the_values():
    xs = e4m3_probes()
    fb = check.fp8_e4m3_round(lambda x: round_to_format(x, **E4M3, mode="truncate"))
    shown = f"{fb.expected} {fb.got} {fb.hint}"
    wrong = {round_to_format(x, **E4M3, mode="truncate") for x in xs}
    leaked = [e4m3(x) for x in xs if e4m3(x) not in wrong and repr(e4m3(x)) in shown]
    assert not leaked


def test_a_raising_function_and_a_foreign_seed_are_judged_not_crashed():
    def boom(x):
        raise ValueError("nope")

    fb = check.fp8_e4m3_round(boom)
    assert not fb and "raised" in fb.got
    ev = check.REGISTRY["fp8_e4m3_round"].collect(_learner_frexp, seed=1234)
    assert ev["seed"] == 1234 and check.judge("fp8_e4m3_round", ev)
    assert not check.judge("fp8_e4m3_round", {**ev, "seed": 99})
    assert check.judge("fp8_e4m3_round", {**ev, "seed": "x"}).status == "error"
