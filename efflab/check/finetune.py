"""Checks for lesson 16 (fine-tuning memory): LoRA's trainable parameters for a config, AdamW's
state bytes at 8 bits, and a learner-written NF4 block quantize-dequantize probed on unseen
weights."""

from __future__ import annotations

import torch

from efflab.check.core import (
    Verdict,
    exercise,
    judge_number,
    number,
    probe_outputs,
    probed,
)
from efflab.core.config import ModelConfig
from efflab.techniques.lora import LoRAConfig, lora_param_count
from efflab.techniques.lowbit_optim import MIN_NUMEL
from efflab.techniques.nf4 import nf4_levels, quantize_codebook

PROBE_SEED = 16
# (rows, cols, block_size): blocks whose magnitudes differ up to 100x, so one scale per row fails
NF4_CASES = ((4, 128, 64), (3, 256, 64), (2, 128, 32))
NF4_TOL = 1e-5  # of a block's absmax: float32 rounding of level × absmax stays far below it


def _cfg(n_layer: int, n_embd: int, n_head: int) -> ModelConfig:
    return ModelConfig("exercise", n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=16)


@exercise("lora_trainable", points=1, topic="finetune")
def lora_trainable(answer, *, n_layer, n_embd, n_head, r, target_modules):
    """Trainable parameters when LoRA with rank ``r`` adapts ``target_modules`` of a GPT with
    ``n_layer`` blocks of width ``n_embd`` (every other weight frozen)."""
    LoRAConfig(r=int(r), target_modules=tuple(target_modules))  # a valid config, or it raises
    return {"answer": number(answer), "n_layer": int(n_layer), "n_embd": int(n_embd),
            "n_head": int(n_head), "r": int(r), "target_modules": [str(t) for t in target_modules]}


@lora_trainable.judge_with
def _judge_lora_trainable(ev: dict) -> Verdict:
    cfg = _cfg(int(ev["n_layer"]), int(ev["n_embd"]), int(ev["n_head"]))
    r, targets = int(ev["r"]), tuple(ev["target_modules"])
    conf = LoRAConfig(r=r, target_modules=targets)
    truth = lora_param_count(cfg, conf)
    L, C = cfg.n_layer, cfg.n_embd
    shapes = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C),
              "mlp.c_proj": (4 * C, C)}
    hit = [s for n, s in shapes.items() if conf.matches(n)]
    only_attn_proj = [s for n, s in shapes.items()
                      if conf.matches(n) and not (n == "mlp.c_proj" and "c_proj" in targets
                                                  and "mlp.c_proj" not in targets)]
    qkv_as_one = [(C, C) if s == (C, 3 * C) else s for s in hit]
    return judge_number(
        number(ev["answer"]), truth, rel=0.0, abs_=0.5, unit="parameters",
        expected=f"trainable parameters of LoRA r = {r} on {', '.join(targets)} "
                 f"({L} blocks, width {C})",
        slips=[(L * sum(i * o for i, o in hit), "only the adapters train, not the adapted "
                "weight matrices themselves"),
               (L * sum(r * i * o for i, o in hit), "an adapter is two thin matrices, one from "
                "the input width to r and one from r to the output width"),
               (truth / L, "every block has its own adapters"),
               (L * sum(r * (i + o) for i, o in only_attn_proj), "a target name matches every "
                "module whose name ends with it"),
               (L * sum(r * i for i, o in hit), "each adapter has two matrices, A and B"),
               (L * sum(r * o for i, o in hit), "each adapter has two matrices, A and B"),
               (L * sum(r * (i + o) for i, o in qkv_as_one), "c_attn projects to queries, keys "
                "and values at once: its output is three widths")],
        hint="list the Linears each target name matches in one block, their input and output "
             "widths, and what an adapter adds beside each")


@exercise("adam8bit_bytes", points=1, topic="finetune")
def adam8bit_bytes(answer, *, numels, block_size=256):
    """Bytes of AdamW's state (both moments) at 8 bits for parameters of ``numels`` numbers:
    one byte per value plus an fp32 absmax per block of ``block_size``; parameters under 4096
    numbers, or not a whole number of blocks, keep fp32 moments."""
    return {"answer": number(answer), "numels": [int(n) for n in numels],
            "block_size": int(block_size)}


def _adam_bytes(numels, bs, *, per_param=None, small_fp32=True, scales=True, moments=2):
    total = 0.0
    for n in numels:
        big = n >= MIN_NUMEL and n % bs == 0
        if big or not small_fp32:
            per = per_param if per_param is not None else (1 + (4 / bs if scales else 0))
            total += moments * per * n
        else:
            total += moments * 4 * n
    return total


