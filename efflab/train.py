"""Training a preset from scratch: AdamW, linear warm-up then cosine decay, a progress bar.

``train(preset)`` writes ``<out>/<preset>.safetensors`` and a JSON training record beside it
(config, corpus hash, steps, tokens, wall time, loss curve, final val loss and bits per byte).
A run interrupted with Ctrl-C still saves what it trained so far, marked ``interrupted``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from efflab.checkpoint import CHECKPOINT_DIR, save_checkpoint
from efflab.config import ConfigError, get_preset
from efflab.data import load_corpus, random_batch
from efflab.measure.hardware import environment, pick_device
from efflab.model import build_model
from efflab.workloads import eval_loss, make_optimizer


def lr_at(step: int, max_steps: int, peak_lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Learning rate at ``step``: linear warm-up to ``peak_lr``, cosine down to min_ratio·peak."""
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return peak_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(preset: str = "cpu-small", steps: int | None = None, minutes: float | None = None,
          batch_size: int = 32, seq_len: int | None = None, lr: float = 2e-3,
          warmup: int = 100, seed: int = 0, corpus: str | None = None,
          out: str | Path = CHECKPOINT_DIR, eval_every: int = 250, threads: int | None = None,
          progress: bool = True, device: str | None = None) -> dict:
    """Train ``preset`` for ``steps`` (or as many as ``minutes`` allow) and save a checkpoint.

    Returns the training record that is written beside the checkpoint.
    """
    cfg = get_preset(preset)
    dev = pick_device(cfg, device)
    if steps is None and minutes is None:
        raise ConfigError("steps", None, "an integer >= 1 (or give minutes)")
    if threads is not None:
        torch.set_num_threads(threads)
    T = seq_len or cfg.block_size
    data = load_corpus(corpus)
    model = build_model(cfg, seed, dev)
    opt = make_optimizer(model, lr=lr)
    g = torch.Generator().manual_seed(seed)

    def one_step(step: int, max_steps: int) -> float:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, max_steps, lr, warmup)
        x, y = random_batch(data.train, batch_size, T, g, dev)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t0 = time.perf_counter()
    curve: list[dict] = []
    done = 0
    if steps is None:  # time a few steps, then fix the step count so the schedule is exact
        probe = 6
        curve.append({"step": 0, "train_loss": one_step(0, 10**9)})  # first step: warm-up
        t1 = time.perf_counter()
        for i in range(1, probe):
            curve.append({"step": i, "train_loss": one_step(i, 10**9)})
        per_step = (time.perf_counter() - t1) / (probe - 1)
        steps = max(probe + 1, int(minutes * 60 / per_step))
        done = probe
    status = "complete"
    bar = tqdm(total=steps, initial=done, desc=f"train {preset}", disable=not progress)
    try:
        for step in range(done, steps):
            loss = one_step(step, steps)
            done = step + 1
            bar.update(1)
            if step % 10 == 0:
                curve.append({"step": step, "train_loss": loss})
                bar.set_postfix(loss=f"{loss:.3f}")
            if eval_every and step > 0 and step % eval_every == 0:
                ev = eval_loss(model, data, T, batch_size=8, n_batches=4, device=dev)
                curve.append({"step": step, "val_loss": ev["val_loss"]})
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    final = eval_loss(model, data, T, batch_size=8, n_batches=32, device=dev)
    record = {
        "schema": "efflab.training/1",
        "status": status,
        "preset": preset,
        "config": cfg.__dict__,
        "n_params": model.num_params(),
        "corpus": data.describe(),
        "seed": seed,
        "batch_size": batch_size,
        "seq_len": T,
        "peak_lr": lr,
        "warmup": warmup,
        "steps": done,
        "planned_steps": steps,
        "tokens": done * batch_size * T,
        "seconds": seconds,
        "final": final,
        "curve": curve,
        "env": environment(dev),
    }
    path = Path(out) / f"{preset}.safetensors"
    save_checkpoint(model, path, record)
    record["path"] = str(path)
    return record
