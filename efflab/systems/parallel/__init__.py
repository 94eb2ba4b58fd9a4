"""Splitting the model itself over ranks (lesson 15), on ``torch.distributed`` (gloo on CPU).

| module    | what it holds                                                                      |
|-----------|------------------------------------------------------------------------------------|
| tensor    | Megatron tensor parallelism: column-then-row MLP, attention by heads, f and g      |
| pipeline  | stages, the GPipe and 1F1B schedules, busy spans, the bubble (p − 1)/(m + p − 1)     |
| ring      | context parallelism: ring attention with the (out, lse) block merge                  |
| worker    | the program torchrun starts on every rank (``-m efflab.systems.parallel.worker``)  |
| launching | ``launch_parallel``: lesson 14's launcher path with this worker                     |
| planner   | ``plan_parallel``: every (dp, tp, pp) layout of N devices, memory and step predicted |

``launch_parallel`` loads on first use (it brings the worker and torch.distributed's launcher
with it); the formulas and the pieces below import alone.

Every job trains the unsplit model beside the split one, in the same process, on the same
batches, so each record carries its own evidence that the split computes the same thing.
"""

from efflab.systems.parallel.pipeline import (
    SCHEDULES,
    bubble_fraction,
    peak_in_flight,
    schedule,
    simulate,
)
from efflab.systems.parallel.planner import plan_parallel
from efflab.systems.parallel.ring import merge, ring_attention, score_bytes_per_rank
from efflab.systems.parallel.tensor import (
    column_parallel_linear,
    tp_allreduces_per_step,
    tp_bytes_per_rank,
    tp_comm_values,
    tp_param_counts,
)

__all__ = ["launch_parallel", "plan_parallel", "SCHEDULES", "bubble_fraction", "peak_in_flight", "schedule",
           "simulate", "merge", "ring_attention", "score_bytes_per_rank",
           "column_parallel_linear", "tp_allreduces_per_step", "tp_bytes_per_rank",
           "tp_comm_values", "tp_param_counts"]


def __getattr__(name: str):
    if name == "launch_parallel":
        from efflab.systems.parallel.launching import launch_parallel

        return launch_parallel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
