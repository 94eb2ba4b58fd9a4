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


def _hint_of(fb):
    assert not fb and fb.status == "wrong", str(fb)
    return fb.hint


# -- 00 tour: MFU and bits per byte --------------------------------------------------------

def _record(precision="bf16"):
    return {"flops": {"per_step": 3e9, "peak_per_s": 400e9, "estimate_6n": 2.4e9},
            "latency_ms": {"median": 25.0}, "knobs": {"precision": precision, "batch_size": 4},
            "workload": "train", "throughput": {"tokens_per_s": 512 / 0.025}}


CAL = {"matmul": {"float32": {"flops_per_s": 100e9}}, "bandwidth_bytes_per_s": 10e9,
       "read_bandwidth_bytes_per_s": 16e9}


def test_mfu_reads_the_peak_of_the_runs_own_format():
    truth = 3e9 / 0.025 / 400e9  # 0.3
    assert check.mfu(truth, record=_record(), calibration=CAL)
    for wrong, hint in [(truth * 100, "percentage"), (3e9 / 25 / 400e9, "milliseconds"),
                        (2.4e9 / 0.025 / 400e9, "6·N"), (3e9 / 0.025 / 100e9, "own number format"),
                        (0.9, "achieved")]:
        assert hint in _hint_of(check.mfu(wrong, record=_record(), calibration=CAL))


def test_bits_per_byte_from_nats():
    assert check.bits_per_byte(1.129 / math.log(2), val_loss=1.129)
    for wrong, hint in [(1.129, "nats"), (1.129 * math.log(2), "divide by ln 2"),
                        (1.129 / math.log(10), "base 10")]:
        assert hint in _hint_of(check.bits_per_byte(wrong, val_loss=1.129))


# -- 01 batching: saturation --------------------------------------------------------------

def _sat_sweep():
    rows = [{"knobs.batch_size": b, "status": "ok", "throughput.tokens_per_s": t}
            for b, t in [(1, 100.0), (2, 180.0), (4, 300.0), (8, 330.0), (16, 335.0), (32, 320.0)]]
    return pd.DataFrame(rows + [{"knobs.batch_size": 64, "status": "refused"}])


def test_saturation_is_the_first_batch_within_ninety_percent():
    assert check.saturation(8, df=_sat_sweep())  # 0.9 * 335 = 301.5: batch 4 (300) falls short
    assert "highest throughput" in _hint_of(check.saturation(16, df=_sat_sweep()))
    assert "still below" in _hint_of(check.saturation(4, df=_sat_sweep()))
    assert "smaller measured batch" in _hint_of(check.saturation(32, df=_sat_sweep()))
    assert "measured" in _hint_of(check.saturation(6, df=_sat_sweep()))


# -- 02 precision --------------------------------------------------------------------------

RIGHT_BYTES = {"fp32": {"parameters": 4, "gradients": 4, "optimizer": 8},
               "bf16": {"parameters": 4, "gradients": 4, "optimizer": 8},
               "fp16": {"parameters": 4, "gradients": 4, "optimizer": 8},
               "bf16-pure": {"parameters": 2, "gradients": 2, "optimizer": 4}}


def _with(precision, **cats):
    ans = {p: dict(c) for p, c in RIGHT_BYTES.items()}
    ans[precision].update(cats)
    return ans


def test_bytes_per_param_by_category():
    fb = check.bytes_per_param(RIGHT_BYTES)
    assert fb and fb.points == 2
    assert "two moments" in _hint_of(check.bytes_per_param(_with("fp32", optimizer=4)))
    assert "keeps the weights" in _hint_of(check.bytes_per_param(
        _with("bf16", parameters=2, gradients=2, optimizer=4)))
    assert "bits" in _hint_of(check.bytes_per_param(_with("fp32", parameters=32)))
    assert "16 bits" in _hint_of(check.bytes_per_param(_with("bf16-pure", optimizer=8)))
    missing = check.bytes_per_param({"fp32": RIGHT_BYTES["fp32"]})
    assert not missing and "bf16-pure" in missing.got


