"""Model shapes that are not presets, and a trainer that trains them at equal budgets.

Two lessons need models no preset describes:

- **KV-head variants** (lesson 10): one small shape with 4 query heads, trained three times —
  multi-head (4 key/value heads), grouped-query (2) and multi-query (1) attention — on the same
  batches for the same steps, so that bits/byte compares the attention layouts and nothing else.
- **The draft model** (lesson 10, speculative decoding): the cpu-tiny shape with the cpu-small
  context (128), so it can follow the target through its whole context.

``train_shape(cfg, steps)`` is the same recipe as ``efflab train`` (the one loop,
``efflab.measurement.training.run_training``: AdamW, warm-up then cosine, gradient clipping, the
same corpus and split) for any :class:`ModelConfig`; it writes ``<out>/<cfg.name>.safetensors``
and the same training record beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from efflab.core.config import ModelConfig
from efflab.core.data import load_corpus
from efflab.core.model import GPT, build_model
from efflab.core.weights import WEIGHTS_DIR, load_weights
from efflab.measurement.training import build_training_record, run_training, save_trained
from efflab.measurement.workloads import eval_loss

SHAPES_DIR = WEIGHTS_DIR / "shapes"

KV_VARIANTS: dict[str, ModelConfig] = {
    label: ModelConfig(f"tiny-4h-kv{n_kv}", n_layer=2, n_head=4, n_embd=64, block_size=64,
                       n_kv_head=n_kv)
    for label, n_kv in (("MHA", 4), ("GQA", 2), ("MQA", 1))
}
"""Multi-head, grouped-query and multi-query attention at one shape (2 × 64, 4 query heads)."""

DRAFT = ModelConfig("draft-tiny", n_layer=2, n_head=2, n_embd=64, block_size=128)
"""The speculative-decoding draft: cpu-tiny's layers, cpu-small's context."""


def train_shape(cfg: ModelConfig, steps: int, batch_size: int = 16, seq_len: int | None = None,
                lr: float = 2e-3, warmup: int = 50, seed: int = 0, out: str | Path = SHAPES_DIR,
                threads: int | None = None, corpus: str | None = None,
                progress: bool = True) -> dict:
    """Train ``cfg`` for exactly ``steps`` steps; save weights + record to ``out``.

    Every call with the same seed sees the same batches in the same order, so variants trained
    with the same arguments differ only by their shape.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    T = seq_len or cfg.block_size
    data = load_corpus(corpus)
    model = build_model(cfg, seed)
    run = run_training(model, data, steps=steps, batch_size=batch_size, seq_len=T, lr=lr,
                       warmup=warmup, seed=seed, progress=progress, desc=f"train {cfg.name}")
    final = eval_loss(model, data, T, batch_size=8, n_batches=32)
    record = build_training_record(model, run, data, seed=seed, batch_size=batch_size,
                                   seq_len=T, lr=lr, warmup=warmup, final=final,
                                   trainer="efflab.studies.shapes.train_shape")
    return save_trained(model, record, out)


def shape_path(cfg: ModelConfig, folder: str | Path = SHAPES_DIR) -> Path:
    return Path(folder) / f"{cfg.name}.safetensors"


def load_shape(cfg: ModelConfig, folder: str | Path = SHAPES_DIR, device="cpu") -> GPT | None:
    """The trained weights of ``cfg`` if they were shipped, else None (the caller decides
    whether to train live or to fall back to random weights, and says which)."""
    path = shape_path(cfg, folder)
    if not path.exists():
        return None
    return load_weights(path, device)


if __name__ == "__main__":  # python -m efflab.studies.shapes draft|kv STEPS [BATCH]
    import sys

    which, steps = sys.argv[1], int(sys.argv[2])
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    cfgs = [DRAFT] if which == "draft" else list(KV_VARIANTS.values())
    for c in cfgs:
        rec = train_shape(c, steps, batch_size=batch, warmup=min(50, steps // 10), threads=1)
        print(c.name, rec["steps"], f"{rec['seconds']:.0f} s", rec["final"])
