"""The cost of communication: all-reduce time vs message size, and the α–β model that fits it.

The α–β (latency–bandwidth) model says one collective on ``n`` bytes costs

    t(n) = α + n / β

α (seconds) is the fixed cost of starting a message — system calls, a round trip through the
network stack, synchronisation between ranks — and β (bytes/s) is how fast bytes then flow.
Small messages are latency-bound (t ≈ α), large ones bandwidth-bound (t ≈ n/β); the two halves
cross at n* = α·β bytes. A gradient all-reduce of a 3 MB model on a link with α = 100 µs and
β = 1 GB/s takes about 3.1 ms, and splitting it into 30 buckets adds 29·α ≈ 2.9 ms more.

How the model scales with the number of ranks N comes from the algorithm. A *ring* all-reduce
(what gloo and NCCL use for large messages) runs a reduce-scatter then an all-gather: 2(N−1)
steps, each sending n/N bytes to the next rank, so

    t_ring(n, N) = 2(N−1)·α_link + 2(N−1)/N · n / β_link

With N = 2 this is 2·α_link + n/β_link: a fit measured at N = 2 gives α = 2·α_link and
β = β_link, and :func:`ring_allreduce_time` extrapolates it to any N. Each rank's bytes on the
wire approach 2n as N grows — a ring's bandwidth term barely grows with N, its latency term
grows linearly.

This module holds the formulas and the fit (plain numpy, importable anywhere) and
:func:`allreduce_sweep`, which times ``torch.distributed.all_reduce`` inside an initialised
process group (it runs on every rank of a ``torchrun`` launch; see ``efflab.systems.distributed.worker``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from efflab.core.config import ConfigError


@dataclass(frozen=True)
class AlphaBeta:
    """A fitted (or given) α–β model: ``alpha_s`` seconds per message, ``bandwidth`` bytes/s.

    ``world_size`` is the number of ranks the fit was measured with (the ring extrapolation
    needs it); ``n_points`` how many message sizes the fit used.
    """

    alpha_s: float
    bandwidth: float
    world_size: int = 2
    n_points: int = 0

    def __post_init__(self):
        if not (np.isfinite(self.alpha_s) and self.alpha_s >= 0):
            raise ConfigError("alpha_s", self.alpha_s, "a finite number of seconds >= 0")
        if not (np.isfinite(self.bandwidth) and self.bandwidth > 0):
            raise ConfigError("bandwidth", self.bandwidth, "a finite number of bytes/s > 0")
        if not (isinstance(self.world_size, int) and self.world_size >= 2):
            raise ConfigError("world_size", self.world_size, "an integer >= 2")

    def time(self, nbytes) -> np.ndarray | float:
        """Predicted seconds for one all-reduce of ``nbytes`` at the fit's world size."""
        return alpha_beta_time(nbytes, self.alpha_s, self.bandwidth)

    @property
    def crossover_bytes(self) -> float:
        """n* = α·β: below it a message costs mostly latency, above it mostly bandwidth."""
        return self.alpha_s * self.bandwidth

    def to_dict(self) -> dict:
        return asdict(self)


def alpha_beta_time(nbytes, alpha_s: float, bandwidth: float):
    """t(n) = α + n/β: seconds to all-reduce ``nbytes`` with latency α (s) and bandwidth β (B/s)."""
    t = alpha_s + np.asarray(nbytes, dtype=np.float64) / bandwidth
    return float(t) if t.ndim == 0 else t


def ring_allreduce_time(nbytes, world_size: int, alpha_link_s: float, bandwidth_link: float):
    """t = 2(N−1)·α_link + 2(N−1)/N · n/β_link: a ring all-reduce (reduce-scatter + all-gather)
    of ``nbytes`` over ``world_size`` ranks, each step sending n/N bytes over one link."""
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ConfigError("world_size", world_size, "an integer >= 1")
    n = np.asarray(nbytes, dtype=np.float64)
    steps = 2 * (world_size - 1)  # one process alone communicates nothing: 0 steps
    t = (steps * alpha_link_s + steps / world_size * n / bandwidth_link) if steps else 0.0 * n
    return float(t) if t.ndim == 0 else t


def extrapolate(fit: AlphaBeta, nbytes, world_size: int):
    """All-reduce seconds at ``world_size`` ranks predicted from a fit measured at
    ``fit.world_size`` ranks, assuming a ring: the fit fixes α_link and β_link, the ring formula
    scales them."""
    N0 = fit.world_size
    alpha_link = fit.alpha_s / (2 * (N0 - 1))
    bandwidth_link = fit.bandwidth * 2 * (N0 - 1) / N0
    return ring_allreduce_time(nbytes, world_size, alpha_link, bandwidth_link)


def fit_alpha_beta(nbytes, seconds, world_size: int = 2) -> AlphaBeta:
    """Least-squares fit of t = α + n/β to measured (bytes, seconds), in *relative* error.

    Times span several decades (tens of µs to tens of ms), so each point is weighted by 1/t:
    a plain least squares would fit the largest messages and ignore α. α is kept >= 0 (a
    negative intercept is refitted through the origin).
    """
    n = np.asarray(nbytes, dtype=np.float64).ravel()
    t = np.asarray(seconds, dtype=np.float64).ravel()
    if n.size != t.size:
        raise ConfigError("seconds", f"{t.size} values", f"one per message size ({n.size})")
    if n.size < 2 or np.unique(n).size < 2:
        raise ConfigError("nbytes", n.tolist(), "at least two different message sizes")
    if np.any(t <= 0) or not np.all(np.isfinite(t)):
        raise ConfigError("seconds", t.tolist(), "finite times > 0")
    if np.any(n < 0):
        raise ConfigError("nbytes", n.tolist(), "sizes >= 0")
    # minimise sum(((α + γ n) - t) / t)^2 : rows [1/t, n/t] · [α, γ] ≈ 1
    A = np.stack([1 / t, n / t], axis=1)
    (alpha, gamma), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if alpha < 0:  # latency below resolution: fit the bandwidth alone
        alpha = 0.0
        gamma = float(np.sum(n / t) / np.sum((n / t) ** 2))
    if gamma <= 0:  # no size dependence at all: bandwidth beyond what the sizes can show
        gamma = 1e-18
        alpha = float(np.sum(1 / t) / np.sum((1 / t) ** 2))
    return AlphaBeta(float(alpha), float(1 / gamma), world_size, int(n.size))


