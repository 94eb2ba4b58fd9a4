"""Training: the one loop every trainer in efflab runs, and the record a checkpoint carries.

:func:`run_training` is the loop: AdamW (decay on matrices only), a learning rate that warms up
linearly and decays along a cosine (or stays constant), gradient clipping, the techniques'
auxiliary losses (MoE load balancing, through ``optimizer_step``), optional autocast and loss
scaling, an optional loss of the caller's (distillation's soft targets), an evaluation every k
steps and a progress bar. Batches come from a generator seeded once per run, so two runs with
the same seed see the same batches in the same order. Every trainer calls it: :func:`train`
and :func:`train_curves` here, ``studies.shapes.train_shape``, ``studies.scaling.train_run``,
``studies.distill.compare_students`` and ``studies.compression.finetune``.

``train(preset)`` writes ``<out>/<preset>.safetensors`` and a JSON training record beside it
(:func:`build_training_record`: config, corpus hash, steps, tokens, wall time, loss curve, final val
loss and bits per byte). A run interrupted with Ctrl-C still saves what it trained so far,
marked ``interrupted``.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from efflab.core import weights as _weights
from efflab.core.config import ConfigError, Knobs, get_preset, resolve_preset
from efflab.core.data import load_corpus, random_batch
from efflab.core.model import GPT, build_model
from efflab.core.store import Store
from efflab.core.weights import (
    WEIGHTS_DIR,
    read_record,
    save_weights,
    shipped_weights,
    trained_weights,
)
from efflab.measurement.flops import step_flops_estimate
from efflab.measurement.hardware import calibrate, environment, pick_device
from efflab.measurement.workloads import eval_loss, make_optimizer, optimizer_step
from efflab.techniques import apply_techniques, technique_configs
from efflab.techniques.moe import dropped_tokens, expert_load
from efflab.techniques.precision import PrecisionConfig, autocast, grad_scaler, refusal

SCHEDULES = ("cosine", "constant")
PROBE_STEPS = 6  # a run of ``minutes`` times this many steps before it fixes its step count
UNKNOWN_HORIZON = 10**9  # the schedule's horizon while the step count is not fixed yet


def lr_at(step: int, max_steps: int, peak_lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Learning rate at ``step``: linear warm-up to ``peak_lr``, cosine down to min_ratio·peak."""
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return peak_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def model_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default training loss: the model's own next-byte cross-entropy on (x, y)."""
    _, loss = model(x, y)
    return loss


@dataclass
class TrainingRun:
    """What :func:`run_training` did: one row per step, in order.

    A row: ``step`` (steps done, 1-based), ``tokens`` (seen so far), ``train_loss`` (the step's
    loss before its update), ``seconds`` (training compute so far: forward, backward and
    update, without drawing batches or evaluating), and on evaluated steps whatever
    ``evaluate`` returned. The run's own ``seconds`` is the loop's whole wall time, batches and
    evaluations included.
    """

    rows: list[dict] = field(default_factory=list)
    planned_steps: int = 0
    status: str = "complete"  # or "interrupted" (Ctrl-C, when the caller allowed it)
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        """Steps done (fewer than planned only when interrupted)."""
        return len(self.rows)

    @property
    def last_loss(self) -> float:
        """The last step's training loss (nan before any step)."""
        return self.rows[-1]["train_loss"] if self.rows else float("nan")