@adam8bit_bytes.judge_with
def _judge_adam8bit(ev: dict) -> Verdict:
    numels, bs = [int(n) for n in ev["numels"]], int(ev["block_size"])
    truth = _adam_bytes(numels, bs)
    fp32 = 8 * sum(numels)
    return judge_number(
        number(ev["answer"]), truth, rel=0.002, unit="bytes",
        expected=f"bytes of 8-bit AdamW state for {len(numels)} parameters "
                 f"({sum(numels):,} numbers), blocks of {bs}",
        slips=[(fp32, "that is fp32 AdamW's state; the moments are stored in 8 bits"),
               (_adam_bytes(numels, bs, moments=1), "AdamW keeps two moments per parameter"),
               (_adam_bytes(numels, bs, scales=False), "every block also stores its scale"),
               (_adam_bytes(numels, bs, small_fp32=False), "the small parameters keep fp32 "
                "moments"),
               (8 * truth, "give bytes, not bits"),
               (truth / 2**20, "give bytes, not MiB")],
        hint="split the parameters into those stored in 8 bits and those that stay fp32, then "
             "count codes and scales for each moment")


# ----------------------------------------------------------------------------- NF4, a function

def nf4_probes(seed: int = PROBE_SEED) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, k, bs in NF4_CASES:
        w = torch.randn(n, k, generator=g, dtype=torch.float64)
        mag = 10 ** (-2 * torch.rand(n, k // bs, 1, generator=g, dtype=torch.float64))
        out.append({"w": (w.view(n, k // bs, bs) * mag).view(n, k).float(), "block_size": bs})
    return out


def reference_nf4(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """Absmax per block of ``block_size`` consecutive values (row-major), nearest NF4 level."""
    lv = nf4_levels()
    codes, absmax = quantize_codebook(w, lv, block_size)
    return (lv[codes.long()].view(-1, block_size) * absmax[:, None]).view(w.shape)


@exercise("nf4_quantize", points=2, topic="finetune", function=True)
def nf4_quantize(fn, seed: int = PROBE_SEED):
    """``fn(w, block_size) -> w_hat``: NF4 quantize-dequantize — each block of ``block_size``
    consecutive weights scaled by its absmax, each value replaced by the nearest of the 16 NF4
    levels (``efflab.techniques.nf4.nf4_levels()``), times the absmax again (same shape)."""
    probes = nf4_probes(seed)
    outs = probe_outputs(lambda **p: torch.as_tensor(fn(p["w"].clone(), p["block_size"]))
                         .double().tolist(), probes)
    return {"seed": int(seed), "outputs": outs}


@nf4_quantize.judge_with
def _judge_nf4(ev: dict) -> Verdict:
    probes, outs = probed(ev, nf4_probes, PROBE_SEED)
    expected = "each value at the nearest NF4 level of its block, times the block's absmax"
    lv = nf4_levels().double()
    for p, o in zip(probes, outs):
        w, bs = p["w"], p["block_size"]
        case = f"w {tuple(w.shape)}, blocks of {bs}"
        if "error" in o:
            return Verdict(False, expected=expected, got=f"{case}: your function raised {o['error']}",
                           hint="it takes w (rows, cols) float32 and block_size, and returns a "
                                "tensor of w's shape")
        got = torch.tensor(o["out"], dtype=torch.float64)
        if tuple(got.shape) != tuple(w.shape):
            return Verdict(False, expected=expected,
                           got=f"{case}: shape {tuple(got.shape)}, not {tuple(w.shape)}",
                           hint="return the dequantized weights, same shape as w")
        if not torch.isfinite(got).all():
            return Verdict(False, expected=expected, got=f"{case}: inf or nan in the output",
                           hint="an all-zero block needs a guard on its scale")
        ref = reference_nf4(w, bs).double()
        blocks = w.double().reshape(-1, bs)
        absmax = blocks.abs().amax(1, keepdim=True)
        err = ((got.reshape(-1, bs) - ref.reshape(-1, bs)).abs() / absmax.clamp(min=1e-30))
        if err.max().item() <= NF4_TOL:
            continue
        if torch.equal(got, w.double()):
            return Verdict(False, expected=expected, got=f"{case}: returned w unchanged",
                           hint="replace each value by one of the 16 levels")
        g_scaled = got.reshape(-1, bs) / absmax.clamp(min=1e-30)
        on_levels = ((g_scaled[..., None] - lv).abs().amin(-1) <= NF4_TOL).float().mean().item()
        rows = w.double().abs().amax(1, keepdim=True)
        per_row = ((got / rows.clamp(min=1e-30))[..., None] - lv).abs().amin(-1)
        if (per_row <= NF4_TOL).float().mean().item() > 0.99:
            hint = "one absmax per block of block_size consecutive values, not one per row"
        elif on_levels > 0.99:
            hint = ("the values sit on the levels but not the nearest ones: compare each scaled "
                    "value with every level and keep the closest")
        else:
            hint = ("use the 16 NF4 levels (not an even grid), scaled by each block's largest "
                    "|value|")
        return Verdict(False, expected=expected,
                       got=f"{case}: {int((err > NF4_TOL).sum())} of {w.numel()} values off",
                       hint=hint)
    return Verdict(True, expected=expected,
                   got=f"all {len(probes)} cases at the nearest NF4 level of their block")


__all__ = ["lora_trainable", "adam8bit_bytes", "nf4_quantize", "nf4_probes", "reference_nf4"]
