"""The one training loop against a hand-written AdamW loop, and the one training record."""

import json
import math

import pytest
import torch

from efflab.core.config import ConfigError, ModelConfig, get_preset
from efflab.core.data import random_batch
from efflab.core.model import build_model
from efflab.core.weights import load_weights, read_record
from efflab.measurement.training import lr_at, run_training, train
from efflab.studies.shapes import train_shape

RECORD_KEYS = {"schema", "status", "preset", "config", "n_params", "corpus", "seed", "batch_size",
               "seq_len", "peak_lr", "warmup", "steps", "planned_steps", "tokens", "seconds",
               "final", "curve", "env"}


def _reference_losses(corpus, steps=3, lr=2e-3, warmup=2, B=4, T=32, seed=0):
    """Three AdamW steps written out by hand: decay on matrices only, betas (0.9, 0.95),
    warm-up then cosine to 10%, clipping at 1, batches from one generator seeded once."""
    model = build_model(get_preset("cpu-tiny"), seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), foreach=True)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        if step < warmup:
            step_lr = lr * (step + 1) / warmup
        else:
            progress = (step - warmup) / max(1, steps - warmup)
            step_lr = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = step_lr
        x, y = random_batch(corpus.train, B, T, g)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, model


def test_the_loop_gives_the_hand_written_losses_bit_for_bit(corpus):
    ref, ref_model = _reference_losses(corpus)
    model = build_model(get_preset("cpu-tiny"), 0)
    run = run_training(model, corpus, steps=3, batch_size=4, seq_len=32, lr=2e-3, warmup=2,
                       seed=0, progress=False)
    assert [r["train_loss"] for r in run.rows] == ref
    assert [r["step"] for r in run.rows] == [1, 2, 3]
    assert run.rows[-1]["tokens"] == 3 * 4 * 32
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert lr_at(2, 3, 2e-3, 2) == pytest.approx(2e-3)  # the cosine starts at the peak


def test_the_loop_evaluates_on_schedule_hooks_and_can_be_interrupted(corpus):
    seen, evaluated = [], []

    def after_step(model):
        if len(seen) == 4:
            raise KeyboardInterrupt
        seen.append(model.training)

    def evaluate(model):
        evaluated.append(model.training)
        model.eval()  # the loop puts it back in training mode
        return {"val_loss": 1.0}

    model = build_model(get_preset("cpu-tiny"), 0)
    run = run_training(model, corpus, steps=5, batch_size=2, seq_len=16, lr=1e-3,
                       schedule="constant", eval_every=2, evaluate=evaluate, after_step=after_step,
                       interruptible=True, progress=False)
    assert run.status == "interrupted" and run.steps == 4 and run.planned_steps == 5
    assert [("val_loss" in r) for r in run.rows] == [False, True, False, True]
    assert seen == [True] * 4 and evaluated == [True, True]

    def stop(model):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # not interruptible: Ctrl-C is the caller's
        run_training(build_model(get_preset("cpu-tiny"), 0), corpus, steps=1, batch_size=2,
                     seq_len=16, lr=1e-3, after_step=stop, progress=False)
    with pytest.raises(ConfigError, match="schedule"):
        run_training(model, corpus, steps=1, batch_size=2, seq_len=16, lr=1e-3,
                     schedule="linear", progress=False)
    with pytest.raises(ConfigError, match="steps"):
        run_training(model, corpus, steps=1, minutes=1.0, batch_size=2, seq_len=16, lr=1e-3,
                     progress=False)


def test_train_and_train_shape_write_the_same_record(tmp_path):
    rec = train("cpu-tiny", steps=12, batch_size=2, seq_len=16, warmup=2, eval_every=5,
                out=tmp_path, progress=False)
    cfg = ModelConfig("tiny-1l", n_layer=1, n_head=2, n_embd=32, block_size=16)
    shape = train_shape(cfg, steps=3, batch_size=2, warmup=1, out=tmp_path, progress=False)
    assert set(rec) == RECORD_KEYS | {"path"}
    assert set(shape) == RECORD_KEYS | {"path", "trainer"}
    on_disk = read_record(rec["path"])
    assert on_disk == json.loads(json.dumps({k: v for k, v in rec.items() if k != "path"}))
    assert on_disk["schema"] == "efflab.training/1" and on_disk["status"] == "complete"
    assert (rec["steps"], rec["planned_steps"], rec["tokens"]) == (12, 12, 12 * 2 * 16)
    # train losses every 10 steps and at the last (step = updates before that loss), val
    # losses after every 5 updates
    assert [(p["step"], next(iter(set(p) - {"step"}))) for p in rec["curve"]] == [
        (0, "train_loss"), (5, "val_loss"), (10, "val_loss"), (10, "train_loss"),
        (11, "train_loss")]
    assert load_weights(shape["path"]).cfg == cfg
    assert shape["trainer"] == "efflab.studies.shapes.train_shape"
    assert shape["preset"] == cfg.name and shape["curve"][-1]["step"] == 2