def _bf16_frexp(x):
    if x == 0:
        return 0.0
    _, e = math.frexp(x)
    step = 2.0 ** (e - 8)
    return round(x / step) * step


def test_bf16_round_reference_matches_torch_and_wrong_roundings_get_their_hint():
    from efflab.check.precision import _round_bits, bf16, bf16_probes
    xs = bf16_probes()
    assert [bf16(x) for x in xs] == [torch.tensor(x).to(torch.bfloat16).item() for x in xs]
    assert check.bf16_round(lambda x: torch.tensor(x).to(torch.bfloat16).item())
    assert check.bf16_round(_bf16_frexp)
    assert "chops" in _hint_of(check.bf16_round(lambda x: _round_bits(x, 7, "truncate")))
    assert "even" in _hint_of(check.bf16_round(lambda x: _round_bits(x, 7, "half_up")))
    assert "7 mantissa bits" in _hint_of(check.bf16_round(lambda x: _round_bits(x, 8)))
    assert "fp16" in _hint_of(check.bf16_round(lambda x: torch.tensor(x).half().item()))


# -- 03 checkpointing ----------------------------------------------------------------------

def _kept(B, T, C, n_layer, mode, bytes_per_value=4):
    per = {"none": 17, "blocks": 1, "selective": 9}[mode]
    return per * B * T * C * n_layer * bytes_per_value


def test_kept_activations_formula():
    assert check.kept_activations(_kept)
    assert "bytes per value" in _hint_of(check.kept_activations(
        lambda B, T, C, n_layer, mode, bytes_per_value: _kept(B, T, C, n_layer, mode, 1)))
    assert "only its input" in _hint_of(check.kept_activations(
        lambda B, T, C, n_layer, mode, bytes_per_value: _kept(
            B, T, C, n_layer, "none" if mode == "blocks" else mode, bytes_per_value)))
    assert "q, k and v" in _hint_of(check.kept_activations(  # forgot the q, k, v count
        lambda B, T, C, n_layer, mode, bytes_per_value:
        (15 if mode == "none" else {"blocks": 1, "selective": 9}[mode]) * B * T * C * n_layer
        * bytes_per_value))
    assert "selective" in _hint_of(check.kept_activations(
        lambda B, T, C, n_layer, mode, bytes_per_value: _kept(
            B, T, C, n_layer, mode, bytes_per_value) * (13 / 9 if mode == "selective" else 1)))


def _ck_sweep():
    return pd.DataFrame([{"knobs.checkpointing": m, "status": "ok", "latency_ms.median": ms}
                         for m, ms in [("none", 40.0), ("selective", 43.0), ("blocks", 50.0)]])


def test_recompute_overhead_from_the_learners_own_sweep():
    assert check.recompute_overhead(0.25, df=_ck_sweep())
    assert check.recompute_overhead(0.075, df=_ck_sweep(), mode="selective")
    assert "percentage" in _hint_of(check.recompute_overhead(25, df=_ck_sweep()))
    assert "minus 1" in _hint_of(check.recompute_overhead(1.25, df=_ck_sweep()))
    assert "without" in _hint_of(check.recompute_overhead(0.2, df=_ck_sweep()))
    assert not check.recompute_overhead(0.33, df=_ck_sweep())  # the formula's third, not measured


def _two_modes(none_ms, blocks_ms):
    return pd.DataFrame([{"knobs.checkpointing": m, "status": "ok", "latency_ms.median": ms}
                         for m, ms in [("none", none_ms), ("blocks", blocks_ms)]])


@pytest.mark.parametrize("blocks_ms", [100.4, 101.0, 103.0, 107.0, 125.0, 180.0])
def test_recompute_overhead_rejects_dividing_by_the_slower_step_at_any_overhead(blocks_ms):
    """extra ÷ (time with checkpointing) lies only overhead² from the truth: a fixed absolute
    tolerance passed it below ~7% overhead; it must fail at every size, with its hint."""
    df = _two_modes(100.0, blocks_ms)
    truth = blocks_ms / 100.0 - 1
    assert check.recompute_overhead(truth, df=df)
    assert check.recompute_overhead(round(truth, 4), df=df)  # a rounded honest answer
    slip = (blocks_ms - 100.0) / blocks_ms
    assert "without" in _hint_of(check.recompute_overhead(slip, df=df))
    assert "percentage" in _hint_of(check.recompute_overhead(truth * 100, df=df))  # unit slip
    assert "minus 1" in _hint_of(check.recompute_overhead(truth + 1, df=df))  # the ratio itself