def split_held_out(nbytes, every: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (fit, held_out) over sorted message sizes: every ``every``-th size from the
    second on is held out, the smallest and largest always fitted (no extrapolation tested
    beyond the range, only between fitted sizes)."""
    n = np.asarray(nbytes, dtype=np.float64).ravel()
    if not (isinstance(every, int) and every >= 2):
        raise ConfigError("every", every, "an integer >= 2")
    order = np.argsort(n, kind="stable")
    held = np.zeros(n.size, dtype=bool)
    for rank_in_order, idx in enumerate(order):
        if 0 < rank_in_order < n.size - 1 and rank_in_order % every == 1:
            held[idx] = True
    return ~held, held


def relative_errors(fit: AlphaBeta, nbytes, seconds) -> np.ndarray:
    """|predicted − measured| / measured for each (bytes, seconds) pair."""
    t = np.asarray(seconds, dtype=np.float64)
    return np.abs(fit.time(np.asarray(nbytes, dtype=np.float64)) - t) / t


def fit_with_held_out(nbytes, seconds, world_size: int = 2, every: int = 3) -> dict:
    """Fit on most sizes, test on the held-out ones. Returns the fit, the held-out errors
    (median and max) and which sizes were held out — the honest way to say a model predicts."""
    n = np.asarray(nbytes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    fit_mask, held = split_held_out(n, every)
    fit = fit_alpha_beta(n[fit_mask], t[fit_mask], world_size)
    err = relative_errors(fit, n[held], t[held]) if held.any() else np.array([])
    return {"fit": fit, "held_out_bytes": n[held].tolist(),
            "held_out_errors": err.tolist(),
            "held_out_median_error": float(np.median(err)) if err.size else None,
            "held_out_max_error": float(np.max(err)) if err.size else None,
            "fit_errors": relative_errors(fit, n[fit_mask], t[fit_mask]).tolist()}


def message_sizes(min_bytes: int = 4, max_bytes: int = 16 << 20, factor: int = 4) -> list[int]:
    """Log-spaced message sizes in bytes (multiples of 4: whole fp32 values)."""
    if not (isinstance(factor, int) and factor >= 2):
        raise ConfigError("factor", factor, "an integer >= 2")
    if not (isinstance(min_bytes, int) and 4 <= min_bytes <= max_bytes):
        raise ConfigError("min_bytes", min_bytes, f"an integer in [4, max_bytes={max_bytes}]")
    out, n = [], min_bytes
    while n <= max_bytes:
        out.append(int(n // 4 * 4))
        n *= factor
    return out


def allreduce_sweep(sizes: list[int], min_repeats: int = 5, max_repeats: int = 50,
                    target_s: float = 0.2, warmup: int = 2, device="cpu",
                    on_round=None) -> list[dict]:
    """Time ``dist.all_reduce`` (sum, fp32) for each message size, on every rank of the
    initialised default process group.

    The sizes are timed in interleaved *rounds* (every size once per round, the order reversed
    every other round), so a burst of load on a shared machine lands on all sizes alike instead
    of spoiling a few — the curve stays comparable across sizes. Every sample starts after a
    barrier, so all ranks enter together; a sample's time is the *slowest* rank's (an all-reduce
    is finished when every rank has its result). Rounds go on until at least ``min_repeats``
    and ``target_s`` seconds per size on average (at most ``max_repeats``); rank 0 decides and
    tells the others, so every rank runs the same collectives. ``on_round(rounds, rows)`` is
    called on every rank after each round.
    Returns one row per size: bytes, the samples in seconds, and n.
    """
    import torch
    import torch.distributed as dist

    bufs = [torch.ones(max(1, n // 4), dtype=torch.float32, device=device) for n in sizes]  # (n/4,)
    for x in bufs:
        for _ in range(warmup):
            dist.all_reduce(x)
    samples: list[list[float]] = [[] for _ in sizes]
    spent = 0.0
    rounds = 0
    while True:
        order = range(len(sizes)) if rounds % 2 == 0 else reversed(range(len(sizes)))
        mine = [0.0] * len(sizes)
        for i in order:
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(bufs[i])
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            mine[i] = time.perf_counter() - t0
        slowest = torch.tensor(mine, dtype=torch.float64, device=device)  # NCCL: on the GPU
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        for i, dt in enumerate(slowest.tolist()):
            samples[i].append(dt)
            spent += dt
        rounds += 1
        rows = [{"bytes": int(x.numel() * 4), "samples_s": s, "n": len(s)}
                for x, s in zip(bufs, samples)]
        if on_round is not None:
            on_round(rounds, rows)
        go_on = torch.tensor([int(rounds < max_repeats and
                                  (rounds < min_repeats or spent < target_s * len(sizes)))],
                             device=device)
        dist.broadcast(go_on, src=0)  # rank 0 decides: every rank runs the same collectives
        if not int(go_on):
            return rows


__all__ = ["AlphaBeta", "alpha_beta_time", "ring_allreduce_time", "extrapolate",
           "fit_alpha_beta", "split_held_out", "relative_errors", "fit_with_held_out",
           "message_sizes", "allreduce_sweep"]
