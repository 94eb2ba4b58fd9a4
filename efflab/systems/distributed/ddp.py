"""Data parallelism: the same model on N ranks, each on 1/N of the global batch, gradients averaged.

Every rank holds a full copy of the model and optimizer. A step: each rank runs forward and
backward on its own B/N examples; ``DistributedDataParallel`` then all-reduces (averages) the
gradients, so every rank applies the same update and the copies stay identical. Because each
rank's loss is a mean over B/N examples and the ranks' gradients are averaged, the update is
exactly the gradient of the mean loss over all B examples: **N processes at global batch B train
the same model as one process at batch B** (up to the order of floating-point sums).

DDP does not wait for the whole backward pass. It groups gradients into *buckets* of about
``bucket_cap_mb`` (filled in reverse layer order, the order backward produces them) and starts
each bucket's all-reduce as soon as its last gradient is ready, overlapping communication with
the rest of backward. Small buckets start early but pay the latency α many times; one huge
bucket pays α once but cannot start until backward ends.

The step-time model used here (no overlap: an upper bound when communication and compute
compete for the same cores, as on a 2-core CPU):

    t_step ≈ t_compute(B/N) + Σ_buckets (α + bytes_b / β)

``t_compute`` is measured: the same step with DDP's all-reduce switched off (``no_sync``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from efflab.core.config import ConfigError, check_int, check_keys, check_real, get_preset
from efflab.systems.distributed.comm import AlphaBeta, extrapolate


@dataclass(frozen=True)
class DataParallelConfig:
    """One data-parallel training run: ``preset`` trained ``steps`` AdamW steps at ``global_batch``
    sequences of ``seq_len`` bytes (None: the preset's context), split evenly over the ranks.

    ``bucket_cap_mb``: DDP's gradient bucket size (MiB). ``timing_pairs``: after the loss curve,
    this many (synchronised step, compute-only step) pairs are timed, interleaved, on a fixed
    batch; the first ``warmup`` pairs are not kept.
    """

    preset: str = "cpu-tiny"
    global_batch: int = 8
    seq_len: int | None = None
    steps: int = 20
    bucket_cap_mb: float = 25.0
    lr: float = 1e-3
    seed: int = 0
    timing_pairs: int = 8
    warmup: int = 2

    def __post_init__(self):
        cfg = get_preset(self.preset)
        for name, lo in (("global_batch", 1), ("steps", 1), ("timing_pairs", 0), ("warmup", 0)):
            check_int(name, getattr(self, name), lo=lo)
        check_int("seq_len", self.seq_len, 1, cfg.block_size, optional=True,
                  note=f"for preset {self.preset!r}")
        check_real("bucket_cap_mb", self.bucket_cap_mb, 0, 1024, lo_open=True, note="MiB")
        check_real("lr", self.lr, 0, 1, lo_open=True, hi_open=True)

    def local_batch(self, world_size: int) -> int:
        """Sequences per rank; the global batch must split evenly (else ConfigError)."""
        if self.global_batch % world_size:
            raise ConfigError("global_batch", self.global_batch,
                              f"a multiple of world_size={world_size} (each rank takes an equal "
                              "share, so the averaged gradient is the global batch's)")
        return self.global_batch // world_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataParallelConfig:
        """From a job's JSON; an unknown setting raises ConfigError naming the known ones."""
        check_keys("config", d, sorted(f.name for f in fields(cls)))
        return cls(**d)


# ----------------------------------------------------------------------------- formulas

def comm_time(bucket_bytes, fit: AlphaBeta, world_size: int | None = None) -> float:
    """Σ_b (α + bytes_b/β): seconds to all-reduce every bucket, one after another, at
    ``world_size`` ranks (default: the fit's own; others by the ring extrapolation)."""
    b = np.asarray(list(bucket_bytes), dtype=np.float64)
    if world_size is None or world_size == fit.world_size:
        return float(np.sum(fit.time(b)))
    return float(np.sum(extrapolate(fit, b, world_size)))


def predicted_step_time(compute_s: float, bucket_bytes, fit: AlphaBeta,
                        world_size: int | None = None) -> float:
    """t_step ≈ t_compute + Σ_b (α + bytes_b/β): a data-parallel step with no overlap of
    communication and compute (an upper bound; overlap can hide up to all but the last bucket)."""
    return float(compute_s) + comm_time(bucket_bytes, fit, world_size)


def n_buckets(grad_bytes: int, bucket_cap_mb: float) -> int:
    """About how many buckets DDP makes: ⌈gradient bytes / cap⌉ (DDP keeps whole tensors in a
    bucket and caps its first bucket at 1 MiB, so the real count can be a little higher)."""
    return max(1, math.ceil(grad_bytes / (bucket_cap_mb * 2**20)))


def step_time_at(world_size: int, compute_per_sample_s: float, global_batch: int,
                 bucket_bytes, fit: AlphaBeta) -> float:
    """Predicted step seconds at ``world_size`` ranks, same global batch: the compute shrinks
    to global_batch/N samples per rank, the all-reduce grows by the ring formula."""
    if world_size == 1:
        return compute_per_sample_s * global_batch
    return predicted_step_time(compute_per_sample_s * global_batch / world_size, bucket_bytes,
                               fit, world_size)


# ----------------------------------------------------------------------------- the run

def train_data_parallel(config: DataParallelConfig, rank: int = 0, world_size: int = 1,
                        device: str = "cpu", on_step=None) -> dict:
    """Train ``config`` on this rank (inside an initialised process group when world_size > 1,
    or alone in this process when world_size == 1) and return this rank's result.

    Every rank draws the *same* global batch from the same seeded generator and keeps its
    slice [rank·b, (rank+1)·b): the data split is the only thing that differs between ranks.
    Result: the global mean loss per step (all-reduced), this rank's own shard loss, a parameter
    checksum (equal on every rank if the copies stayed identical), DDP's bucket sizes, and the
    timed (step, compute-only) sample pairs in seconds (each the slowest rank's).
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from efflab.core.data import load_corpus, random_batch
    from efflab.core.model import build_model
    from efflab.measurement.workloads import make_optimizer

    cfg = get_preset(config.preset)
    T = config.seq_len or cfg.block_size
    b = config.local_batch(world_size)
    data = load_corpus()
    module = build_model(cfg, config.seed, device)  # same seed: same start on every rank
    model = module
    if world_size > 1:
        model = DDP(module, bucket_cap_mb=config.bucket_cap_mb,
                    device_ids=[torch.device(device).index or 0] if device.startswith("cuda") else None)
    opt = make_optimizer(module, lr=config.lr)
    g = torch.Generator().manual_seed(config.seed)  # the same batches on every rank

    def step(x, y, sync: bool = True) -> torch.Tensor:
        xs, ys = x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]  # (b, T) this rank's share
        _, loss = model(xs, ys)
        if world_size > 1 and not sync:
            with model.no_sync():  # backward without the all-reduce: compute only
                loss.backward()
        else:
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    losses, local = [], []
    t0 = time.perf_counter()
    for i in range(config.steps):
        x, y = random_batch(data.train, config.global_batch, T, g, device)  # (B, T) global
        loss = step(x, y)
        local.append(float(loss))
        if world_size > 1:
            dist.all_reduce(loss, op=dist.ReduceOp.SUM)
            loss = loss / world_size
        losses.append(float(loss))
        if on_step is not None:
            on_step(i + 1, losses[-1])
    train_s = time.perf_counter() - t0

    # timing: interleaved pairs on one fixed batch, so drift on a shared host hits both alike
    x, y = random_batch(data.train, config.global_batch, T, g, device)
    step_s, compute_s = [], []
    for i in range(config.warmup + config.timing_pairs):
        pair = []
        for sync in (True, False):
            if world_size > 1:
                dist.barrier()
            t1 = time.perf_counter()
            step(x, y, sync)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            pair.append(time.perf_counter() - t1)
        if i >= config.warmup:
            step_s.append(pair[0])
            compute_s.append(pair[1])
    if world_size > 1 and step_s:  # a step is done when the slowest rank is done
        both = torch.tensor([step_s, compute_s], dtype=torch.float64, device=device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        step_s, compute_s = both[0].tolist(), both[1].tolist()

    grad_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    buckets = [grad_bytes]
    ddp_stats = {}
    if world_size > 1:
        info = model._get_ddp_logging_data()  # DDP's own account (a private, stable-in-practice API)
        sizes = info.get("rebuilt_bucket_sizes") or info.get("bucket_sizes") or ""
        buckets = [int(s) for s in str(sizes).split(",") if s.strip()] or buckets
        ddp_stats = {k: info[k] for k in ("avg_backward_compute_time", "avg_backward_comm_time",
                                          "avg_backward_compute_comm_overlap_time")
                     if isinstance(info.get(k), int) and info[k] > 0}
    with torch.no_grad():
        checksum = float(sum(p.double().sum() for p in module.parameters()))
    return {
        "rank": rank, "world_size": world_size, "local_batch": b, "seq_len": T,
        "tokens_per_step": config.global_batch * T,
        "losses": losses, "local_losses": local, "param_checksum": checksum,
        "n_params": module.num_params(), "grad_bytes": int(grad_bytes),
        "bucket_bytes": buckets, "ddp_stats_ns": ddp_stats,
        "step_s": step_s, "compute_s": compute_s, "train_s": train_s,
    }


__all__ = ["DataParallelConfig", "comm_time", "predicted_step_time", "n_buckets", "step_time_at",
           "train_data_parallel"]
