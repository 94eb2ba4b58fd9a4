"""efflab.check: the exercise machinery and every check (right answer passes, slips rejected)."""

import json
import math

import pandas as pd
import pytest
import torch

import efflab
from efflab import check
from efflab.check import core


@pytest.fixture(autouse=True)
def answer_log(tmp_path, monkeypatch):
    path = tmp_path / "answers.jsonl"
    monkeypatch.setenv(core.ANSWERS_ENV, str(path))
    return path


def _regrade(path):
    """What a grader does: re-judge every logged line in this process."""
    return [check.judge(e["exercise"], e["evidence"]) for e in check.read_answers(path)]


# -- the machinery ------------------------------------------------------------------------

def test_import_efflab_exposes_the_checks():
    assert efflab.check.throughput is check.REGISTRY["throughput"]
    assert set(check.__all__) >= set(check.REGISTRY)  # every registered check is re-exported
    for name in check.REGISTRY:
        assert getattr(check, name) is check.REGISTRY[name]


def test_feedback_is_truthy_only_when_passed_and_renders():
    fb = core.Feedback("x", True, 1.0, 1.0, "e", "g", "h", status="correct")
    bad = core.Feedback("x", False, 0.0, 1.0, "the thing", "other <b>", "look again")
    assert fb and not bad
    assert "Hint: look again" in str(bad) and "Hint" not in str(fb)
    assert "&lt;b&gt;" in bad._repr_html_()  # escaped


def test_unanswered_is_feedback_not_a_traceback(answer_log, capsys):
    for placeholder in (None, ...):
        fb = check.throughput(placeholder, df=_sweep(), batch_size=4)
        assert not fb and fb.status == "unanswered" and fb.points == 0
    assert core.NO_ANSWER in capsys.readouterr().out
    lines = check.read_answers(answer_log)
    assert [e["evidence"] for e in lines] == [{"unanswered": True}] * 2
    assert {"exercise", "evidence", "efflab_version", "time"} <= set(lines[0])


def test_grader_judge_never_raises():
    assert check.judge("no_such_exercise", {}).status == "error"
    for bad in (None, [], {"answer": "x"}, {"answer": 1.0}, {"trials": "nope"}, {"collect_error": "E"}):
        for name in check.REGISTRY:
            fb = check.judge(name, bad)
            assert not fb and fb.points == 0, (name, bad)


def test_a_crashing_collect_is_kept_as_the_reason(answer_log):
    fb = check.throughput(1.0, df=_sweep(), batch_size=3)  # no batch 3 measured
    assert fb.status == "error" and "batch_size=3" in fb.got
    assert "collect_error" in check.read_answers(answer_log)[0]["evidence"]


def test_names_are_unique():
    with pytest.raises(ValueError, match="throughput"):
        core.exercise("throughput")(lambda a: {})


def test_evidence_is_json_and_the_regrade_agrees(answer_log):
    check.throughput(4 * 128 / 0.012, df=_sweep(), batch_size=4)
    check.throughput(4 * 128 / 12.0, df=_sweep(), batch_size=4)
    check.online_softmax(_good_update)
    check.online_softmax(_no_max_update)
    json.loads(answer_log.read_text().splitlines()[-1])  # strict JSON lines
    assert [bool(f) for f in _regrade(answer_log)] == [True, False, True, False]


def test_points_and_partial_credit():
    ex = core.Exercise("tmp", 4.0, collect_fn=lambda a: {"a": a},
                       judge_fn=lambda ev: core.Verdict(False, fraction=0.5))
    assert ex.judge({"a": 1}).points == 2.0
    assert ex.judge({"unanswered": True}).points == 0


def test_to_jsonable_handles_tensors_and_nan():
    ev = core.to_jsonable({"t": torch.tensor([1.0, float("nan")]), "x": float("inf")})
    assert ev == {"t": [1.0, "nan"], "x": "inf"}
    assert math.isnan(core.number("nan"))
    with pytest.raises(core.EvidenceError):
        core.number("12")