def test_recompute_overhead_feedback_gives_a_band_not_the_value():
    fb = check.recompute_overhead(0.2, df=_ck_sweep())
    assert "0.25" not in fb.got.replace("0.25 = 25%", "") and "1.25" not in fb.got
    assert "too low" in fb.got


# -- 04 attention: score bytes -------------------------------------------------------------

def test_score_bytes():
    assert check.score_bytes(lambda B, h, T, bytes_per_value: B * h * T * T * bytes_per_value)
    assert "T × T" in _hint_of(check.score_bytes(lambda B, h, T, bytes_per_value: B * h * T * bytes_per_value))
    assert "each head" in _hint_of(check.score_bytes(lambda B, h, T, bytes_per_value: B * T * T * bytes_per_value))
    assert "bytes per value" in _hint_of(check.score_bytes(lambda B, h, T, bytes_per_value: B * h * T * T))


# -- 05 quantization -----------------------------------------------------------------------

def _qdq(w, bits, group_size, per_row=False, rounding=torch.round):
    n, k = w.shape
    G = k if per_row else group_size
    qmax = 2 ** (bits - 1) - 1
    wg = w.view(n, k // G, G)
    scale = (wg.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=1e-12)
    return (rounding(wg / scale).clamp(-qmax, qmax) * scale).view(n, k)


def _qdq_asym(w, bits, group_size):  # min-max, like efflab's int4: also acceptable
    n, k = w.shape
    wg = w.view(n, k // group_size, group_size)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    scale = ((hi - lo) / (2 ** bits - 1)).clamp(min=1e-12)
    return (((wg - lo) / scale).round() * scale + lo).view(n, k)


def test_group_quantize_accepts_symmetric_and_asymmetric_and_rejects_slips():
    assert check.group_quantize(_qdq)
    assert check.group_quantize(_qdq_asym)
    assert "unchanged" in check.group_quantize(lambda w, bits, group_size: w).got
    assert "per group" in _hint_of(check.group_quantize(
        lambda w, bits, group_size: _qdq(w, bits, group_size, per_row=True)))
    assert "nearest" in _hint_of(check.group_quantize(
        lambda w, bits, group_size: _qdq(w, bits, group_size, rounding=torch.floor)))
    assert "clamp" in _hint_of(check.group_quantize(  # one bit too many
        lambda w, bits, group_size: _qdq(w, bits + 1, group_size)))


def test_decode_bound():
    truth = 16e9 / 2e6
    assert check.decode_bound(truth, bytes_per_token=2_000_000, calibration=CAL)
    for wrong, hint in [(truth / 8, "bits"), (1e3 / truth, "milliseconds"),
                        (10e9 / 2e6, "read bandwidth"), (truth / 1e6, "MB")]:
        assert hint in _hint_of(check.decode_bound(wrong, bytes_per_token=2_000_000, calibration=CAL))


# -- 06 MoE --------------------------------------------------------------------------------

def _route(probs, capacity_factor, slots_fn=math.ceil):
    n, e = probs.shape
    slots = slots_fn(capacity_factor * n / e)
    taken, out = [0] * e, []
    for c in probs.argmax(-1).tolist():
        out.append(c if taken[c] < slots else -1)
        taken[c] += taken[c] < slots
    return out


def test_route_with_capacity():
    from efflab.check.moe import reference_route, route_probes
    # the probes do overflow: some tokens are dropped, so capacity is tested
    assert any(-1 in reference_route(p["probs"], p["capacity_factor"]) for p in route_probes())
    assert check.route(_route)
    assert "slots" in _hint_of(check.route(lambda probs, capacity_factor: probs.argmax(-1)))
    assert "ceil" in _hint_of(check.route(lambda p, capacity_factor: _route(p, capacity_factor, math.floor)))
    assert "last slot" in _hint_of(check.route(
        lambda p, capacity_factor: _route(p, capacity_factor, lambda x: math.ceil(x) - 1)))


def _balance(probs):
    n, e = probs.shape
    f = torch.bincount(probs.argmax(-1), minlength=e).float() / n
    return e * (f * probs.mean(0)).sum()


def test_balance_loss():
    assert check.balance_loss(_balance)
    assert "number of experts" in _hint_of(check.balance_loss(lambda p: _balance(p) / p.shape[1]))
    assert "fraction" in _hint_of(check.balance_loss(lambda p: _balance(p) * p.shape[0]))
    assert "different vectors" in _hint_of(check.balance_loss(
        lambda p: p.shape[1] * (p.mean(0) ** 2).sum()))


# -- 07 Pareto -----------------------------------------------------------------------------

def _front(costs, qualities):
    return [i for i in range(len(costs)) if not any(
        costs[j] <= costs[i] and qualities[j] <= qualities[i]
        and (costs[j], qualities[j]) != (costs[i], qualities[i]) for j in range(len(costs)))]


def _front_non_strict(costs, qualities):
    order = sorted(range(len(costs)), key=lambda i: (costs[i], qualities[i]))
    keep, best = [], float("inf")
    for i in order:
        if qualities[i] <= best:
            keep.append(i)
            best = qualities[i]
    return keep


def test_pareto_filter_matches_the_librarys_front():
    from efflab.check.frontier import pareto_probes, reference_front
    from efflab.studies.analysis import pareto_front
    for p in pareto_probes():  # the check's reference agrees with the lesson's own function
        df = pd.DataFrame({"c": p["costs"], "q": p["qualities"]})
        assert sorted(pareto_front(df, "c", "q").index) == reference_front(p["costs"], p["qualities"])
    assert check.pareto(_front)
    assert "strict" in _hint_of(check.pareto(_front_non_strict))
    assert "lower is better" in _hint_of(check.pareto(lambda c, q: _front(c, [-x for x in q])))
    assert "every point" in _hint_of(check.pareto(lambda c, q: range(len(c))))


def test_request_latency_is_the_step_not_one_over_throughput():
    rec = {"workload": "decode", "latency_ms": {"median": 8.0}, "knobs": {"batch_size": 4},
           "throughput": {"tokens_per_s": 4 / 0.008}}
    assert check.request_latency(8.0, record=rec)
    assert "shares a step" in _hint_of(check.request_latency(2.0, record=rec))
    assert "every step" in _hint_of(check.request_latency(32.0, record=rec))
    assert "milliseconds" in _hint_of(check.request_latency(0.008, record=rec))
    assert check.request_latency(8.0, record={**rec, "workload": "train"}).status == "error"


# -- hidden checks: the same exercise on other probes ----------------------------------------

REFERENCE_SOLUTIONS = {
    "online_softmax": _good_update, "bf16_round": _bf16_frexp, "kept_activations": _kept,
    "score_bytes": lambda B, h, T, bytes_per_value: B * h * T * T * bytes_per_value,
    "group_quantize": _qdq, "route": _route, "balance_loss": _balance, "pareto": _front,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_SOLUTIONS))
def test_probe_checks_take_a_seed_and_the_judge_regenerates_from_it(name):
    ex = check.REGISTRY[name]
    ev = ex.collect(REFERENCE_SOLUTIONS[name], seed=1234)
    assert ev["seed"] == 1234 and check.judge(name, ev)
    assert not check.judge(name, {**ev, "seed": 99})  # outputs of other probes do not pass
    assert check.judge(name, {**ev, "seed": "x"}).status == "error"


def test_given_data_may_be_passed_by_position():
    assert check.throughput(4 * 128 / 0.012, _sweep(), 4)
    assert check.throughput(4 * 128 / 0.012, _sweep(), batch_size=4)


def test_add_costs_names_only_the_knobs_that_apply_and_the_per_request_latency():
    from efflab.studies.analysis import add_costs
    df = pd.DataFrame({"knobs.quantization": ["none", "int4-weight"], "knobs.group_size": [64, 32],
                       "knobs.batch_size": [4, 4], "status": ["ok", "ok"],
                       "latency_ms.median": [8.0, 6.0], "latency_ms.unit": ["token", "token"],
                       "throughput.tokens_per_s": [500.0, 4 / 0.006]})
    out = add_costs(df, vary=["quantization", "group_size", "batch_size"])
    assert list(out["config"]) == ["quantization=none, batch_size=4",
                                   "quantization=int4-weight, group_size=32, batch_size=4"]
    assert list(out["ms per request token"]) == [8.0, 6.0]  # the step, not 1000 / throughput
    assert out["ms per token"].iloc[0] == pytest.approx(2.0)


def test_request_latency_takes_a_row_of_the_sweep_table_too():
    row = pd.Series({"workload": "decode", "latency_ms.median": 8.0, "knobs.batch_size": 4,
                     "throughput.tokens_per_s": 500.0})
    assert check.request_latency(8.0, row)
    assert not check.request_latency(2.0, row)


@pytest.mark.parametrize("name", sorted(REFERENCE_SOLUTIONS))
def test_a_student_placeholder_is_logged_unanswered_and_stops_the_run(name, answer_log, capsys):
    def placeholder(*args, **kwargs):
        raise NotImplementedError("replace this with your answer")
    with pytest.raises(NotImplementedError, match="replace this"):
        check.REGISTRY[name](placeholder)
    assert core.NO_ANSWER in capsys.readouterr().out
    (entry,) = check.read_answers(answer_log)
    fb = check.judge(name, entry["evidence"])
    assert fb.status == "unanswered" and fb.points == 0


@pytest.mark.parametrize("truth", [3.7e-4, 0.81, 2.5, 41.0, 1.78e3, 6.1e6, 2.2e12])
def test_a_miss_is_told_in_coarse_bands_that_never_hand_over_the_value(truth):
    """The two-try attack: answer 1, then try every number the first reply contains (and
    1 times or divided by each) — none may pass, because the reply gives a band, not a ratio."""
    import re

    from efflab.check.core import judge_number, miss_band

    first = judge_number(1.0, truth, expected="the value", unit="B")
    assert not first.passed
    text = f"{first.expected} {first.got} {first.hint}"
    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)]
    for x in numbers:
        for second in (x, 1 / x if x else 0.0):
            assert not judge_number(second, truth, expected="the value").passed, (second, text)
    assert miss_band(1.0, truth) in first.got


