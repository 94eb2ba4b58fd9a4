"""``measure``: one configuration, measured end to end, as one schema-versioned record.

The path: build the model fresh from (preset, seed, weights) -> prepare the workload ->
time it (warm-up, repeats, median with spread) -> track memory by category in a separate
pass -> count FLOPs in another -> MFU against this machine's calibrated peak -> quality on a
fixed held-out slice -> energy from a real counter or "unavailable" -> the environment.

A failure never escapes as a traceback from inside torch: a configuration that cannot run here
comes back with ``status`` "refused" (before any work), "oom" or "error" and a ``message``.
Invalid knobs raise :class:`efflab.core.config.ConfigError` before anything runs.
"""

from __future__ import annotations

import contextlib
import functools
import time
import traceback

import torch

from efflab.core.config import (
    ConfigError,
    Knobs,
    ModelConfig,
    check_int,
    get_preset,
    resolve_preset,
)
from efflab.core.data import CorpusError, load_corpus
from efflab.core.model import build_model
from efflab.core.records import SCHEMA, STATUSES, is_out_of_memory  # noqa: F401  (re-exported)
from efflab.core.weights import WeightsError, load_model, weights_source
from efflab.measurement.context import check_inputs, measurement_context, weights_fingerprint
from efflab.measurement.energy import EnergyMeter
from efflab.measurement.flops import count_flops, estimate_6n
from efflab.measurement.hardware import (
    RefusedError,
    calibrate,
    default_threads,
    environment,
    peak_flops,
    pick_device,
)
from efflab.measurement.memory import measure_memory, predict_for
from efflab.measurement.refusals import refusal_reason
from efflab.measurement.roofline import bytes_moved, roofline
from efflab.measurement.timing import summarize, time_steps
from efflab.measurement.workloads import QUALITY_WINDOWS, heldout_quality, prepare
from efflab.techniques import apply_, apply_techniques, technique_configs
from efflab.techniques.compile import CompileConfig, compile_refusal
from efflab.techniques.precision import COMPUTE_DTYPE, PrecisionConfig, autocast

INTERPRETED_NOTE = ("Triton kernel interpreted on CPU (TRITON_INTERPRET=1): correctness only; "
                    "this timing is not meaningful")


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=64)
def _quality(cfg: ModelConfig, ckpt: str | None, weights_hash: str, corpus_path: str | None,
             device: str, knobs: Knobs, windows: int = QUALITY_WINDOWS) -> dict:
    """Held-out quality of the model as built — weights, number format, quantization, experts —
    on ``windows`` fixed windows (``QUALITY_WINDOWS`` unless asked), with its 95% interval.
    Cached on the weights' content and the window count: it does not depend on batch size,
    attention kernel or checkpointing, which do not change the mathematics (``_quality_knobs`` keeps only what does)."""
    data = load_corpus(corpus_path)
    model = apply_techniques(load_model(cfg.name, ckpt or None, knobs.seed, device), knobs)
    T = min(cfg.block_size, 128)
    with autocast(PrecisionConfig(knobs.precision), device):
        return heldout_quality(model, data, T, windows=windows, device=device)


def _quality_knobs(knobs: Knobs) -> Knobs:
    return knobs.replace(workload="eval", batch_size=8, seq_len=None, threads=None, compile="none",
                         gen_tokens=32, attention="sdpa", checkpointing="none",
                         checkpointing_every=1)


def _shape_knobs(knobs: Knobs) -> Knobs:
    """The knobs that decide a step's model FLOPs: shapes and workload only. Attention kernel and
    precision do not change the FLOPs; checkpointing's recomputation is, by the definition of
    MFU, not counted as model FLOPs."""
    return Knobs(batch_size=knobs.batch_size, seq_len=knobs.seq_len, workload=knobs.workload,
                 gen_tokens=knobs.gen_tokens)