def run_training(model: GPT, data, *, steps: int | None = None, minutes: float | None = None,
                 batch_size: int, seq_len: int, lr: float, warmup: int = 0,
                 schedule: str = "cosine", seed: int = 0, device="cpu",
                 clip_norm: float | None = 1.0, precision: PrecisionConfig | None = None,
                 loss_fn: Callable[[GPT, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 after_step: Callable[[GPT], None] | None = None, eval_every: int = 0,
                 evaluate: Callable[[GPT], dict] | None = None, eval_last: bool = True,
                 on_row: Callable[[dict], None] | None = None, interruptible: bool = False,
                 progress: bool = True, desc: str = "train", leave: bool = True,
                 optimizer: Callable[[GPT, float], torch.optim.Optimizer] | None = None
                 ) -> TrainingRun:
    """Train ``model`` in place on ``data.train`` with AdamW; return the :class:`TrainingRun`.

    Steps: exactly ``steps``, or — with ``minutes`` — as many as fit: the first
    ``PROBE_STEPS`` are timed (the very first one, a warm-up, left out) and fix the count, so
    the schedule still ends exactly at the last step. Each step: set the learning rate
    (``schedule`` "cosine": :func:`lr_at` with ``warmup``; "constant": ``lr``), draw a
    (``batch_size``, ``seq_len``) batch from a generator seeded with ``seed``, compute
    ``loss_fn(model, x, y)`` (default :func:`model_loss`) under ``precision``'s autocast, then
    ``optimizer_step`` (the techniques' auxiliary losses added, fp16 loss scaling, clipping to
    ``clip_norm``; None: no clipping) and ``after_step(model)`` (e.g. hold pruned weights at
    zero). ``evaluate(model) -> dict`` runs after every ``eval_every`` steps (0: never) and,
    with ``eval_last``, after the last; its fields join that step's row, and the model is put
    back in training mode. ``on_row(row)`` sees every row as it is made (a live chart's hook).
    With ``interruptible``, Ctrl-C ends the run early (status "interrupted") instead of raising.
    ``optimizer(model, lr)`` builds another optimizer (low-bit AdamW); default ``make_optimizer``.
    """
    if schedule not in SCHEDULES:
        raise ConfigError("schedule", schedule, f"one of {', '.join(map(repr, SCHEDULES))}")
    if (steps is None) == (minutes is None):
        raise ConfigError("steps", steps, "an integer >= 1, or None with minutes given")
    loss_fn = loss_fn or model_loss
    opt = make_optimizer(model, lr=lr) if optimizer is None else optimizer(model, lr)
    scaler = grad_scaler(precision, device) if precision is not None else None
    g = torch.Generator().manual_seed(seed)  # the batches: the same for every run of this seed
    run = TrainingRun(planned_steps=steps or 0)
    compute_s = 0.0
    model.train()

    def one_step(step: int, horizon: int) -> dict:
        nonlocal compute_s
        step_lr = lr if schedule == "constant" else lr_at(step, horizon, lr, warmup)
        for group in opt.param_groups:
            group["lr"] = step_lr
        x, y = random_batch(data.train, batch_size, seq_len, g, device)  # (B, T)
        t0 = time.perf_counter()
        with autocast(precision, device) if precision is not None else contextlib.nullcontext():
            loss = loss_fn(model, x, y)
        optimizer_step(model, loss, opt, scaler, clip_norm=clip_norm)
        if after_step is not None:
            after_step(model)
        compute_s += time.perf_counter() - t0
        done = step + 1
        row = {"step": done, "tokens": done * batch_size * seq_len, "train_loss": loss.item(),
               "seconds": compute_s}
        if evaluate is not None and ((eval_every and done % eval_every == 0)
                                     or (eval_last and done == run.planned_steps)):
            row.update(evaluate(model))
            model.train()
        run.rows.append(row)
        if on_row is not None:
            on_row(row)
        return row

    t_start = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=leave)
    try:
        if steps is None:  # time a few steps, then fix the step count so the schedule is exact
            one_step(0, UNKNOWN_HORIZON)  # the first step warms up: not timed
            t1 = time.perf_counter()
            for step in range(1, PROBE_STEPS):
                one_step(step, UNKNOWN_HORIZON)
            per_step = (time.perf_counter() - t1) / (PROBE_STEPS - 1)
            run.planned_steps = max(PROBE_STEPS + 1, int(minutes * 60 / per_step))
            bar.total = run.planned_steps
            bar.update(PROBE_STEPS)
        for step in range(run.steps, run.planned_steps):
            row = one_step(step, run.planned_steps)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{row['train_loss']:.3f}")
    except KeyboardInterrupt:
        if not interruptible:
            raise
        run.status = "interrupted"
        run.planned_steps = run.planned_steps or run.steps
    finally:
        bar.close()
    run.seconds = time.perf_counter() - t_start
    return run


def loss_curve(rows: list[dict], every: int = 10) -> list[dict]:
    """A training record's ``curve`` from a run's rows: ``{"step", "train_loss"}`` every
    ``every`` steps and at the last one, where ``step`` counts the updates before that loss
    (0 for the first batch), and ``{"step", "val_loss"}`` where ``step`` counts the updates
    behind that evaluation."""
    curve = []
    for i, row in enumerate(rows):
        if i % every == 0 or i == len(rows) - 1:
            curve.append({"step": i, "train_loss": row["train_loss"]})
        if "val_loss" in row:
            curve.append({"step": row["step"], "val_loss": row["val_loss"]})
    return curve


def build_training_record(model: GPT, run: TrainingRun, data, *, seed: int, batch_size: int,
                          seq_len: int, lr: float, warmup: int, final: dict, device="cpu",
                          trainer: str | None = None) -> dict:
    """The training record (schema ``efflab.training/1``) saved beside a checkpoint: what was
    trained (config, parameters), on what (corpus, seed, batches), how long (steps planned and
    done, tokens, seconds), the loss curve (:func:`loss_curve`), the final held-out quality and
    the environment; ``trainer`` names the function that trained it when it was not ``train``."""
    cfg = model.cfg
    record = {
        "schema": "efflab.training/1",
        "status": run.status,
        "preset": cfg.name,
        "config": cfg.__dict__,
        "n_params": model.num_params(),
        "corpus": data.describe(),
        "seed": seed,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "peak_lr": lr,
        "warmup": warmup,
        "steps": run.steps,
        "planned_steps": run.planned_steps,
        "tokens": run.steps * batch_size * seq_len,
        "seconds": run.seconds,
        "final": final,
        "curve": loss_curve(run.rows),
        "env": environment(device),
    }
    if trainer is not None:
        record["trainer"] = trainer
    return record


def save_trained(model: GPT, record: dict, out: str | Path) -> dict:
    """Write ``model`` to ``<out>/<record["preset"]>.safetensors`` with ``record`` beside it;
    return the record with the weights' ``path`` added."""
    path = Path(out) / f"{record['preset']}.safetensors"
    save_weights(model, path, record)
    return {**record, "path": str(path)}


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
    run = run_training(
        model, data, steps=steps, minutes=None if steps is not None else minutes,
        batch_size=batch_size, seq_len=T, lr=lr, warmup=warmup, seed=seed, device=dev,
        eval_every=eval_every, eval_last=False, interruptible=True, progress=progress,
        desc=f"train {preset}",
        evaluate=lambda m: {"val_loss": eval_loss(m, data, T, batch_size=8, n_batches=4,
                                                  device=dev)["val_loss"]})
    final = eval_loss(model, data, T, batch_size=8, n_batches=32, device=dev)
    record = build_training_record(model, run, data, seed=seed, batch_size=batch_size,
                                   seq_len=T, lr=lr, warmup=warmup, final=final, device=dev)
    return save_trained(model, record, out)


FIRST_USE_MINUTES = 3.0  # how long a first-use checkpoint trains (efflab train's recipe)


def prepare_checkpoint(preset: str = "auto", device: str | None = None,
                       minutes: float | None = FIRST_USE_MINUTES, steps: int | None = None,
                       folder: str | Path | None = None, progress: bool = True,
                       corpus: str | None = None, **train_kw) -> dict:
    """The training record of ``preset``'s checkpoint, training one here first if there is
    none: the shipped weights where they exist (every CPU preset), else a checkpoint trained
    on this machine (``efflab train``'s recipe for ``minutes``, or ``steps``) and cached in the
    user data folder (``$EFFLAB_DATA/weights``, default ``~/.local/share/efflab/weights``), where
    ``load_model(preset)`` finds it. A cached checkpoint trained on another corpus is trained
    again. Says what it is about to do before it starts; tqdm shows the progress."""
    name = resolve_preset(preset, device)
    shipped = shipped_weights(name)
    if shipped is not None:
        return {**read_record(shipped), "path": str(shipped)}
    out = Path(folder or _weights.TRAINED_DIR)
    data = load_corpus(corpus)
    cached = trained_weights(name, out)
    if cached is not None:
        record = read_record(cached)
        if record.get("corpus", {}).get("sha256") == data.sha256:
            return {**record, "path": str(cached)}
        print(f"the cached {name} checkpoint ({cached}) was trained on another corpus: "
              "training it again")
    dev = pick_device(get_preset(name), device)
    budget = f"{steps} steps" if steps is not None else f"about {minutes:g} minutes"
    print(f"no checkpoint of {name} on this machine yet: training one on {dev} now ({budget}, "
          f"efflab train's recipe), once; it is kept in {out}", flush=True)
    return train(name, steps=steps, minutes=None if steps is not None else minutes,
                 out=out, device=dev, progress=progress, corpus=corpus, **train_kw)


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

    def evaluate(m) -> dict:
        with autocast(techniques.precision, dev):
            ev = {"val_loss": eval_loss(m, data, T, batch_size=8, n_batches=4,
                                        device=dev)["val_loss"]}
        load = expert_load(m)
        if load:
            ev["expert_load"] = load
            ev["dropped"] = dropped_tokens(m)  # per layer, over capacity
        return ev

    def on_row(row: dict) -> None:
        emit({"variant": label, "status": "ok", "step": row["step"], "tokens": row["tokens"],
              "flops": row["step"] * step_flops, "seconds": row["seconds"],
              **{k: v for k, v in row.items() if k not in ("step", "tokens", "seconds")}})

    run_training(model, data, steps=steps, batch_size=batch_size, seq_len=T, lr=lr,
                 warmup=warmup, seed=seed,  # the same batches for every variant
                 device=dev, clip_norm=None, precision=techniques.precision,
                 eval_every=eval_every, evaluate=evaluate if eval_every else None,
                 on_row=on_row, progress=progress, desc=f"train {label}", leave=False)