@pytest.mark.parametrize("got, want, band", [
    (5.0, 1.0, "too high, within 10x"), (0.5, 1.0, "too low, within 2x"),
    (1.05, 1.0, "within 10%, too high"), (200.0, 1.0, "too high by more than 10x"),
    (-1.0, 1.0, "the wrong sign"), (0.0, 3.0, "zero"), (float("nan"), 1.0, "off")])
def test_miss_band_names_the_direction_and_the_band(got, want, band):
    from efflab.check.core import miss_band

    assert miss_band(got, want) == band


# -- 01 batching · code: the largest batch a budget holds ------------------------------------

def _fits(fixed_bytes, bytes_per_sequence, budget_bytes, headroom):
    return max(0, math.floor((headroom * budget_bytes - fixed_bytes) / bytes_per_sequence))


@pytest.mark.parametrize("fn, hint", [
    (lambda fixed_bytes, bytes_per_sequence, budget_bytes, headroom:
     max(0, math.ceil((headroom * budget_bytes - fixed_bytes) / bytes_per_sequence)), "round down"),
    (lambda fixed_bytes, bytes_per_sequence, budget_bytes, headroom:  # strict <: the edge is lost
     max(0, math.ceil((headroom * budget_bytes - fixed_bytes) / bytes_per_sequence) - 1),
     "exactly still fits"),
    (lambda headroom, **p: _fits(headroom=1.0, **p), "headroom"),
    (lambda fixed_bytes, **p: _fits(fixed_bytes=0, **p), "before the first sequence"),
    (lambda fixed_bytes, bytes_per_sequence, budget_bytes, headroom:
     math.floor((headroom * budget_bytes - fixed_bytes) / bytes_per_sequence), "no batch does: 0"),
    (lambda fixed_bytes, bytes_per_sequence, budget_bytes, headroom:
     max(0.0, (headroom * budget_bytes - fixed_bytes) / bytes_per_sequence), "whole number"),
])
def test_largest_fitting_batch_names_each_slip(fn, hint):
    assert check.largest_fitting_batch(_fits)
    fb = check.largest_fitting_batch(fn)
    assert hint in _hint_of(fb), str(fb)


