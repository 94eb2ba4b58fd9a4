"""Lesson 15's checks (each a learner function probed on unseen inputs): honest solutions pass on
the default and hidden seeds, plausible wrong ones are rejected with the hint that names the
slip, and no feedback hands the value over."""

import json
import math

import pytest
import torch

from efflab.check import judge, pipeline_bubble, ring_merge, tp_rank_bytes, tp_step_comm
from efflab.check.model_parallel import (
    MERGE_SEED,
    reference_tp_bytes,
    reference_tp_comm,
    tp_probes,
)
from efflab.core.config import get_preset
from efflab.core.model import build_model
from efflab.systems.parallel import pipeline, tensor
from efflab.systems.parallel.tensor import shard_


@pytest.fixture(autouse=True)
def _answers(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFLAB_ANSWERS", str(tmp_path / "answers.jsonl"))


# ---------------------------------------------------------------------------- the bubble

def good_bubble(stages, micro_batches):
    return (stages - 1) / (micro_batches + stages - 1)


def simulated_bubble(stages, micro_batches):  # another honest way: run the ideal schedule
    spans = pipeline.simulate("1f1b", stages, micro_batches)
    end = max(s[3] for stage in spans for s in stage)
    return pipeline.idle_fraction(spans[0], 0.0, end)


def test_bubble_right_answers_pass_on_hidden_seeds():
    for fn in (good_bubble, simulated_bubble):
        assert pipeline_bubble(fn).passed
        assert pipeline_bubble(fn, seed=1212).passed


@pytest.mark.parametrize("fn, hint", [
    (lambda stages, micro_batches: (stages - 1) / micro_batches, "whole step"),
    (lambda stages, micro_batches: (stages - 1) / (micro_batches + stages), "one slot"),
    (lambda stages, micro_batches: stages / (micro_batches + stages - 1), "one stage fewer"),
    (lambda stages, micro_batches: 1 - good_bubble(stages, micro_batches), "busy share"),
    (lambda stages, micro_batches: 100 * good_bubble(stages, micro_batches), "percentage"),
])
def test_bubble_names_the_slip(fn, hint):
    fb = pipeline_bubble(fn)
    assert not fb.passed and hint in fb.hint, fb.hint


# ---------------------------------------------------------------------------- TP bytes

def good_tp_bytes(n_layer, n_embd, vocab_size, block_size, tp):
    C, L = n_embd, n_layer
    split = L * (12 * C * C + 7 * C)
    whole = L * 6 * C + vocab_size * C + block_size * C + 2 * C
    return 4 * (split / tp + whole)


def test_tp_bytes_reference_is_what_a_real_shard_holds():
    for preset, t in (("cpu-tiny", 2), ("cpu-small", 4), ("cpu-small", 2)):
        cfg = get_preset(preset)
        model = shard_(build_model(cfg), 0, t)
        held = 4 * sum(p.numel() for p in model.parameters())
        assert held == reference_tp_bytes(cfg.n_layer, cfg.n_embd, cfg.vocab_size,
                                          cfg.block_size, t)


def test_tp_bytes_right_answer_passes_on_hidden_seeds():
    assert tp_rank_bytes(good_tp_bytes).passed
    assert tp_rank_bytes(good_tp_bytes, seed=2121).passed


def _everything_split(n_layer, n_embd, vocab_size, block_size, tp):
    return good_tp_bytes(n_layer, n_embd, vocab_size, block_size, 1) / tp


def _nothing_split(n_layer, n_embd, vocab_size, block_size, tp):
    return good_tp_bytes(n_layer, n_embd, vocab_size, block_size, 1)


def _values(**shape):
    return good_tp_bytes(**shape) / 4


def _split_biases(n_layer, n_embd, vocab_size, block_size, tp):
    return good_tp_bytes(n_layer, n_embd, vocab_size, block_size, tp) - \
        4 * n_layer * 2 * n_embd * (tp - 1) / tp


def _untied_head(n_layer, n_embd, vocab_size, block_size, tp):
    return good_tp_bytes(n_layer, n_embd, vocab_size, block_size, tp) + 4 * vocab_size * n_embd


@pytest.mark.parametrize("fn, hint", [(_everything_split, "not everything is split"),
                                      (_nothing_split, "split over the ranks"),
                                      (_values, "counts values"),
                                      (_split_biases, "biases"),
                                      (_untied_head, "count it once")])
def test_tp_bytes_names_the_slip(fn, hint):
    fb = tp_rank_bytes(fn)
    assert not fb.passed and hint in fb.hint, fb.hint
    p = tp_probes()[0]
    assert f"{reference_tp_bytes(**p):,.0f}" not in str(fb)


# ---------------------------------------------------------------------------- TP communication

def good_comm(n_layer, batch, seq, n_embd, tp):
    calls = 4 * n_layer
    return calls, calls * batch * seq * n_embd * 4 * 2 * (tp - 1) / tp


def test_tp_comm_reference_matches_what_the_ranks_counted():
    cfg = get_preset("cpu-tiny")
    values = tensor.tp_comm_values(cfg, 4, 32)["total"]  # the worker's count is tested equal
    calls, sent = reference_tp_comm(cfg.n_layer, 4, 32, cfg.n_embd, 2)
    assert calls == tensor.tp_allreduces_per_step(cfg.n_layer)["total"]
    assert sent == tensor.tp_ring_bytes_sent(values, 2)


def test_tp_comm_right_answer_passes_on_hidden_seeds():
    assert tp_step_comm(good_comm).passed
    assert tp_step_comm(good_comm, seed=404).passed


def _calls(k):
    return lambda n_layer, batch, seq, n_embd, tp: (k(n_layer), good_comm(n_layer, batch, seq, n_embd, tp)[1])


def _sent(f):
    return lambda n_layer, batch, seq, n_embd, tp: (4 * n_layer, f(4 * n_layer * batch * seq * n_embd, tp))


@pytest.mark.parametrize("fn, hint", [
    (_calls(lambda L: 2 * L), "backward"),
    (_calls(lambda L: L), "two split blocks"),
    (_calls(lambda L: 8 * L), "column-split"),
    (_sent(lambda v, t: v * 2 * (t - 1) / t), "counts values"),
    (_sent(lambda v, t: 4 * v), "2(t − 1)/t"),
    (_sent(lambda v, t: 4 * v * (t - 1) / t), "two phases"),
])
def test_tp_comm_names_the_slip(fn, hint):
    fb = tp_step_comm(fn)
    assert not fb.passed and hint in fb.hint, fb.hint


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
