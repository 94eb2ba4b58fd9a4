"""Communication volume per training step: what the ZeRO paper predicts each rank sends, what
torch's implementations really issue, and what it costs on this machine's α–β fit
(plain Python: no torch).

Rajbhandari et al. 2020 (*ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models*, SC20, §7) count, for Ψ bytes of parameters (here Ψ = 4P for P fp32 parameters):

- **DDP**: one all-reduce of the gradients. A ring all-reduce is a reduce-scatter and then an
  all-gather, each sending (N−1)/N·Ψ per rank: 2(N−1)/N·Ψ ≈ 2Ψ.
- **ZeRO-1 and ZeRO-2**: a reduce-scatter of the gradients (each rank needs only the shard it
  updates) and, after the update, an all-gather of the parameters: the same 2(N−1)/N·Ψ.
- **ZeRO-3 / FSDP**: the parameters are gathered in forward, freed, gathered again in backward,
  and the gradients reduce-scattered: 3(N−1)/N·Ψ ≈ 3Ψ, 1.5× DDP.

What a rank *sends* under a ring, per collective on n bytes (n = the full, unsharded size):
all-reduce 2(N−1)/N·n; reduce-scatter and all-gather (N−1)/N·n each; a pipelined broadcast
(N−1)/N·n on average over the ranks (every rank but the last forwards the whole message).

``counter.CollectiveCounter`` is a dispatch mode that sees every ``c10d`` collective a step issues
— from Python (FSDP's all-gathers and reduce-scatters, ``ZeroRedundancyOptimizer``'s
broadcasts) and from C++ (DDP's reducer calls the same dispatcher ops) — and notes its kind and
payload bytes; :func:`ring_bytes_sent` turns them into bytes on the wire. The counter counts
what was *asked for*; it does not sniff sockets (gloo's own algorithm for a given size may
differ from a ring; the α–β fit prices what it really does).
"""

from __future__ import annotations

from efflab.core.config import ConfigError

KINDS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "other")
PAPER_FACTOR = {"none": 2, "zero1": 2, "zero2": 2, "fsdp": 3}  # × (N−1)/N·Ψ per rank
OPS = {  # c10d dispatcher op -> (kind, which argument holds the full-size payload)
    "allreduce_": ("all_reduce", 0), "allreduce_coalesced_": ("all_reduce", 0),
    "_allgather_base_": ("all_gather", 0), "allgather_": ("all_gather", 0),
    "allgather_into_tensor_coalesced_": ("all_gather", 0),
    "_reduce_scatter_base_": ("reduce_scatter", 1), "reduce_scatter_": ("reduce_scatter", 1),
    "reduce_scatter_tensor_coalesced_": ("reduce_scatter", 1),
    "broadcast_": ("broadcast", 0),
}


def _check_world(world_size) -> None:
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ConfigError("world_size", world_size, "an integer >= 1")


def wire_factor(kind: str, world_size: int) -> float:
    """Bytes a rank sends per byte of a collective's full payload, on a ring."""
    _check_world(world_size)
    if kind not in KINDS:
        raise ConfigError("kind", kind, "one of " + ", ".join(map(repr, KINDS)))
    share = (world_size - 1) / world_size
    return {"all_reduce": 2 * share, "reduce_scatter": share, "all_gather": share,
            "broadcast": share, "other": 0.0}[kind]


def ring_bytes_sent(collectives, world_size: int) -> float:
    """Bytes one rank sends for ``collectives`` (dicts with ``kind`` and ``bytes``, the full
    payload) on a ring of ``world_size`` ranks."""
    return float(sum(wire_factor(c["kind"], world_size) * c["bytes"] for c in collectives))


def paper_volume(n_params: int, world_size: int, sharding: str, bytes_per_value: int = 4) -> float:
    """Bytes each rank sends per step by the ZeRO paper's count: 2(N−1)/N·Ψ for DDP, ZeRO-1
    and ZeRO-2, 3(N−1)/N·Ψ for ZeRO-3/FSDP, with Ψ = n_params · bytes_per_value."""
    if not (isinstance(n_params, int) and n_params >= 0):
        raise ConfigError("n_params", n_params, "an integer >= 0")
    _check_world(world_size)
    if sharding not in PAPER_FACTOR:
        raise ConfigError("sharding", sharding, "one of " + ", ".join(map(repr, PAPER_FACTOR)))
    return PAPER_FACTOR[sharding] * (world_size - 1) / world_size * n_params * bytes_per_value


def collective_time(kind: str, nbytes: float, fit, world_size: int) -> float:
    """Seconds for one collective on a ring, priced with an all-reduce α–β ``fit`` (made at
    ``fit.world_size`` ranks): the fit gives α_link and β_link as in ``comm.extrapolate``; an
    all-reduce takes 2(N−1) steps, a reduce-scatter, an all-gather or a broadcast N−1, each
    paying α_link, and the wire bytes go at β_link."""
    _check_world(world_size)
    if world_size == 1 or kind == "other":
        return 0.0
    n0 = fit.world_size
    alpha_link = fit.alpha_s / (2 * (n0 - 1))
    bandwidth_link = fit.bandwidth * 2 * (n0 - 1) / n0
    steps = 2 * (world_size - 1) if kind == "all_reduce" else world_size - 1
    return steps * alpha_link + wire_factor(kind, world_size) * nbytes / bandwidth_link


def comm_price(collectives, fit, world_size: int) -> float:
    """Seconds of communication a step's ``collectives`` cost with no overlap: Σ over them."""
    return float(sum(collective_time(c["kind"], c["bytes"], fit, world_size) for c in collectives))


def summarise(collectives, world_size: int) -> dict:
    """Per kind: how many collectives and their payload bytes, and the ring bytes sent in all."""
    by = {k: {"calls": 0, "bytes": 0} for k in KINDS}
    for c in collectives:
        by[c["kind"]]["calls"] += 1
        by[c["kind"]]["bytes"] += int(c["bytes"])
    return {"by_kind": by, "sent_bytes": ring_bytes_sent(collectives, world_size),
            "calls": len(collectives)}


__all__ = ["KINDS", "PAPER_FACTOR", "wire_factor", "ring_bytes_sent", "paper_volume",
           "collective_time", "comm_price", "summarise", "OPS"]