def test_largest_fitting_batch_agrees_with_the_librarys_search_on_a_linear_model():
    from efflab.check.batching import fit_probes, reference_fit

    for p in fit_probes(5):  # the library's doubling-then-bisection search on the same line
        usable = p["headroom"] * p["budget_bytes"]
        lo, hi = 0, 1
        while p["fixed_bytes"] + hi * p["bytes_per_sequence"] <= usable:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if p["fixed_bytes"] + mid * p["bytes_per_sequence"] <= usable else (lo, mid)
        assert reference_fit(**p) == (lo if p["fixed_bytes"] <= usable else 0)


def test_largest_fitting_batch_hidden_seed_and_placeholder(answer_log):
    ev = check.REGISTRY["largest_fitting_batch"].collect(_fits, seed=101)
    assert ev["seed"] == 101 and check.judge("largest_fitting_batch", ev)
    assert not check.judge("largest_fitting_batch", {**ev, "seed": 1})

    def placeholder(*_, **__):
        raise NotImplementedError("replace this with your answer")

    with pytest.raises(NotImplementedError):
        check.largest_fitting_batch(placeholder)
    (entry,) = check.read_answers(answer_log)
    assert check.judge("largest_fitting_batch", entry["evidence"]).status == "unanswered"


# -- 00 tour · code: bits per byte from logits -------------------------------------------------

