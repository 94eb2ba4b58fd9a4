"""Lesson 08/09 checks: the right answer passes; plausible wrong ones fail with the right hint."""


import pytest

import efflab.check as check
from efflab.check import judge


@pytest.fixture(autouse=True)
def _answers(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFLAB_ANSWERS", str(tmp_path / "answers.jsonl"))


def _right(m, k, n, bytes_per_el):
    return 2 * m * k * n, (m * k + k * n + m * n) * bytes_per_el


def test_matmul_roofline_right_and_slips():
    fb = check.matmul_roofline(_right)
    assert fb.passed and fb.points == fb.max_points
    half = check.matmul_roofline(lambda m, k, n, bytes_per_el: (m * k * n, _right(m, k, n, bytes_per_el)[1]))
    assert not half and "multiply and one add" in half.hint
    no_out = check.matmul_roofline(lambda m, k, n, bytes_per_el: (2 * m * k * n,
                                                                  (m * k + k * n) * bytes_per_el))
    assert not no_out and "output C is written" in no_out.hint
    values = check.matmul_roofline(lambda m, k, n, bytes_per_el: (2 * m * k * n, m * k + k * n + m * n))
    assert not values and "bytes per value" in values.hint
    assert check.matmul_roofline(None).status == "unanswered"


def test_which_roof_right_reversed_and_partial():
    given = {"intensities": {"gelu": 1.0, "mlp up": 40.0, "adamw": 0.175},
             "peak_flops": 140e9, "bandwidth": 20e9}  # ridge 7 FLOP/byte
    right = {"gelu": "memory", "mlp up": "compute", "adamw": "memory"}
    assert check.which_roof(right, **given).passed
    flipped = check.which_roof({"gelu": "compute", "mlp up": "memory", "adamw": "compute"}, **given)
    assert not flipped and "reversed" in flipped.hint
    partial = check.which_roof({"gelu": "memory", "mlp up": "memory", "adamw": "memory"}, **given)
    assert not partial and "peak ÷ bandwidth = 7" in partial.hint and 0 < partial.points < 1
    missing = check.which_roof({"gelu": "memory"}, **given)
    assert not missing and "every operator" in missing.hint


def test_gelu_bias_bytes_right_and_slips():
    n = 16 * 128 * 512
    assert check.gelu_bias_bytes(2 * n * 4, numel=n).passed
    assert "values" in check.gelu_bias_bytes(2 * n, numel=n).hint
    assert "all the eager traffic" in check.gelu_bias_bytes(4 * n * 4, numel=n).hint
    assert "written and read back" in check.gelu_bias_bytes(n * 4, numel=n).hint
    # bf16: the same count at 2 bytes
    assert check.gelu_bias_bytes(2 * n * 2, numel=n, bytes_per_el=2).passed


def test_judges_rerun_from_evidence_alone():
    fb = judge("gelu_bias_bytes", {"answer": 8.0, "numel": 1, "bytes_per_el": 4})
    assert fb.passed
    assert not judge("which_roof", {"answer": {"a": "memory"}, "intensities": {"a": 100.0},
                                    "peak_flops": 1e9, "bandwidth": 1e9}).passed


# -- chain_bytes (lesson 09, code) ---------------------------------------------------------

def _chain_right(numel, arities, bytes_per_el, fused):
    if fused:
        return (2 + sum(a - 1 for a in arities)) * numel * bytes_per_el
    return sum(a + 1 for a in arities) * numel * bytes_per_el


def test_chain_bytes_right_passes_on_every_seed():
    for seed in (None, 900, 1234):
        fb = check.chain_bytes(_chain_right) if seed is None else check.chain_bytes(_chain_right, seed=seed)
        assert fb.passed and fb.points == fb.max_points, fb


def test_chain_bytes_reference_agrees_with_the_library_on_unary_chains():
    from efflab.check.fusion import reference_chain_bytes
    from efflab.techniques.compile import elementwise_chain_bytes
    for k in (1, 2, 5):
        for fused in (False, True):
            assert reference_chain_bytes(1000, [1] * k, 4, fused) == \
                elementwise_chain_bytes(1000, k, 4, fused=fused)


def test_chain_bytes_slips_fail_with_their_hint():
    values = check.chain_bytes(lambda numel, arities, bytes_per_el, fused:
                               _chain_right(numel, arities, 1, fused))
    assert not values and "bytes per value" in values.hint
    unary = check.chain_bytes(lambda numel, arities, bytes_per_el, fused:
                              (2 if fused else 2 * len(arities)) * numel * bytes_per_el)
    assert not unary and "second full-size operand" in unary.hint
    flipped = check.chain_bytes(lambda numel, arities, bytes_per_el, fused:
                                _chain_right(numel, arities, bytes_per_el, not fused))
    assert not flipped and "`fused`" in flipped.hint
    no_writes = check.chain_bytes(lambda numel, arities, bytes_per_el, fused:
                                  _chain_right(numel, arities, bytes_per_el, fused)
                                  - (1 if fused else len(arities)) * numel * bytes_per_el)
    assert not no_writes and "write" in no_writes.hint
    # off by one: the fused kernel reads the chain input twice
    off = check.chain_bytes(lambda numel, arities, bytes_per_el, fused:
                            _chain_right(numel, arities, bytes_per_el, fused) + numel * bytes_per_el * fused)
    assert not off and "fused" in off.got
    assert check.chain_bytes(None).status == "unanswered"
    crash = check.chain_bytes(lambda numel, arities, bytes_per_el, fused: arities["x"])
    assert not crash and "arities (list of ints)" in crash.hint


def test_chain_bytes_feedback_never_states_the_expected_bytes():
    from efflab.check.fusion import chain_probes, reference_chain_bytes
    fb = check.chain_bytes(lambda numel, arities, bytes_per_el, fused: 1)
    text = f"{fb.expected} {fb.got} {fb.hint}"
    want = reference_chain_bytes(**chain_probes()[0])
    assert f"{want:,}" not in text and str(want) not in text
