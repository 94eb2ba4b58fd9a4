"""Beyond one process, on PyTorch's own ``torch.distributed`` (torchrun; gloo on CPU, NCCL on GPUs).

| module      | what it holds                                                                  |
|-------------|--------------------------------------------------------------------------------|
| comm        | the α–β model of a collective, its fit with held-out error, the ring formula, the all-reduce timer |
| ddp         | data-parallel training (DDP, bucket size as a knob), the step-time model       |
| zero        | per-rank memory by category: none, ZeRO-1 (ZeroRedundancyOptimizer), ZeRO-2 (FSDP, reshard_after_forward=False), FSDP |
| volume      | bytes sent per step: the ZeRO paper's 2Ψ / 3Ψ, ring bytes of counted collectives, their α–β price |
| counter     | the dispatch mode that counts a step's c10d collectives (kind, payload bytes)  |
| worker      | the program torchrun starts on every rank (``-m efflab.systems.distributed.worker``)   |
| launch      | start torchrun from a notebook, stream its progress, collect records into the store |
| records     | what a distributed record is, and the tables charts and checks read            |

The same worker runs two processes on a laptop and many on a cluster: only the ``torchrun``
command line changes (see the README, "Running on several GPUs or machines").
"""

from efflab.systems.distributed.comm import (
    AlphaBeta,
    alpha_beta_time,
    extrapolate,
    fit_alpha_beta,
    fit_with_held_out,
    message_sizes,
    ring_allreduce_time,
)
from efflab.systems.distributed.ddp import (
    DataParallelConfig,
    comm_time,
    n_buckets,
    predicted_step_time,
    step_time_at,
)
from efflab.systems.distributed.launcher import (
    LaunchError,
    LaunchResult,
    collect_records,
    launch,
    launch_refusal,
)
from efflab.systems.distributed.records import (
    allreduce_frame,
    ddp_frame,
    fit_frame,
    fit_line,
    loss_frame,
    memory_frame,
    refusals,
)
from efflab.systems.distributed.worker import run_local
from efflab.systems.distributed.zero import SHARDINGS, ShardingConfig, fsdp_refusal, memory_per_rank

__all__ = ["AlphaBeta", "alpha_beta_time", "extrapolate", "fit_alpha_beta", "fit_with_held_out",
           "message_sizes", "ring_allreduce_time", "DataParallelConfig", "comm_time", "n_buckets",
           "predicted_step_time", "step_time_at", "LaunchError", "LaunchResult", "launch",
           "collect_records",
           "launch_refusal", "allreduce_frame", "ddp_frame", "fit_frame", "fit_line",
           "loss_frame", "memory_frame", "refusals", "run_local", "SHARDINGS", "ShardingConfig",
           "fsdp_refusal", "memory_per_rank"]