def _bpb(logits, targets):
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item() / math.log(2)


@pytest.mark.parametrize("fn, hint", [
    (lambda logits, targets: _bpb(logits, targets) * math.log(2), "nats"),
    (lambda logits, targets: _bpb(logits, targets) * targets.numel(), "do not sum"),
    (lambda logits, targets: (-logits.gather(-1, targets.unsqueeze(-1)).mean() / math.log(2)).item(),
     "not normalised"),
    (lambda logits, targets: (-torch.log(torch.exp(logits).gather(-1, targets.unsqueeze(-1))
                                         / torch.exp(logits).sum(-1, keepdim=True))).mean().item()
     / math.log(2), "overflows"),
    (lambda logits, targets: _bpb(logits, targets) * math.log(2) / math.log(10), "base 10"),
])
def test_bits_per_byte_of_names_each_slip(fn, hint):
    assert check.bits_per_byte_of(_bpb)
    assert check.bits_per_byte_of(  # float32 log_softmax, as anyone writes it, passes too
        lambda logits, targets: (-torch.log_softmax(logits, -1).gather(-1, targets[..., None])).mean()
        / math.log(2))
    assert hint in _hint_of(check.bits_per_byte_of(fn))


def test_bits_per_byte_of_is_the_models_own_loss_in_bits():
    from efflab.check.tour import reference_bpb
    from efflab.core.config import get_preset
    from efflab.core.model import build_model

    torch.manual_seed(0)
    model = build_model(get_preset("cpu-tiny"))
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    logits, loss = model(x, y)
    assert reference_bpb(logits.detach(), y) == pytest.approx(loss.item() / math.log(2), rel=1e-5)


