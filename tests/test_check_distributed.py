"""Lesson 14's checks: the right answer passes, plausible wrong ones are rejected with the hint
that names the slip, and nothing is judged on absolute time."""

import numpy as np
import pytest

from efflab.check import alpha_beta, judge, step_time_8, zero1_bytes
from efflab.systems.distributed import AlphaBeta, extrapolate, memory_per_rank
from efflab.systems.distributed.comm import fit_alpha_beta, message_sizes


@pytest.fixture(autouse=True)
def _answers(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFLAB_ANSWERS", str(tmp_path / "answers.jsonl"))


ALPHA, BW = 0.4e-3, 3e8
N_BYTES = np.array([4, 64, 1024, 16384, 262144, 1 << 20, 4 << 20, 16 << 20], dtype=float)
rng = np.random.default_rng(1)
SECONDS = (ALPHA + N_BYTES / BW) * rng.lognormal(0, 0.08, N_BYTES.size)


def _ab(a, b):
    return alpha_beta((a, b), nbytes=N_BYTES, seconds=SECONDS)


def test_alpha_beta_accepts_any_sound_fit():
    assert _ab(ALPHA, BW).passed  # the true values
    # a two-point estimate: the smallest message's time, the largest message's slope
    a2 = SECONDS[0]
    b2 = (N_BYTES[-1] - N_BYTES[-2]) / (SECONDS[-1] - SECONDS[-2])
    assert _ab(a2, b2).passed


@pytest.mark.parametrize("answer, hint", [
    ((ALPHA * 1e3, BW), "milliseconds"),           # α in ms
    ((ALPHA, 1 / BW), "seconds per byte"),          # β inverted
    ((ALPHA, BW * 8), "bytes per second"),          # β in bits/s
    ((ALPHA, BW / 1e6), "bytes per second"),        # β in MB/s
    ((ALPHA * 40, BW), "α does not"),               # α wrong, β right
    ((ALPHA, BW / 20), "β does not"),               # β wrong, α right
])
def test_alpha_beta_names_the_slip(answer, hint):
    fb = _ab(*answer)
    assert not fb.passed and fb.status == "wrong"
    assert hint in fb.hint, fb.hint
    assert f"{ALPHA:.3g}" not in fb.expected and f"{BW:.3g}" not in fb.expected  # no give-away


# lesson 14's own grid: 12 sizes, 4 B ... 16 MiB, most of them latency-bound at these α, β
LESSON_N = np.array(message_sizes(), dtype=float)
LESSON_T = (550e-6 + LESSON_N / 0.4e9) * np.random.default_rng(7).lognormal(0, 0.1, LESSON_N.size)


def _lesson_ab(a, b):
    return alpha_beta((a, b), nbytes=LESSON_N, seconds=LESSON_T)


def test_alpha_beta_on_the_lessons_grid_accepts_the_fit_and_the_truth():
    fit = fit_alpha_beta(LESSON_N, LESSON_T)
    assert LESSON_N.size == 12
    assert _lesson_ab(fit.alpha_s, fit.bandwidth).passed
    assert _lesson_ab(550e-6, 0.4e9).passed


@pytest.mark.parametrize("bandwidth, hint", [
    (0.4e9 * 8, "bytes per second"),      # β in bits per second
    (0.4e9 * 1e6, "β does not"),          # β a million times too high
    (1e15, "β does not"),                 # α alone: β so large that n/β vanishes
    (0.4e9 / 3, "β does not"),            # a wrong β, not a unit slip
])
def test_alpha_beta_on_the_lessons_grid_rejects_a_beta_the_small_sizes_cannot_see(bandwidth, hint):
    fb = _lesson_ab(550e-6, bandwidth)
    assert not fb.passed, fb
    assert hint in fb.hint, fb.hint


def test_alpha_beta_unanswered_and_malformed_never_raise():
    assert alpha_beta(None, nbytes=N_BYTES, seconds=SECONDS).status == "unanswered"
    assert alpha_beta(0.001, nbytes=N_BYTES, seconds=SECONDS).status == "error"
    assert not _ab(-1.0, BW).passed


GIVEN = {"compute_per_sample_s": 0.02, "global_batch": 16,
         "bucket_bytes": [1 << 20, 1 << 20, 1_300_000], "alpha_s": 5e-4, "bandwidth": 4e8}


def _truth8():
    fit = AlphaBeta(GIVEN["alpha_s"], GIVEN["bandwidth"], 2)
    comm = sum(extrapolate(fit, b, 8) for b in GIVEN["bucket_bytes"])
    return 0.02 * 16 / 8 + comm


def test_step_time_8_right_answer_by_hand():
    # by hand: (N−1)·α per bucket plus 2(N−1)/N · bytes/β
    hand = 0.02 * 16 / 8 + sum(7 * 5e-4 + 2 * 7 / 8 * b / 4e8 for b in GIVEN["bucket_bytes"])
    assert hand == pytest.approx(_truth8())
    assert step_time_8(hand, **GIVEN).passed


@pytest.mark.parametrize("wrong, hint", [
    (0.02 * 16 / 8 + sum(5e-4 + b / 4e8 for b in GIVEN["bucket_bytes"]), "not the one you measured"),
    (0.02 * 16 + sum(7 * 5e-4 + 2 * 7 / 8 * b / 4e8 for b in GIVEN["bucket_bytes"]), "G/8"),
    (0.02 * 16 / 8, "still be all-reduced"),
    (0.02 * 16 / 8 + 7 * 5e-4 + 2 * 7 / 8 * sum(GIVEN["bucket_bytes"]) / 4e8, "every bucket"),
])
def test_step_time_8_names_the_slip(wrong, hint):
    fb = step_time_8(wrong, **GIVEN)
    assert not fb.passed and hint in fb.hint, fb.hint


def test_step_time_8_milliseconds_slip():
    fb = step_time_8(_truth8() * 1e3, **GIVEN)
    assert not fb.passed and "seconds" in fb.hint


P, N = 85_000_000, 8


def test_zero1_bytes_right_answer():
    assert zero1_bytes(4 * P + 4 * P + 8 * P / N, n_params=P, world_size=N).passed
    assert zero1_bytes(memory_per_rank(P, N, "zero1")["total"], n_params=P, world_size=N).passed


@pytest.mark.parametrize("wrong, hint", [
    (16 * P, "splits the optimizer state"),
    (16 * P / N, "ZeRO-3"),
    (4 * P + 12 * P / N, "ZeRO-2"),
    (8 * P + 4 * P / N, "two fp32 moments"),
    ((8 * P + 8 * P / N) / 2**20, "not MiB"),
])
def test_zero1_bytes_names_the_slip(wrong, hint):
    fb = zero1_bytes(wrong, n_params=P, world_size=N)
    assert not fb.passed and hint in fb.hint, fb.hint


def test_the_grader_rejudges_from_the_logged_evidence():
    fb = zero1_bytes(16 * P, n_params=P, world_size=N)
    ev = {"answer": 16 * P, "n_params": P, "world_size": N}
    assert judge("zero1_bytes", ev).to_dict() == fb.to_dict()


# -- 14 · code: the training state each rank holds ------------------------------------------

def _state(n_params, world_size, sharding, optimizer_bytes):
    weights = grads = 4 * n_params                 # fp32, a full copy on every rank ...
    if sharding in ("zero2", "fsdp"):               # ... unless ZeRO-2 / FSDP shard the gradients
        grads = grads / world_size
    if sharding == "fsdp":                          # ... and FSDP the weights too
        weights = weights / world_size
    opt = optimizer_bytes * n_params / (1 if sharding == "none" else world_size)
    return weights + grads + opt


def test_state_bytes_per_rank_accepts_the_count_and_names_each_slip():
    from efflab import check

    assert check.state_bytes_per_rank(_state)
    for fn, hint in [
            (lambda **p: _state(**p) / 4, "counts values"),
            (lambda n_params, world_size, sharding, optimizer_bytes: _state(
                n_params, world_size, sharding, 8), "optimizer_bytes given"),
            (lambda n_params, world_size, sharding, optimizer_bytes: _state(
                n_params, world_size, "zero1" if sharding == "fsdp" else sharding,
                optimizer_bytes), "FSDP splits the parameters"),
            (lambda n_params, world_size, sharding, optimizer_bytes: _state(
                n_params, world_size, sharding, optimizer_bytes)
             - (4 * n_params - 4 * n_params / world_size if sharding == "zero1" else 0),
             "every rank keeps every gradient"),
            (lambda n_params, world_size, sharding, optimizer_bytes: _state(
                n_params, world_size, sharding, optimizer_bytes) - 4 * n_params
             * (1 / world_size if sharding == "fsdp" else 1), "a gradient for every parameter")]:
        fb = check.state_bytes_per_rank(fn)
        assert not fb.passed and fb.status == "wrong" and hint in fb.hint, (hint, str(fb))
        assert "too" in fb.got


def test_state_bytes_per_rank_agrees_with_the_table_and_zero1_bytes():
    P, N = 85_000_000, 8
    assert _state(P, N, "zero1", 8) == memory_per_rank(P, N, "zero1")["total"]
    assert zero1_bytes(_state(P, N, "zero1", 8), n_params=P, world_size=N)


def test_state_bytes_per_rank_hidden_seed_and_placeholder(tmp_path):
    from efflab import check

    ev = check.REGISTRY["state_bytes_per_rank"].collect(_state, seed=1414)
    assert ev["seed"] == 1414 and judge("state_bytes_per_rank", ev)
    assert not judge("state_bytes_per_rank", {**ev, "seed": 14})

    def placeholder(n_params, world_size, sharding, optimizer_bytes):
        raise NotImplementedError("replace this with your answer")

    with pytest.raises(NotImplementedError):
        check.state_bytes_per_rank(placeholder)
    (entry,) = check.read_answers(tmp_path / "answers.jsonl")
    assert judge("state_bytes_per_rank", entry["evidence"]).status == "unanswered"


def test_state_bytes_per_rank_knows_zero2_from_zero1_and_fsdp():
    from efflab import check

    for wrong, hint in [("zero1", "splits the gradients as well"), ("fsdp", "keeps the parameters whole")]:
        def fn(n_params, world_size, sharding, optimizer_bytes, wrong=wrong):
            return _state(n_params, world_size, wrong if sharding == "zero2" else sharding,
                          optimizer_bytes)

        fb = check.state_bytes_per_rank(fn)
        assert not fb.passed and hint in fb.hint, (hint, str(fb))


# -- 14 · code: the bytes each rank sends per step -------------------------------------------

def _comm(n_params, world_size, sharding):
    psi = 4 * n_params                                      # fp32 parameter bytes
    collectives = 3 if sharding == "fsdp" else 2            # FSDP gathers twice
    return collectives * (world_size - 1) / world_size * psi


def test_comm_bytes_per_rank_accepts_the_papers_count():
    from efflab import check
    from efflab.systems.distributed.volume import paper_volume

    assert check.comm_bytes_per_rank(_comm)
    assert _comm(P, N, "zero2") == paper_volume(P, N, "zero2")
    ev = check.REGISTRY["comm_bytes_per_rank"].collect(_comm, seed=2024)
    assert judge("comm_bytes_per_rank", ev) and not judge("comm_bytes_per_rank", {**ev, "seed": 1})


@pytest.mark.parametrize("fn, hint", [
    (lambda n_params, world_size, sharding: (3 if sharding == "fsdp" else 2) * 4 * n_params,
     "N−1 of the N pieces"),                                           # forgot (N−1)/N
    (lambda n_params, world_size, sharding: 2 * (world_size - 1) / world_size * 4 * n_params,
     "twice per step"),                                                # FSDP as 2Ψ
    (lambda n_params, world_size, sharding: _comm(n_params, world_size, sharding) / 4,
     "counts values"),                                                 # values, not bytes
    (lambda n_params, world_size, sharding: _comm(n_params, world_size, "fsdp"),
     "only FSDP gathers"),                                             # every layout as 3Ψ
    (lambda n_params, world_size, sharding: (world_size - 1) / world_size * 4 * n_params
     * (3 if sharding == "fsdp" else 1), "count every collective"),    # ZeRO-2: reduce-scatter only
    (lambda n_params, world_size, sharding: (3 if sharding == "fsdp" else 2) * (world_size - 1)
     * 4 * n_params, "1/N piece"),                                     # N−1 whole copies
])
def test_comm_bytes_per_rank_names_the_slip(fn, hint):
    from efflab import check

    fb = check.comm_bytes_per_rank(fn)
    assert not fb.passed and fb.status == "wrong" and hint in fb.hint, (hint, str(fb))
    assert "too" in fb.got or "within" in fb.got
