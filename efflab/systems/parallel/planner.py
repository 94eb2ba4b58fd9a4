"""A planner for 3-D parallelism: rank the (dp, tp, pp) layouts of N devices by predicted step.

What the reader learns: which split to use is arithmetic over numbers this lab measures. For
each layout with dp · tp · pp = N the planner predicts

    memory per device = training state (16 bytes per parameter it holds: fp32 weights,
                        gradients and AdamW's two moments) + the activations it keeps
    step time         = compute ÷ (1 − bubble) + TP all-reduces + pipeline sends + DP all-reduce

with compute = 6 · N_params · tokens ÷ (N · FLOP/s) (every device does 1/N of the FLOPs), the
bubble (p − 1)/(m + p − 1) over m micro-batches of one sequence each, four TP all-reduces per
layer per micro-batch (:func:`~efflab.systems.parallel.tensor.tp_allreduces_per_step`), two
activation-sized messages per micro-batch across each stage boundary, and one gradient
all-reduce over the dp replicas — every collective priced by the α–β fit of lesson 14,
extrapolated round a ring. No overlap of communication with compute is assumed.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", eq. 2, TP without sequence parallelism): s·b·h·(10 + 24/t + 5·a·s/(h·t))
bytes per layer at 2-byte activations, scaled here to the activation width given; a 1F1B stage
0 keeps min(p, m) micro-batches of its L/p layers.

A layout is rejected, with its reason, when tp does not divide the heads, pp exceeds the
layers, dp does not divide the global batch, or the predicted memory exceeds the device's.
"""

from __future__ import annotations

import pandas as pd

from efflab.core.config import ConfigError, ModelConfig
from efflab.systems.distributed.comm import AlphaBeta, extrapolate
from efflab.systems.parallel.pipeline import bubble_fraction
from efflab.systems.parallel.tensor import tp_allreduces_per_step, tp_param_counts


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def activation_bytes_per_layer(cfg: ModelConfig, seq: int, micro_batch: int, tp: int,
                               bytes_per_value: int = 4) -> float:
    """Korthikanti et al. 2022, eq. 2 with tensor parallelism: s·b·h·(10 + 24/t + 5·a·s/(h·t))
    at 2 bytes per activation, scaled to ``bytes_per_value``."""
    s, b, h, a = seq, micro_batch, cfg.n_embd, cfg.n_head
    return s * b * h * (10 + 24 / tp + 5 * a * s / (h * tp)) * bytes_per_value / 2


def layout_memory(cfg: ModelConfig, tp: int, pp: int, seq: int, micro_batches: int,
                  bytes_per_value: int = 4) -> dict:
    """Bytes the busiest device (pipeline stage 0) holds: its training state and activations."""
    counts = tp_param_counts(cfg, tp)
    per_layer_split = counts["split"] / cfg.n_layer
    layers = -(-cfg.n_layer // pp)  # stage 0 gets the extra layer when L does not divide
    params = (layers * (per_layer_split + 6 * cfg.n_embd)  # its blocks: split part + LayerNorms, biases
              + (cfg.vocab_size + cfg.block_size) * cfg.n_embd  # token table and positions
              + (2 * cfg.n_embd if pp == 1 else 0))  # ln_f lives on the last stage
    state = 16 * params
    in_flight = min(pp, micro_batches) if pp > 1 else 1
    acts = in_flight * layers * activation_bytes_per_layer(cfg, seq, 1, tp, bytes_per_value)
    return {"params": params, "state_bytes": state, "activation_bytes": acts,
            "total_bytes": state + acts}


def plan_parallel(cfg: ModelConfig, *, global_batch: int, seq: int, devices: int,
                  device_memory_bytes: float, device_flops: float, fit: AlphaBeta,
                  bytes_per_value: int = 4) -> pd.DataFrame:
    """Every (dp, tp, pp) layout of ``devices``, predicted and ranked (fitting ones first, by
    step time); ``reason`` says why a rejected one is rejected."""
    for name, v in (("global_batch", global_batch), ("seq", seq), ("devices", devices)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(name, v, "an integer >= 1")
    if not (device_memory_bytes > 0 and device_flops > 0):
        raise ConfigError("device_memory_bytes / device_flops", (device_memory_bytes, device_flops),
                          "positive numbers")
    n_params = tp_param_counts(cfg, 1)["full"]
    rows = []
    for tp in _divisors(devices):
        for pp in _divisors(devices // tp):
            dp = devices // (tp * pp)
            row = {"dp": dp, "tp": tp, "pp": pp}
            why = []
            if cfg.n_head % tp:
                why.append(f"tp={tp} does not divide {cfg.n_head} heads")
            if pp > cfg.n_layer:
                why.append(f"pp={pp} exceeds {cfg.n_layer} layers")
            if global_batch % dp:
                why.append(f"dp={dp} does not divide the global batch {global_batch}")
            if why:
                rows.append({**row, "fits": False, "reason": "; ".join(why)})
                continue
            m = global_batch // dp  # micro-batches of one sequence per replica
            mem = layout_memory(cfg, tp, pp, seq, m, bytes_per_value)
            bubble = bubble_fraction(pp, m) if pp > 1 else 0.0
            compute = 6 * n_params * global_batch * seq / (devices * device_flops)
            act_bytes = seq * cfg.n_embd * bytes_per_value  # one micro-batch of one sequence
            layers = -(-cfg.n_layer // pp)
            tp_s = (tp_allreduces_per_step(layers)["total"] * m
                    * float(extrapolate(fit, act_bytes, tp))) if tp > 1 else 0.0
            p2p = fit.alpha_s / (2 * (fit.world_size - 1)) + act_bytes / (
                fit.bandwidth * 2 * (fit.world_size - 1) / fit.world_size)  # one link, one way
            pp_s = 2 * m * p2p if pp > 1 else 0.0
            dp_s = float(extrapolate(fit, 4 * mem["params"], dp)) if dp > 1 else 0.0
            step = compute / (1 - bubble) + tp_s + pp_s + dp_s
            fits = mem["total_bytes"] <= device_memory_bytes
            reason = "" if fits else (f"needs {mem['total_bytes'] / 2**30:,.1f} GiB on stage 0; "
                                      f"a device has {device_memory_bytes / 2**30:,.1f} GiB")
            rows.append({**row, "fits": fits, "reason": reason, "memory_bytes": mem["total_bytes"],
                         "state_bytes": mem["state_bytes"],
                         "activation_bytes": mem["activation_bytes"], "bubble": bubble,
                         "compute_s": compute, "tp_comm_s": tp_s, "pp_comm_s": pp_s,
                         "dp_comm_s": dp_s, "step_s": step})
    out = pd.DataFrame(rows)
    if "step_s" not in out:
        out["step_s"] = float("nan")
    return out.sort_values(["fits", "step_s"], ascending=[False, True],
                           na_position="last").reset_index(drop=True)


__all__ = ["activation_bytes_per_layer", "layout_memory", "plan_parallel"]