def test_bits_per_byte_of_hidden_seed_and_placeholder(answer_log):
    ev = check.REGISTRY["bits_per_byte_of"].collect(_bpb, seed=100)
    assert ev["seed"] == 100 and check.judge("bits_per_byte_of", ev)
    assert not check.judge("bits_per_byte_of", {**ev, "seed": 0})

    def placeholder(logits, targets):
        raise NotImplementedError("replace this with your answer")

    with pytest.raises(NotImplementedError):
        check.bits_per_byte_of(placeholder)
    (entry,) = check.read_answers(answer_log)
    assert check.judge("bits_per_byte_of", entry["evidence"]).status == "unanswered"


@pytest.mark.parametrize("none_ms, blocks_ms", [
    (4000.0, 5300.0),   # a slow laptop: seconds per step, a third slower with checkpointing
    (1.9, 2.45),        # a GPU-like machine: milliseconds, recompute a larger share
    (12.0, 12.1)])      # a machine where recompute hides almost entirely
def test_recompute_overhead_honest_learners_on_other_machines_pass(none_ms, blocks_ms):
    df = _two_modes(none_ms, blocks_ms)
    lat = df.set_index("knobs.checkpointing")["latency_ms.median"]
    assert check.recompute_overhead(lat["blocks"] / lat["none"] - 1, df=df)
    assert not check.recompute_overhead((lat["blocks"] - lat["none"]) / lat["blocks"], df=df)


# -- 00 · code: MFU from a record and a calibration -----------------------------------------

_DT = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "bf16-pure": "bfloat16"}


def _mfu_of(record, calibration):
    peak = calibration["matmul"][_DT[record["knobs"]["precision"]]]["flops_per_s"]
    return record["flops"]["per_step"] / (record["latency_ms"]["median"] / 1e3) / peak


def test_mfu_of_right_passes_on_every_seed_and_matches_measure():
    for seed in (4, 400, 9):
        fb = check.mfu_of(_mfu_of, seed=seed)
        assert fb.passed and fb.points == fb.max_points, fb
    from efflab.check.tour import reference_mfu  # what efflab.measure computes, same inputs
    rec = {"knobs": {"precision": "bf16"}, "latency_ms": {"median": 25.0},
           "flops": {"per_step": 3e9}}
    cal = {"matmul": {"bfloat16": {"flops_per_s": 400e9}, "float32": {"flops_per_s": 1e9}}}
    assert math.isclose(reference_mfu(rec, cal), 0.3)


def _fp32_peak(record, calibration):
    return record["flops"]["per_step"] / (record["latency_ms"]["median"] / 1e3) / \
        calibration["matmul"]["float32"]["flops_per_s"]


@pytest.mark.parametrize("fn, hint", [
    (lambda record, calibration: 100 * _mfu_of(record, calibration), "percentage"),
    (lambda record, calibration: _mfu_of(record, calibration) / 1e3, "milliseconds"),
    (_fp32_peak, "own number format"),
    (lambda record, calibration: _mfu_of(record, calibration) * record["flops"]["estimate_6n"]
     / record["flops"]["per_step"], "6·N"),
    (lambda record, calibration: _mfu_of(record, calibration) * record["latency_ms"]["median"]
     / record["latency_ms"]["mean"], "median"),
    (lambda record, calibration: 1 / _mfu_of(record, calibration), "upside down"),
])
def test_mfu_of_rejects_slips_with_their_hint(fn, hint):
    fb = check.mfu_of(fn)
    assert not fb.passed and hint in fb.hint, fb


def test_mfu_of_reading_the_peak_from_the_record_fails_with_the_reason():
    fb = check.mfu_of(lambda record, calibration: record["flops"]["mfu"])
    assert not fb.passed and "KeyError" in fb.got and "look inside" in fb.hint
    assert check.mfu_of(None).status == "unanswered"


def test_mfu_of_feedback_never_states_the_mfu():
    from efflab.check.tour import mfu_probes, reference_mfu
    fb = check.mfu_of(lambda record, calibration: 0.5)
    want = reference_mfu(**mfu_probes()[0])
    text = f"{fb.expected} {fb.got} {fb.hint}"
    assert f"{want:.3g}" not in text and f"{want:.2%}" not in text
