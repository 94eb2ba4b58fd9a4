"""A small serving engine in plain PyTorch (lesson 11).

- :mod:`~efflab.systems.serving.stream` — seeded Poisson request streams;
- :mod:`~efflab.systems.serving.kv_pool` — the KV pool, paged blocks or contiguous slots, waste counted;
- :mod:`~efflab.systems.serving.paged_forward` — the GPT's forward over a ragged batch, keys in the pool;
- :mod:`~efflab.systems.serving.engine` — queue + scheduler (static / continuous) + clock, and metrics;
- :mod:`~efflab.systems.serving.load` — measured capacity, load sweeps, the knee.
"""

from efflab.systems.serving.engine import (
           POLICIES,
           CostModelClock,
           Engine,
           MeasuredClock,
           summarize_run,
)
from efflab.systems.serving.kv_pool import LAYOUTS, KVPool, OutOfBlocks, SeqSlot
from efflab.systems.serving.load import capacity, compare_at_knee, knee, load_sweep, serve_once
from efflab.systems.serving.paged import paged_forward
from efflab.systems.serving.stream import Request, poisson_stream

__all__ = ["POLICIES", "LAYOUTS", "Engine", "MeasuredClock", "CostModelClock", "summarize_run",
           "KVPool", "OutOfBlocks", "SeqSlot", "paged_forward", "Request", "poisson_stream",
           "capacity", "load_sweep", "serve_once", "knee", "compare_at_knee"]
