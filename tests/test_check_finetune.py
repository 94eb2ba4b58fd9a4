"""Lesson 16's checks: the right answer passes, plausible wrong ones are rejected with the hint
that names the slip, feedback never shows the value, and the NF4 function is judged on probes
rebuilt from the seed (a hidden check's seed sees other weights)."""

import json

import pytest
import torch

from efflab.check import adam8bit_bytes, judge, lora_trainable, nf4_quantize
from efflab.check.finetune import nf4_probes, reference_nf4
from efflab.core.config import get_preset
from efflab.core.model import build_model
from efflab.core.weights import load_model
from efflab.techniques import LoRAConfig, apply_
from efflab.techniques.lora import trainable_parameters
from efflab.techniques.lowbit_optim import make_lowbit_optimizer, optimizer_state_bytes
from efflab.techniques.nf4 import nf4_levels


@pytest.fixture(autouse=True)
def _answers(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFLAB_ANSWERS", str(tmp_path / "answers.jsonl"))


GIVEN = {"n_layer": 4, "n_embd": 128, "n_head": 4, "r": 8,
         "target_modules": ("c_attn", "c_proj")}
L, C, R = 4, 128, 8
TRUTH = L * R * ((C + 3 * C) + (C + C) + (4 * C + C))  # c_attn, attn.c_proj, mlp.c_proj


def test_lora_trainable_truth_is_what_the_model_trains():
    m = apply_(build_model(get_preset("cpu-small"), 0),
               LoRAConfig(r=8, target_modules=("c_attn", "c_proj")))
    assert trainable_parameters(m) == TRUTH
    fb = lora_trainable(TRUTH, **GIVEN)
    assert fb.passed and fb.status == "correct"


@pytest.mark.parametrize("answer, hint", [
    (L * (C * 3 * C + C * C + 4 * C * C), "not the adapted"),            # counted W itself
    (TRUTH // L, "every block"),                                          # one block only
    (L * R * ((C + 3 * C) + (C + C)), "ends with it"),                    # c_proj matched once
    (L * R * (3 * C + C + C), "two matrices"),                            # only B (r·out)
    (L * R * ((C + C) + (C + C) + (4 * C + C)), "three widths"),          # qkv as C wide
    (TRUTH + 12345, "Linears each target"),                               # unrelated
])
def test_lora_trainable_names_the_slip(answer, hint):
    fb = lora_trainable(answer, **GIVEN)
    assert not fb.passed and fb.status == "wrong"
    assert hint in fb.hint, fb.hint
    assert str(TRUTH) not in fb.expected + fb.hint and f"{TRUTH:,}" not in fb.expected + fb.hint


def test_lora_trainable_rejects_an_unknown_target():
    fb = lora_trainable(1000, **{**GIVEN, "target_modules": ("q_proj",)})
    assert not fb.passed and fb.status == "error"


NUMELS = [49152, 384, 16384, 128, 65536, 512, 128, 100 * 256 + 5]


def _adam8(numels):
    out = 0
    for n in numels:
        out += 2 * (n + 4 * n // 256) if n >= 4096 and n % 256 == 0 else 8 * n
    return out


def test_adam8bit_bytes_truth_is_what_the_optimizer_stores():
    model = load_model("cpu-small", "auto")
    opt = make_lowbit_optimizer(model, bits=8)
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    opt.step()
    numels = [p.numel() for p in model.parameters()]
    assert optimizer_state_bytes(opt) == _adam8(numels)
    assert adam8bit_bytes(_adam8(numels), numels=numels).passed
    assert adam8bit_bytes(_adam8(NUMELS), numels=NUMELS).passed


@pytest.mark.parametrize("answer, hint", [
    (8 * sum(NUMELS), "fp32 AdamW"),
    (_adam8(NUMELS) // 2, "two moments"),
    (sum(2 * n if n >= 4096 and n % 256 == 0 else 8 * n for n in NUMELS), "scale"),
    (sum(2 * (n + 4 * n / 256) for n in NUMELS), "small parameters"),
    (8 * _adam8(NUMELS), "bytes, not bits"),
    (_adam8(NUMELS) / 2**20, "not MiB"),
])
def test_adam8bit_bytes_names_the_slip(answer, hint):
    fb = adam8bit_bytes(answer, numels=NUMELS)
    assert not fb.passed and fb.status == "wrong"
    assert hint in fb.hint, fb.hint
    assert str(_adam8(NUMELS)) not in fb.expected + fb.hint


# ----------------------------------------------------------------------------- NF4 function

def nf4_right(w, block_size):
    levels = nf4_levels()
    blocks = w.reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    idx = (blocks[..., None] / absmax[..., None] - levels).abs().argmin(-1)
    return (levels[idx] * absmax).reshape(w.shape)


def nf4_per_row(w, block_size):
    levels = nf4_levels()
    absmax = w.abs().amax(dim=1, keepdim=True)
    idx = (w[..., None] / absmax[..., None] - levels).abs().argmin(-1)
    return levels[idx] * absmax


def nf4_even_grid(w, block_size):  # symmetric int4: evenly spaced levels
    blocks = w.reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    return ((blocks / absmax * 7).round() / 7 * absmax).reshape(w.shape)


def nf4_round_down(w, block_size):  # the level below, not the nearest
    levels = nf4_levels()
    blocks = w.reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    idx = (torch.bucketize(blocks / absmax, levels, right=True) - 1).clamp(0, 15)
    return (levels[idx] * absmax).reshape(w.shape)


def test_nf4_reference_equals_the_library_and_the_right_answer_passes():
    for p in nf4_probes(16):
        assert torch.allclose(nf4_right(p["w"], p["block_size"]),
                              reference_nf4(p["w"], p["block_size"]), atol=1e-7, rtol=0)
    assert nf4_quantize(nf4_right).passed
    assert nf4_quantize(nf4_right, seed=1616).passed  # a hidden check's seed


@pytest.mark.parametrize("fn, hint", [
    (nf4_per_row, "per block"),
    (nf4_even_grid, "not an even grid"),
    (nf4_round_down, "nearest"),
    (lambda w, block_size: w, "16 levels"),
    (lambda w, block_size: w[:1], "same shape"),
])
def test_nf4_wrong_functions_get_the_hint(fn, hint):
    fb = nf4_quantize(fn)
    assert not fb.passed
    assert hint in fb.hint, fb.hint


def test_nf4_is_judged_on_the_seed_not_on_reported_outputs(tmp_path):
    fb = nf4_quantize(nf4_right, seed=7)
    assert fb.passed
    line = json.loads((tmp_path / "answers.jsonl").read_text().splitlines()[-1])
    ev = line["evidence"]
    assert ev["seed"] == 7 and judge("nf4_quantize", ev).passed
    assert not judge("nf4_quantize", {**ev, "seed": 8}).passed  # other probes, same outputs
