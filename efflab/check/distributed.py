"""Checks for lesson 14 (distributed): α and β from your own all-reduce times, a step time at 8
ranks predicted from the fit, the per-rank memory under ZeRO-1, the training state per rank for
every layout, and the bytes each rank sends per step (the ZeRO paper's count)."""

from __future__ import annotations

import math
import random

import numpy as np

from efflab.check.core import (
    Verdict,
    exercise,
    first_slip,
    judge_number,
    judge_probed_numbers,
    number,
    probe_outputs,
)
from efflab.systems.distributed.comm import AlphaBeta, fit_alpha_beta
from efflab.systems.distributed.ddp import predicted_step_time, step_time_at
from efflab.systems.distributed.volume import paper_volume
from efflab.systems.distributed.zero import SHARDINGS, memory_per_rank


def _median_error(alpha_s: float, bandwidth: float, n: np.ndarray, t: np.ndarray,
                  regimes: list[np.ndarray]) -> float:
    """The worse of the median relative errors over the latency-bound and the bandwidth-bound
    sizes: one median over all sizes would let α alone (any huge β) pass whenever most sizes
    are small, as on lesson 14's grid of 4 B ... 16 MiB."""
    err = np.abs(alpha_s + n / bandwidth - t) / t
    return float(max(np.median(err[r]) for r in regimes if r.any()))


def _regimes(ref: AlphaBeta, n: np.ndarray) -> list[np.ndarray]:
    """Masks of the sizes where the reference fit's α dominates, and where n/β does."""
    bandwidth_bound = n / ref.bandwidth >= ref.alpha_s
    return [~bandwidth_bound, bandwidth_bound]


@exercise("alpha_beta", points=2, topic="distributed",
          answer=("alpha_s", "bandwidth"), measured=("seconds",))
def alpha_beta(answer, *, nbytes, seconds):
    """``(alpha_s, bandwidth_bytes_per_s)`` fitted to your own all-reduce times.

    ``nbytes`` and ``seconds`` are the message sizes and the times you fitted (one statistic per
    size, e.g. the lower quartile); the answer is judged by how well it predicts them, so any
    sound fitting method passes.
    """
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        raise TypeError("answer with a pair: (alpha in seconds, bandwidth in bytes per second)")
    return {"alpha_s": number(answer[0]), "bandwidth": number(answer[1]),
            "nbytes": [number(x) for x in nbytes], "seconds": [number(x) for x in seconds]}


@alpha_beta.judge_with
def _judge_alpha_beta(ev: dict) -> Verdict:
    n = np.asarray(ev["nbytes"], dtype=np.float64)
    t = np.asarray(ev["seconds"], dtype=np.float64)
    a, bw = number(ev["alpha_s"]), number(ev["bandwidth"])
    ref = fit_alpha_beta(n, t)
    regimes = _regimes(ref, n)
    ref_err = _median_error(ref.alpha_s, ref.bandwidth, n, t, regimes)
    allowed = ref_err + 0.15  # as good as a least-squares fit, give or take 15 points
    expected = (f"α (s) and β (bytes/s) whose t = α + n/β predicts your {n.size} measured "
                f"times with a median error within {allowed:.0%} among the small messages and among "
                f"the large ones alike (a relative least-squares fit gets {ref_err:.0%})")
    got_txt = f"α = {a:.3g} s, β = {bw:.3g} B/s"
    if not (math.isfinite(a) and math.isfinite(bw)) or a < 0 or bw <= 0:
        return Verdict(False, expected=expected, got=got_txt,
                       hint="α is a time ≥ 0 and β a positive rate")
    err = _median_error(a, bw, n, t, regimes)
    if err <= allowed:
        return Verdict(True, expected=expected, got=f"{got_txt}: median error {err:.0%}")
    got = f"{got_txt}: median error {err:.0%}"
    # which slip? try the usual unit mistakes and see whether they would have fitted
    def fits(aa, bb):
        return aa >= 0 and bb > 0 and _median_error(aa, bb, n, t, regimes) <= allowed

    if fits(a / 1e3, bw) or fits(a / 1e6, bw):
        hint = "α looks like milliseconds or microseconds; give it in seconds"
    elif fits(a, 1 / bw):
        hint = "that β is seconds per byte; the bandwidth is its inverse, bytes per second"
    elif fits(a, bw / 8) or fits(a, bw * 1e6) or fits(a, bw * 1e9):
        hint = "β must be in bytes per second (not bits, not MB/s or GB/s)"
    elif fits(ref.alpha_s, bw):
        hint = ("β looks right; α does not: it is the time a tiny message takes (where the "
                "curve flattens)")
    elif fits(a, ref.bandwidth):
        hint = ("α looks right; β does not: take it from the large messages, where "
                "t ≈ n/β (bytes ÷ seconds)")
    else:
        hint = ("α is where the curve flattens for small messages; β is bytes ÷ seconds where "
                "it rises for large ones")
    return Verdict(False, expected=expected, got=got, hint=hint)


