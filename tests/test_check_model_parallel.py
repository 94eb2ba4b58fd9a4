"""Lesson 15's checks: the right answer passes, plausible wrong ones are rejected with the hint
that names the slip, and no feedback hands the value over."""

import json
import math

import pytest
import torch

from efflab.check import judge, pipeline_bubble, ring_merge, tp_allreduces, tp_rank_bytes
from efflab.check.model_parallel import MERGE_SEED
from efflab.core.config import get_preset
from efflab.core.model import build_model
from efflab.systems.parallel.tensor import shard_


@pytest.fixture(autouse=True)
def _answers(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFLAB_ANSWERS", str(tmp_path / "answers.jsonl"))


# ---------------------------------------------------------------------------- the bubble

def test_bubble_right_answer_passes_for_either_schedule():
    for schedule in ("gpipe", "1f1b"):
        assert pipeline_bubble(1 / 9, stages=2, micro_batches=8, schedule=schedule).passed
    assert pipeline_bubble(3 / 7, stages=4, micro_batches=4).passed


@pytest.mark.parametrize("answer, hint", [
    (1 / 8, "whole step"),            # (p-1)/m
    (1 / 10, "one slot"),             # (p-1)/(m+p): off by one
    (2 / 9, "one stage fewer"),       # p/(m+p-1)
    (8 / 9, "busy share"),
    (100 / 9, "percentage"),
])
def test_bubble_names_the_slip(answer, hint):
    fb = pipeline_bubble(answer, stages=2, micro_batches=8)
    assert not fb.passed and hint in fb.hint, fb.hint
    assert "0.111" not in str(fb) and "1/9" not in str(fb)


def test_bubble_refuses_an_unknown_schedule_without_crashing():
    fb = pipeline_bubble(0.1, stages=2, micro_batches=8, schedule="zigzag")
    assert not fb.passed and fb.status == "error"


# ---------------------------------------------------------------------------- TP bytes

def _shard_bytes(preset: str, t: int) -> int:
    """Bytes a real shard holds (rank 0; every rank holds the same count)."""
    model = shard_(build_model(get_preset(preset)), 0, t)
    return 4 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset, t", [("cpu-tiny", 2), ("cpu-small", 4), ("cpu-small", 2)])
def test_tp_bytes_right_answer_is_what_a_real_shard_holds(preset, t):
    assert tp_rank_bytes(_shard_bytes(preset, t), preset=preset, tp=t).passed


@pytest.mark.parametrize("wrong, hint", [
    (lambda full, truth: full / 4, "not everything is split"),   # everything ÷ t
    (lambda full, truth: full, "split over the ranks"),           # nothing split
    (lambda full, truth: truth / 4, "counts values"),            # values, not bytes
    (lambda full, truth: truth / 2**20, "MiB"),
])
def test_tp_bytes_names_the_slip(wrong, hint):
    cfg = get_preset("cpu-small")
    full = 4 * build_model(cfg).num_params()
    truth = _shard_bytes("cpu-small", 4)
    fb = tp_rank_bytes(wrong(full, truth), preset="cpu-small", tp=4)
    assert not fb.passed and hint in fb.hint, fb.hint
    assert f"{truth:,}" not in str(fb) and str(truth) not in str(fb)


def test_tp_bytes_split_biases_and_mlp_only_are_caught():
    cfg, t = get_preset("cpu-small"), 4
    truth = _shard_bytes("cpu-small", t)
    C, L = cfg.n_embd, cfg.n_layer
    fb = tp_rank_bytes(truth - 4 * L * 2 * C * (t - 1) / t, preset="cpu-small", tp=t)
    assert not fb.passed and "biases" in fb.hint
    fb = tp_rank_bytes(truth + 4 * L * (4 * C * C + 3 * C) * (t - 1) / t, preset="cpu-small", tp=t)
    assert not fb.passed and "attention" in fb.hint


# ---------------------------------------------------------------------------- TP all-reduces

def test_tp_allreduces_right_and_wrong():
    assert tp_allreduces(12, n_layer=3).passed
    for wrong, hint in ((6, "backward"), (3, "two split blocks"), (4, "one layer"),
                        (24, "column-split")):
        fb = tp_allreduces(wrong, n_layer=3)
        assert not fb.passed and hint in fb.hint, (wrong, fb.hint)
    assert "12" not in str(tp_allreduces(6, n_layer=3))


# ---------------------------------------------------------------------------- the ring merge

def good_merge(out_a, lse_a, out_b, lse_b):
    lse = torch.logaddexp(lse_a, lse_b)
    return torch.exp(lse_a - lse) * out_a + torch.exp(lse_b - lse) * out_b, lse


def max_trick_merge(out_a, lse_a, out_b, lse_b):  # another honest way: subtract the max
    m = torch.maximum(lse_a, lse_b)
    wa, wb = torch.exp(lse_a - m), torch.exp(lse_b - m)
    return (wa * out_a + wb * out_b) / (wa + wb), m + torch.log(wa + wb)


def naive_merge(out_a, lse_a, out_b, lse_b):  # overflows at large lse
    wa, wb = torch.exp(lse_a), torch.exp(lse_b)
    return (wa * out_a + wb * out_b) / (wa + wb), torch.log(wa + wb)


def sum_merge(out_a, lse_a, out_b, lse_b):  # forgets each block is normalised
    return out_a + out_b, torch.logaddexp(lse_a, lse_b)


def max_lse_merge(out_a, lse_a, out_b, lse_b):  # lse = the larger block's
    out, _ = good_merge(out_a, lse_a, out_b, lse_b)
    return out, torch.maximum(lse_a, lse_b)


def test_ring_merge_accepts_honest_forms_and_hidden_seeds():
    for fn in (good_merge, max_trick_merge):
        assert ring_merge(fn).passed
        assert ring_merge(fn, seed=151).passed


@pytest.mark.parametrize("fn, hint", [(naive_merge, "overflows"),
                                      (sum_merge, "normalised"),
                                      (max_lse_merge, "not the larger one")])
def test_ring_merge_names_the_slip(fn, hint):
    fb = ring_merge(fn)
    assert not fb.passed and hint in fb.hint, fb.hint


def test_ring_merge_rejects_crashes_and_is_judged_from_the_seed():
    def crashes(out_a, lse_a, out_b, lse_b):
        raise RuntimeError("oops")

    assert not ring_merge(crashes).passed
    ev = ring_merge.collect(good_merge, seed=MERGE_SEED)
    assert judge("ring_merge", json.loads(json.dumps(ev))).passed
    ev["seed"] = MERGE_SEED + 1  # outputs of one seed do not pass for another's probes
    assert not judge("ring_merge", ev).passed
    assert math.isfinite(float(ev["outputs"][3]["out"][1][0][0][0][0]))