# -- 01 batching: throughput ---------------------------------------------------------------

def _sweep():
    rows = [{"knobs.batch_size": b, "status": "ok", "latency_ms.median": ms,
             "throughput.tokens_per_step": b * 128} for b, ms in [(1, 10.0), (4, 12.0)]]
    rows.append({"knobs.batch_size": 8, "status": "refused"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("answer, hint", [
    (4 * 128 / 12.0, "milliseconds"),          # forgot ms -> s
    (4 / 0.012, "tokens, not sequences"),       # forgot T
    (128 / 0.012, "all B sequences"),           # forgot B
    (0.012 / (4 * 128), "seconds per token"),   # inverted
    (12345.0, "B·T"),                           # just wrong
])
def test_throughput_rejects_slips_with_the_right_hint(answer, hint):
    fb = check.throughput(answer, df=_sweep(), batch_size=4)
    assert not fb and fb.status == "wrong" and hint in fb.hint
    assert f"{4 * 128 / 0.012:,.0f}" not in str(fb)  # the answer is never printed


def test_throughput_accepts_the_truth_within_two_percent():
    truth = 4 * 128 / 0.012
    assert check.throughput(truth * 1.015, df=_sweep(), batch_size=4)
    assert not check.throughput(truth * 1.03, df=_sweep(), batch_size=4)
    assert check.throughput(1 * 128 / 0.010, df=_sweep(), batch_size=1)


# -- 04 attention: online softmax ----------------------------------------------------------

def _good_update(m, l, acc, scores, v):
    m_new = torch.maximum(m, scores.max())
    scale = torch.exp(m - m_new)
    p = torch.exp(scores - m_new)  # (n,)
    return m_new, l * scale + p.sum(), acc * scale + p @ v


def _no_max_update(m, l, acc, scores, v):  # plain exp: fine for small scores only
    p = torch.exp(scores)
    return torch.zeros(()), l + p.sum(), acc + p @ v


def _no_rescale_update(m, l, acc, scores, v):
    m_new = torch.maximum(m, scores.max())
    p = torch.exp(scores - m_new)
    return m_new, l + p.sum(), acc + p @ v


def _block_max_update(m, l, acc, scores, v):  # m = this block's max, not the running max
    m_new = scores.max()
    scale = torch.exp(m - m_new)
    p = torch.exp(scores - m_new)
    return m_new, l * scale + p.sum(), acc * scale + p @ v


def _rescale_l_only_update(m, l, acc, scores, v):
    m_new = torch.maximum(m, scores.max())
    scale = torch.exp(m - m_new)
    p = torch.exp(scores - m_new)
    return m_new, l * scale + p.sum(), acc + p @ v


def test_online_softmax_accepts_the_reference_and_the_kernel_math():
    fb = check.online_softmax(_good_update)
    assert fb and fb.points == fb.max_points == 2


@pytest.mark.parametrize("update, hint", [
    (_no_max_update, "subtract the running maximum"),
    (_no_rescale_update, "rescaled by exp(m_old - m_new)"),
    (_rescale_l_only_update, "rescaled by exp(m_old - m_new)"),
    (_block_max_update, "running maximum"),
    (lambda m, l, acc, s, v: (m, l), "raised"),
])
def test_online_softmax_rejects_plausible_mistakes(update, hint):
    fb = check.online_softmax(update)
    assert not fb and hint in fb.hint + fb.got, str(fb)


def test_online_softmax_scores_overflow_without_the_maximum():
    from efflab.check.attention import probes
    assert max(abs(x) for s, _ in probes() for x in s) > 710  # exp(710) = inf in float64


def test_online_softmax_unanswered_template():
    def template(m, l, acc, scores, v):
        return None
    assert check.online_softmax(template).status == "unanswered"
