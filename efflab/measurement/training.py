"""Training a preset from scratch: AdamW, linear warm-up then cosine decay, a progress bar.

``train(preset)`` writes ``<out>/<preset>.safetensors`` and a JSON training record beside it
(config, corpus hash, steps, tokens, wall time, loss curve, final val loss and bits per byte).
A run interrupted with Ctrl-C still saves what it trained so far, marked ``interrupted``.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from efflab.core.config import ConfigError, Knobs, get_preset
from efflab.core.data import load_corpus, random_batch
from efflab.core.model import build_model
from efflab.core.store import Store
from efflab.core.weights import WEIGHTS_DIR, save_weights
from efflab.measurement.flops import step_flops_estimate
from efflab.measurement.hardware import calibrate, environment, pick_device
from efflab.measurement.workloads import eval_loss, make_optimizer, optimizer_step
from efflab.techniques import apply_techniques, technique_configs
from efflab.techniques.moe import dropped_tokens, expert_load
from efflab.techniques.precision import autocast, grad_scaler, refusal


def lr_at(step: int, max_steps: int, peak_lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Learning rate at ``step``: linear warm-up to ``peak_lr``, cosine down to min_ratio·peak."""
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return peak_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(preset: str = "cpu-small", steps: int | None = None, minutes: float | None = None,
          batch_size: int = 32, seq_len: int | None = None, lr: float = 2e-3,
          warmup: int = 100, seed: int = 0, corpus: str | None = None,
          out: str | Path = WEIGHTS_DIR, eval_every: int = 250, threads: int | None = None,
          progress: bool = True, device: str | None = None) -> dict:
    """Train ``preset`` for ``steps`` (or as many as ``minutes`` allow) and save the weights.

    Returns the training record that is written beside the weights.
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
        optimizer_step(model, loss, opt, clip_norm=1.0)
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
    save_weights(model, path, record)
    record["path"] = str(path)
    return record


def train_curves(variants: dict, preset: str = "cpu-tiny", steps: int = 100,
                 batch_size: int = 8, seq_len: int | None = None, lr: float = 2e-3,
                 warmup: int = 10, seed: int = 0, eval_every: int = 20, corpus: str | None = None,
                 device: str | None = None, calibration: dict | None = None,
                 on_point=None, progress: bool = True, store=None):
    """Train one fresh model per variant on the same batches, side by side; return a long table.

    ``variants`` maps a label to the Knobs whose techniques the model gets (precision, MoE,
    checkpointing ...). Every variant starts from the same seed and sees the same batches in
    the same order, so the curves differ only by the technique. Rows: variant, step, tokens,
    flops (counted model FLOPs so far), seconds (wall, training only), train_loss or val_loss,
    and — for MoE variants — the expert load. A variant this machine would run far too slowly
    is refused up front (a row with status "refused" and the measured reason).
    ``on_point(row)`` is called for every row as it is produced (a live chart's hook).

    Each variant's rows are kept, once it finishes, in the ``curves`` table of ``store`` (a
    :class:`efflab.Store` or its path; None: the default results store, as predictions are;
    False: not kept) under one run id for the call (``table.attrs["run"]``), so a submission
    carries them and ``efflab class-results`` can compare them across machines.
    """
    cfg = get_preset(preset)
    dev = pick_device(cfg, device)
    T = seq_len or cfg.block_size
    data = load_corpus(corpus)
    cal = calibration or calibrate(dev)
    keep = None if store is False else (store if isinstance(store, Store) else Store(store))
    run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if on_point is not None:
            on_point(row)

    for label, knobs in variants.items():
        if not isinstance(knobs, Knobs):
            raise ConfigError(f"variants[{label!r}]", knobs, "an efflab.Knobs")
        first = len(rows)
        _train_variant(label, knobs, cfg, dev, data, cal, emit, steps=steps,
                       batch_size=batch_size, T=T, lr=lr, warmup=warmup, seed=seed,
                       eval_every=eval_every, progress=progress)
        if keep is not None:
            keep.append_curves(run, rows[first:])
    table = pd.DataFrame(rows)
    table.attrs["run"] = run
    return table


def _train_variant(label: str, knobs: Knobs, cfg, dev, data, cal, emit, *, steps: int,
                   batch_size: int, T: int, lr: float, warmup: int, seed: int, eval_every: int,
                   progress: bool) -> None:
    """One variant of :func:`train_curves`: its rows go to ``emit`` as they are produced."""
    knobs = knobs.replace(batch_size=batch_size, seq_len=T, workload="train")
    techniques = technique_configs(knobs, cfg)
    step_flops = step_flops_estimate(cfg, knobs)
    why = refusal(techniques.precision, step_flops, cal)
    if why:
        emit({"variant": label, "status": "refused", "message": why, "step": 0})
        return
    model = apply_techniques(build_model(cfg, seed, dev), knobs)
    opt = make_optimizer(model, lr=lr)
    scaler = grad_scaler(techniques.precision, dev)
    g = torch.Generator().manual_seed(seed)  # the same batches for every variant
    seconds = 0.0
    bar = tqdm(range(steps), desc=f"train {label}", disable=not progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        x, y = random_batch(data.train, batch_size, T, g, dev)
        t0 = time.perf_counter()
        with autocast(techniques.precision, dev):
            _, loss = model(x, y)
        optimizer_step(model, loss, opt, scaler)
        seconds += time.perf_counter() - t0
        done = step + 1
        row = {"variant": label, "status": "ok", "step": done,
               "tokens": done * batch_size * T, "flops": done * step_flops,
               "seconds": seconds, "train_loss": loss.item()}
        if eval_every and (done % eval_every == 0 or done == steps):
            with autocast(techniques.precision, dev):
                ev = eval_loss(model, data, T, batch_size=8, n_batches=4, device=dev)
            row["val_loss"] = ev["val_loss"]
            load = expert_load(model)
            if load:
                row["expert_load"] = load
                row["dropped"] = dropped_tokens(model)  # per layer, over capacity
        emit(row)