@exercise("step_time_8", points=2, topic="distributed",
          measured=("compute_per_sample_s", "alpha_s", "bandwidth"))
def step_time_8(answer, *, compute_per_sample_s, global_batch, bucket_bytes, alpha_s, bandwidth,
                fit_world_size=2):
    """Seconds per data-parallel step at 8 ranks, same global batch, from your α–β fit (made at
    ``fit_world_size`` ranks), ring all-reduce and no overlap."""
    return {"answer": number(answer), "compute_per_sample_s": number(compute_per_sample_s),
            "global_batch": int(global_batch), "bucket_bytes": [number(b) for b in bucket_bytes],
            "alpha_s": number(alpha_s), "bandwidth": number(bandwidth),
            "fit_world_size": int(fit_world_size)}


@step_time_8.judge_with
def _judge_step_time_8(ev: dict) -> Verdict:
    fit = AlphaBeta(number(ev["alpha_s"]), number(ev["bandwidth"]), int(ev["fit_world_size"]))
    c, G, buckets = number(ev["compute_per_sample_s"]), int(ev["global_batch"]), ev["bucket_bytes"]
    truth = step_time_at(8, c, G, buckets, fit)
    one_bucket = [float(sum(buckets))]
    return judge_number(
        number(ev["answer"]), truth, rel=0.03, unit="s",
        expected="t_compute(G/8 samples) + Σ over buckets of the ring all-reduce time at N = 8, "
                 "in seconds",
        slips=[(predicted_step_time(c * G / 8, buckets, fit), "the all-reduce at 8 ranks is not "
                "the one you measured at 2: scale the ring's latency term by (N−1) and its "
                "bandwidth term by 2(N−1)/N"),
               (predicted_step_time(c * G, buckets, fit, 8), "each of the 8 ranks computes only "
                "G/8 of the batch"),
               (c * G / 8, "the gradients must still be all-reduced every step"),
               (step_time_at(8, c, G, one_bucket, fit), "every bucket pays the latency α once; "
                "count the buckets"),
               (truth * 1e3, "give the answer in seconds, not milliseconds")],
        hint="at 8 ranks each rank computes a smaller share of the batch, while each bucket's "
             "ring all-reduce takes more latency steps and moves its bytes in smaller pieces than "
             "at the 2 ranks your fit was made on")


@exercise("zero1_bytes", points=1, topic="distributed")
def zero1_bytes(answer, *, n_params, world_size):
    """Bytes each rank holds for parameters + gradients + AdamW state (fp32) under ZeRO-1."""
    return {"answer": number(answer), "n_params": int(n_params), "world_size": int(world_size)}