@functools.lru_cache(maxsize=256)
def _flops(cfg: ModelConfig, knobs: Knobs, device: str, corpus_path: str | None) -> dict:
    """FLOPs of one step depend only on shapes: counted once per (preset, shape knobs)."""
    data = load_corpus(corpus_path)
    model = build_model(cfg, knobs.seed, device)
    prep = prepare(knobs.workload, model, data, knobs, device)
    T = knobs.resolve_seq_len(cfg)
    q_len, k_len = (1, T + knobs.gen_tokens // 2) if knobs.workload == "decode" else (T, T)
    return count_flops(prep.step, cfg, knobs.batch_size, q_len, k_len,
                       backward=knobs.workload == "train")


def _base_record(preset: str, knobs: Knobs, budget_bytes: int | None) -> dict:
    return {"schema": SCHEMA, "status": "ok", "message": None, "preset": preset,
            "workload": knobs.workload, "knobs": knobs.to_dict(), "budget_bytes": budget_bytes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def measure(knobs: Knobs | None = None, preset: str = "cpu-small", workload: str | None = None,
            *, weights="auto", corpus: str | None = None, device: str | None = None,
            budget_bytes: int | None = None, target_s: float = 1.0, memory: bool = True,
            quality: bool = True, calibration: dict | None = None,
            quality_windows: int | None = None) -> dict:
    """Measure one configuration and return its record (a plain, JSON-ready dict).

    ``knobs`` defaults to ``Knobs()``; ``workload`` overrides ``knobs.workload``.
    ``weights="auto"`` loads the shipped weights of the preset when there is one (else
    random weights; the record says which). ``budget_bytes`` refuses, before any work, a run
    whose predicted peak memory exceeds it. ``target_s`` is how long the timing pass samples.
    ``quality_windows`` is how many held-out windows the quality is measured on (None:
    ``QUALITY_WINDOWS``); fewer is faster and its 95% interval wider (the record says how many).
    """
    knobs = knobs or Knobs()
    if not isinstance(knobs, Knobs):
        raise ConfigError("knobs", knobs, "an efflab.Knobs instance")
    if workload is not None:
        knobs = knobs.replace(workload=workload)
    windows = check_int("quality_windows", quality_windows, 2, optional=True,
                        note="None: QUALITY_WINDOWS") or QUALITY_WINDOWS
    preset = resolve_preset(preset)  # "auto": the machine's own preset, recorded by name
    cfg = get_preset(preset)
    T = knobs.resolve_seq_len(cfg)  # raises ConfigError naming seq_len / gen_tokens
    if budget_bytes is not None and (not isinstance(budget_bytes, int) or budget_bytes <= 0):
        raise ConfigError("budget_bytes", budget_bytes, "a positive integer number of bytes")
    techniques = technique_configs(knobs, cfg)  # ConfigError for an impossible choice
    # dense weights hold no experts: a mixture-of-experts model starts from random weights
    ckpt = None if knobs.moe_experts else weights_source(preset, weights)
    data = check_inputs(cfg, knobs, ckpt, corpus)  # CorpusError / WeightsError: bad input
    threads = default_threads(knobs.threads)
    rec = _base_record(preset, knobs, budget_bytes)
    predicted = predict_for(cfg, knobs)
    rec["theory"] = {"memory": predicted}
    try:
        dev = pick_device(cfg, device)
    except RefusedError as e:
        return {**rec, "status": "refused", "message": str(e)}
    rec["context"] = measurement_context(preset, knobs, weights=ckpt, corpus_sha256=data.sha256,
                                         device=dev, target_s=target_s, budget_bytes=budget_bytes)
    cal = calibration or calibrate(dev)
    slow = refusal_reason(cfg, knobs, dev, cal)
    interpreted = knobs.attention == "triton" and dev == "cpu"
    if slow:
        return {**rec, "status": "refused", "message": slow}
    why = compile_refusal(CompileConfig(knobs.compile), dev, knobs.quantization)
    if why:
        return {**rec, "status": "refused", "message": why}
    if budget_bytes is not None and predicted["peak_bytes"] > budget_bytes:
        return {**rec, "status": "refused",
                "message": f"predicted peak {predicted['peak_bytes'] / 2**20:.1f} MiB exceeds the "
                           f"budget of {budget_bytes / 2**20:.1f} MiB; not run"}
    n_params = cfg.n_params() + techniques.moe.param_delta(cfg.n_embd, cfg.n_layer)
    rec["model"] = {"preset": preset, "n_params": n_params, "config": cfg.__dict__,
                    "weights": str(ckpt.name) if ckpt else "random-init", "device": dev,
                    "dtype": str(techniques.precision.param_dtype).removeprefix("torch."),
                    "compute_dtype": COMPUTE_DTYPE[knobs.precision]}
    try:
        with _threads(threads):
            rec["env"] = environment(dev)
            rec.update(_measure_body(cfg, knobs, T, dev, ckpt, corpus,
                                     0.0 if interpreted else target_s, memory, quality, cal,
                                     windows))
            if interpreted:  # the Triton interpreter: a correctness check, never a speed
                rec["latency_ms"]["meaningful"] = False
                rec["latency_ms"]["note"] = INTERPRETED_NOTE
            if memory and budget_bytes is not None and rec["memory"]["peak_bytes"] > budget_bytes:
                rec["status"] = "oom"
                rec["message"] = (f"measured peak {rec['memory']['peak_bytes'] / 2**20:.1f} MiB "
                                  f"exceeds the budget of {budget_bytes / 2**20:.1f} MiB")
    except (ConfigError, CorpusError, WeightsError):
        raise
    except (torch.OutOfMemoryError, MemoryError) as e:
        rec.update(status="oom", message=f"out of memory: {e}".strip())
    except RuntimeError as e:
        if not is_out_of_memory(str(e)):
            rec.update(status="error", message=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc(limit=8))
        else:  # torch's CPU allocator raises a plain RuntimeError when memory runs out
            rec.update(status="oom", message=f"out of memory: {str(e).splitlines()[0]}")
    except Exception as e:  # recorded, never lost: a sweep goes on past it
        rec.update(status="error", message=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc(limit=8))
    finally:
        if str(device or "").startswith("cuda") or torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rec


def _measure_body(cfg, knobs, T, dev, ckpt, corpus, target_s, memory, quality, cal,
                  windows: int = QUALITY_WINDOWS) -> dict:
    out: dict = {}
    data = load_corpus(corpus)
    model = apply_techniques(load_model(cfg.name, ckpt, knobs.seed, dev), knobs)
    compiled = CompileConfig(knobs.compile)
    prep = prepare(knobs.workload, apply_(model, compiled), data, knobs, dev)  # compiled in place
    if compiled.enabled:  # the first call compiles: timed on its own, never as a step
        t0 = time.perf_counter()
        prep.step()
        if dev == "cuda":
            torch.cuda.synchronize()
        out["compile"] = {"mode": knobs.compile, "backend": "inductor",
                          "cold_s": time.perf_counter() - t0,
                          "note": "first call: tracing + code generation (+ the step itself); "
                                  "a warm disk cache makes it shorter"}

    # 1) timing, with energy read around exactly the timed steps
    meter = EnergyMeter(dev)
    meter.start()
    if target_s > 0:
        samples = time_steps(prep.step, dev, warmup=2, target_s=target_s)
    else:  # a correctness-only run (interpreted kernels): one sample, no warm-up
        samples = time_steps(prep.step, dev, warmup=0, min_repeats=1, target_s=0.0)
    energy = meter.stop()
    lat = summarize(samples)
    step_s = lat["median"] / 1e3
    out["latency_ms"] = {**lat, "unit": prep.unit}
    out["throughput"] = {"tokens_per_s": prep.tokens_per_step / step_s,
                         "tokens_per_step": prep.tokens_per_step,
                         "steps_per_s": 1.0 / step_s}
    if energy["joules"] is not None:
        energy["joules_per_token"] = energy["joules"] / (prep.tokens_per_step * len(samples))
    out["energy"] = energy

    # 2) memory by category: a separate, tracked step (tracking is slow; never timed)
    if memory:
        mem = measure_memory(prep.step, model, prep.optimizer, prep.tagged, prep.inputs)
        if compiled.enabled:
            mem["note"] = ("tracked on the eager path: the tracker's dispatch mode makes "
                           "torch.compile fall back to eager")
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
            prep.step()
            torch.cuda.synchronize()
            mem["device_peak_bytes"] = torch.cuda.max_memory_allocated()
        out["memory"] = mem
    else:
        out["memory"] = {"peak_bytes": None, "by_category": None}

    # 3) FLOPs (counted on a fresh copy: shapes only) and MFU against this machine's peak
    fl = dict(_flops(cfg, _shape_knobs(knobs), dev, corpus))
    dtype = COMPUTE_DTYPE[knobs.precision]
    peak = peak_flops(cal, dtype)
    fl["estimate_6n"] = estimate_6n(cfg, prep.tokens_per_step, knobs.workload == "train")
    fl["achieved_per_s"] = fl["per_step"] / step_s
    fl["peak_per_s"] = peak
    fl["peak_source"] = f"calibrated {dtype} matmul on this machine ({cal['fingerprint']})"
    fl["mfu"] = fl["achieved_per_s"] / peak
    out["flops"] = fl

    # 4) what theory says this step could at best do here
    stored = sum(t.numel() * t.element_size()  # the weights as stored: packed, bf16, experts
                 for t in list(model.parameters()) + list(model.buffers()))
    nbytes = bytes_moved(cfg, knobs.workload, knobs.batch_size, T, knobs.gen_tokens,
                         weight_bytes=stored)
    out["theory"] = {
        "memory": predict_for(cfg, knobs),
        # inference streams weights in and writes little: the read bandwidth bounds it;
        # training writes as much as it reads (gradients, optimizer state): the copy bandwidth
        "roofline": roofline(fl["per_step"], nbytes, prep.tokens_per_step, peak,
                             cal["bandwidth_bytes_per_s"] if knobs.workload == "train"
                             else cal.get("read_bandwidth_bytes_per_s",
                                          cal["bandwidth_bytes_per_s"])),
    }

    # 5) quality of the model as built (cached: it does not depend on the run settings)
    if quality:
        out["quality"] = dict(_quality(cfg, str(ckpt) if ckpt else None,
                                       weights_fingerprint(ckpt), corpus, dev,
                                       _quality_knobs(knobs), windows))
    else:
        out["quality"] = {"val_loss": None, "bits_per_byte": None}
    return out
