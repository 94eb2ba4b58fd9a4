"""What theory predicts for a step: the roofline bound and the memory formula.

A step cannot run faster than its FLOPs at this machine's measured peak, nor faster than the
bytes it must move at this machine's measured bandwidth:

    time ≥ max(FLOPs / peak FLOP/s, bytes / bandwidth)

Arithmetic intensity (FLOPs per byte) against the machine balance (peak / bandwidth) says which
wall a step hits: below the balance it is memory-bound, above it compute-bound. Batching raises
the intensity of decode (the weights are read once for all B sequences), which is why its
throughput grows with B until it meets the compute roof.
"""

from __future__ import annotations

from efflab.core.config import ModelConfig
from efflab.measurement.memory import predict_memory


def bytes_moved(cfg: ModelConfig, workload: str, batch_size: int, seq_len: int,
                gen_tokens: int = 0, bytes_per_el: int = 4, weight_bytes: int | None = None) -> int:
    """A lower estimate of DRAM traffic for one step.

    train: weights read three times (forward, input-gradient, weight-gradient), gradients
    written once, AdamW reads p, g, m, v and writes p, m, v (11 passes over N), plus every saved
    activation written and read back. eval/prefill: weights once, intermediates written and read.
    decode: weights once plus the whole KV cache read for one token. ``weight_bytes`` is the
    model's stored size when techniques change it (quantized or bf16 weights, experts).
    """
    mem = predict_memory(cfg, workload, batch_size, seq_len, gen_tokens, bytes_per_el)["by_category"]
    w = mem["parameters"] if weight_bytes is None else weight_bytes
    if workload == "train":
        acts = (17 * batch_size * seq_len * cfg.n_embd * cfg.n_layer) * bytes_per_el
        return 11 * w + 2 * acts
    if workload in ("eval", "prefill"):
        return w + 2 * mem["other"] + mem["kv_cache"]
    return w + mem["kv_cache"]  # decode


def roofline(flops: float, nbytes: float, tokens: int, peak_flops: float,
             bandwidth: float) -> dict:
    """The roofline bound for a step of ``flops`` and ``nbytes`` that processes ``tokens``."""
    t_compute = flops / peak_flops
    t_memory = nbytes / bandwidth
    t = max(t_compute, t_memory)
    return {
        "step_ms_lower_bound": t * 1e3,
        "tokens_per_s_upper_bound": tokens / t if t > 0 else None,
        "arithmetic_intensity": flops / nbytes if nbytes else None,
        "machine_balance": peak_flops / bandwidth,
        "bound": "compute" if t_compute >= t_memory else "memory",
        "bytes_per_step": nbytes,
    }


def decode_bound_tokens_per_s(bandwidth: float, bytes_per_token: float, batch_size: int = 1) -> float:
    """Decoding reads every weight once per step and uses it for all B sequences, so at best
    ``tokens/s = B · bandwidth / bytes read per step`` (the memory roof of decoding; at
    B = 1, bandwidth ÷ bytes per token)."""
    return batch_size * bandwidth / bytes_per_token


def throughput(batch_size: int, tokens_per_sequence: int, latency_s: float) -> float:
    """Tokens per second of a step that processes B sequences of T tokens in L(B) seconds:
    ``B · T / L(B)`` — batching pays while L(B) grows slower than B."""
    return batch_size * tokens_per_sequence / latency_s