@zero1_bytes.judge_with
def _judge_zero1(ev: dict) -> Verdict:
    P, N = int(ev["n_params"]), int(ev["world_size"])

    def total(s, **kw):
        return memory_per_rank(P, N, s, **kw)["total"]

    truth = total("zero1")
    return judge_number(
        number(ev["answer"]), truth, rel=0.01, unit="bytes",
        expected=f"per-rank bytes of fp32 parameters + gradients + AdamW state, P = {P:,}, "
                 f"N = {N}, ZeRO-1",
        slips=[(total("none"), "ZeRO-1 splits the optimizer state over the ranks"),
               (total("fsdp"), "that is ZeRO-3 / FSDP; ZeRO-1 splits only the optimizer state"),
               (4 * P + 12 * P / N, "that also splits the gradients (ZeRO-2); ZeRO-1 keeps "
                "every gradient on every rank"),
               (total("zero1", optimizer_bytes=4), "AdamW keeps two fp32 moments per parameter"),
               (truth / 2**20, "give bytes, not MiB"),
               (truth / 4, "that counts values; give bytes (4 per fp32 value)")],
        hint="sort the training state into what every rank keeps whole under ZeRO-1 and what "
             "it shares out among the ranks, then count each at fp32")




# -- the per-rank training state, as code --------------------------------------------------

STATE_PROBE_SEED = 14


