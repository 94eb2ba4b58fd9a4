"""FLOPs of one step: counted by PyTorch's FlopCounterMode, with attention added from the formula
where the counter cannot see it, and the classic 6·N·tokens estimate beside it.

Two counts of a model's weights, for two uses:

- :func:`compute_params` — the N of C = 6·N·D (:func:`estimate_6n`): every parameter of the
  blocks (matrices, biases, LayerNorm gains) plus the output head, as Kaplan et al. count
  "non-embedding" parameters; the token and position lookups are reads, not matmuls.
- :func:`matmul_weights` — only the matrix entries a token is multiplied by (projections, MLP,
  output head): 2 FLOPs each per token, what a single token's forward costs exactly
  (``studies.kv_cache.new_token_flops``). Smaller than ``compute_params`` by the biases and norms.

PyTorch's counter has formulas for matmuls and for the CUDA attention kernels, but not for the
CPU flash-attention kernel that ``scaled_dot_product_attention`` uses on CPU: there efflab adds
the attention FLOPs from the formula (4·B·nh·T·S·hs forward, twice that backward) and says so
in the record (``attention_source``).
"""

from __future__ import annotations

from torch.utils.flop_counter import FlopCounterMode

from efflab.core.config import ModelConfig


def attention_flops(cfg: ModelConfig, batch_size: int, q_len: int, k_len: int,
                    backward: bool) -> int:
    """q·kᵀ and p·v: 2·(B·nh·T·S·hs) multiply-adds each, per layer; backward costs twice that."""
    fwd = 4 * batch_size * cfg.n_head * q_len * k_len * cfg.head_dim * cfg.n_layer
    return fwd * (3 if backward else 1)


def compute_params(cfg: ModelConfig) -> int:
    """N in C = 6·N·D: every block parameter (weights, biases, norms) plus the output head
    (vocab × width; tied to the token table). The token and position lookups are left out."""
    return cfg.n_params(include_embeddings=False) + cfg.vocab_size * cfg.n_embd


def matmul_weights(cfg: ModelConfig) -> int:
    """Matrix entries a token is multiplied by on its way through (q/k/v and output
    projections, MLP up and down, output head): no biases, no norms, no lookups."""
    C, kv = cfg.n_embd, cfg.kv_heads * cfg.head_dim
    return cfg.n_layer * (C * (C + 2 * kv) + C * C + 8 * C * C) + cfg.vocab_size * C


def estimate_6n(cfg: ModelConfig, tokens: float, train: bool = True) -> float:
    """C = 6·N·D (Kaplan et al. 2020, §2.1): 2 FLOPs per weight per token forward, 4 more
    backward, with N = :func:`compute_params`; ``train=False``: 2·N·D, the forward alone."""
    return (6 if train else 2) * compute_params(cfg) * tokens


def count_flops(step, cfg: ModelConfig, batch_size: int, q_len: int, k_len: int,
                backward: bool) -> dict:
    """Run ``step()`` once under the counter; return counted, attention-added and total FLOPs."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    counted = int(counter.get_total_flops())
    ops = {str(op) for op in counter.get_flop_counts().get("Global", {})}
    saw_attention = any("scaled_dot_product" in op for op in ops)
    added = 0 if saw_attention else attention_flops(cfg, batch_size, q_len, k_len, backward)
    return {
        "per_step": counted + added,
        "counted": counted,
        "attention_added": added,
        "attention_source": "counter" if saw_attention else "formula",
    }


def step_flops_estimate(cfg: ModelConfig, knobs) -> int:
    """A step's FLOPs from formulas alone (no model run): 6N or 2N per token plus attention.

    What a refusal check uses to predict, before any work, how long a step would take.
    """
    T = knobs.resolve_seq_len(cfg)
    train = knobs.workload == "train"
    if knobs.workload == "decode":
        tokens, q_len, k_len = knobs.batch_size, 1, T + knobs.gen_tokens
    else:
        tokens, q_len, k_len = knobs.batch_size * T, T, T
    return (estimate_6n(cfg, tokens, train)
            + attention_flops(cfg, knobs.batch_size, q_len, k_len, backward=train))
