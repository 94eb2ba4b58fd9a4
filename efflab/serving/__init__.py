"""A small serving engine in plain PyTorch (lesson 11).

- :mod:`~efflab.serving.stream` — seeded Poisson request streams;
- :mod:`~efflab.serving.kv_pool` — the KV pool, paged blocks or contiguous slots, waste counted;
- :mod:`~efflab.serving.paged_forward` — the GPT's forward over a ragged batch, keys in the pool;
- :mod:`~efflab.serving.engine` — queue + scheduler (static / continuous) + clock, and metrics;
- :mod:`~efflab.serving.load` — measured capacity, load sweeps, the knee.
"""

from efflab.serving.engine import POLICIES, CostModelClock, Engine, MeasuredClock, summarize_run
from efflab.serving.kv_pool import LAYOUTS, KVPool, OutOfBlocks, SeqSlot
from efflab.serving.load import capacity, compare_at_knee, knee, load_sweep, serve_once
from efflab.serving.paged_forward import paged_forward
from efflab.serving.stream import Request, poisson_stream

__all__ = ["POLICIES", "LAYOUTS", "Engine", "MeasuredClock", "CostModelClock", "summarize_run",
           "KVPool", "OutOfBlocks", "SeqSlot", "paged_forward", "Request", "poisson_stream",
           "capacity", "load_sweep", "serve_once", "knee", "compare_at_knee"]