def state_probes(seed: int = STATE_PROBE_SEED) -> list[dict]:
    """Seeded models and clusters: every layout, AdamW (8 optimizer bytes per parameter), SGD
    with momentum (4) and plain SGD (0), world sizes that need not divide P."""
    rng = random.Random(seed)
    out = []
    for i in range(9):
        out.append({"n_params": rng.randint(10**5, 2 * 10**9),
                    "world_size": rng.choice((2, 3, 4, 8, 16, 64)),
                    "sharding": SHARDINGS[i % len(SHARDINGS)],
                    "optimizer_bytes": (8, 4, 0)[(i // len(SHARDINGS)) % 3]})
    return out


def reference_state_bytes(n_params: int, world_size: int, sharding: str,
                          optimizer_bytes: int) -> float:
    """The library's count (``memory_per_rank``): fp32 parameters and gradients."""
    return memory_per_rank(n_params, world_size, sharding, optimizer_bytes=optimizer_bytes)["total"]


@exercise("state_bytes_per_rank", points=2, topic="distributed", function=True)
def state_bytes_per_rank(fn, seed: int = STATE_PROBE_SEED):
    """``fn(n_params, world_size, sharding, optimizer_bytes) -> bytes`` of fp32 parameters,
    fp32 gradients and optimizer state each rank holds; ``sharding`` is "none" (DDP),
    "zero1", "zero2" (the textbook's: parameters replicated) or "fsdp"."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, state_probes(seed))}


def _state_slip_hint(got: float, p: dict) -> str:
    P, N, s, o = p["n_params"], p["world_size"], p["sharding"], p["optimizer_bytes"]
    want = reference_state_bytes(**p)
    return first_slip(got, [
            (want / 4, "that counts values; give bytes (4 per fp32 value)"),
            (4 * P + (4 + o) * P / N, "ZeRO-1 splits only the optimizer state; every rank keeps "
             "every gradient") if s == "zero1" else (None, ""),
            (reference_state_bytes(P, N, "zero1", o), "ZeRO-2 splits the gradients as well as "
             "the optimizer state") if s == "zero2" else (None, ""),
            (reference_state_bytes(P, N, "fsdp", o), "ZeRO-2 keeps the parameters whole on every "
             "rank; only ZeRO-3 / FSDP splits them") if s == "zero2" else (None, ""),
            (reference_state_bytes(P, N, "zero1", o), "FSDP splits the parameters and the "
             "gradients too") if s == "fsdp" else (None, ""),
            (reference_state_bytes(P, N, "fsdp", o), "without sharding every rank holds a full "
             "copy of everything") if s == "none" else (None, ""),
            (reference_state_bytes(P, N, s, 8), "the optimizer state per parameter is the "
             "optimizer_bytes given, not always AdamW's"),
            (reference_state_bytes(P, N, "none", o), "under sharding a rank keeps only its own "
             "share of what is split") if s != "none" else (None, ""),
            (reference_state_bytes(P, N, s, o) - 4 * P * (1 if s != "fsdp" else 1 / N),
             "training holds a gradient for every parameter")],
        "sort the state into weights, gradients and optimizer state, then say which of "
        "them this layout splits over the ranks", want=want, rel=1e-6)


def _probe_case(i: int, p: dict) -> str:
    """A probe as the feedback names it: ``n_params=1,000, world_size=4, sharding='zero2'``."""
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:,}" for k, v in p.items())


@state_bytes_per_rank.judge_with
def _judge_state_bytes(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, state_probes, STATE_PROBE_SEED, reference_state_bytes,
        expected="the per-rank training state in bytes, for unseen models, layouts and optimizers",
        case=_probe_case,
        takes="it takes n_params, world_size, sharding, optimizer_bytes",
        slip_hint=_state_slip_hint, unit="bytes", rel=1e-6)


# -- the bytes each rank sends per step, as code ---------------------------------------------

COMM_PROBE_SEED = 1402


def comm_probes(seed: int = COMM_PROBE_SEED) -> list[dict]:
    """Seeded models and clusters, every layout at least twice, world sizes from 2 to 64."""
    rng = random.Random(seed)
    return [{"n_params": rng.randint(10**5, 2 * 10**9),
             "world_size": rng.choice((2, 3, 4, 8, 16, 64)),
             "sharding": SHARDINGS[i % len(SHARDINGS)]} for i in range(10)]


def reference_comm_bytes(n_params: int, world_size: int, sharding: str) -> float:
    """The ZeRO paper's count (``volume.paper_volume``), fp32 parameters."""
    return paper_volume(n_params, world_size, sharding)


def _comm_slip_hint(got: float, p: dict) -> str:
    P, N, s = p["n_params"], p["world_size"], p["sharding"]
    want = reference_comm_bytes(**p)
    k = want / ((N - 1) / N * 4 * P)  # 2 or 3
    return first_slip(got, [
        (want / 4, "that counts values; give bytes (4 per fp32 value)"),
        (k * 4 * P, "on a ring each rank sends only N−1 of the N pieces of every collective"),
        (2 * (N - 1) / N * 4 * P, "FSDP gathers the parameters twice per step, once for forward "
         "and again for backward") if s == "fsdp" else (None, ""),
        (3 * (N - 1) / N * 4 * P, "only FSDP gathers the parameters a second time; this layout "
         "keeps what it needs through backward") if s != "fsdp" else (None, ""),
        ((N - 1) / N * 4 * P, "count every collective of the step: the gradients must be reduced "
         "and the parameters made whole again") if s != "fsdp" else (None, ""),
        (k * (N - 1) * 4 * P, "each rank sends a 1/N piece of the data per ring step"),
    ], "list the collectives of one step for this layout and what each rank sends in each",
        want=want, rel=1e-6)


@exercise("comm_bytes_per_rank", points=2, topic="distributed", function=True)
def comm_bytes_per_rank(fn, seed: int = COMM_PROBE_SEED):
    """``fn(n_params, world_size, sharding) -> bytes`` each rank sends per training step on a
    ring, by the ZeRO paper's count, fp32; ``sharding`` is "none" (DDP), "zero1", "zero2" or
    "fsdp"."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, comm_probes(seed))}


@comm_bytes_per_rank.judge_with
def _judge_comm_bytes(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, comm_probes, COMM_PROBE_SEED, reference_comm_bytes,
        expected="the bytes each rank sends per step, for unseen models, layouts and world sizes",
        case=_probe_case,
        takes="it takes n_params, world_size, sharding",
        slip_hint=_comm_slip_hint, unit="bytes", rel=1e-6)


__all__ = ["alpha_beta", "step_time_8", "zero1_bytes", "state_bytes_per_rank",
           "comm_bytes_per_rank"]
