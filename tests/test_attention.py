"""Invariants of the attention technique: naive, sdpa and the Triton kernel compute one function.

Without CUDA the Triton kernels run in the interpreter (slow): they see small shapes only here.
"""

import os

import torch

if not torch.cuda.is_available():  # before the kernel module decorates its kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from efflab.core.config import ConfigError, get_preset  # noqa: E402
from efflab.core.model import KVCache, build_model  # noqa: E402
from efflab.kernels import flash_attention as fa  # noqa: E402
from efflab.studies.kernel_benchmark import run_benchmark  # noqa: E402
from efflab.techniques import apply_  # noqa: E402
from efflab.techniques import attention as att  # noqa: E402

needs_triton = pytest.mark.skipif(not fa.TRITON_AVAILABLE, reason="triton is not installed")
compiled_triton = pytest.mark.skipif(fa.INTERPRETED, reason="the Triton kernels are interpreted")

IMPL_FNS = {"naive": fa.naive_attention, "blocked": att.blocked_attention, "sdpa": att.SDPACore(),
            "triton": fa.flash_attention}


def _qkv(B, nh, T, S, hs, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, nh, T, hs, generator=g)  # (B, nh, T, hs)
    k = torch.randn(B, nh, S, hs, generator=g)  # (B, nh, S, hs)
    v = torch.randn(B, nh, S, hs, generator=g)  # (B, nh, S, hs)
    do = torch.randn(B, nh, T, hs, generator=g)  # (B, nh, T, hs) upstream gradient
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, do)]


def _out_and_grads(fn, q, k, v, do):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    return out.detach(), dq, dk, dv


# ----------------------------------------------------------------------------- the kernel

def test_interpreter_is_on_without_cuda():
    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"
        assert fa.INTERPRETED is fa.TRITON_AVAILABLE


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's switch is for CPUs")
def test_every_kernel_runs_interpreted_when_triton_was_imported_first():
    # a lesson's usual order: efflab.measurement loads torch's FLOP counter, which imports
    # triton, and only later does a kernel module turn the interpreter on and decorate
    code = ("import sys, torch\n"
            "import efflab, efflab.measurement.flops\n"
            "assert 'triton' in sys.modules\n"
            "from efflab.kernels import cross_entropy as ce, flash_attention as fa, layernorm as ln\n"
            "q = torch.randn(1, 2, 9, 16)\n"
            "assert torch.allclose(fa.flash_attention(q, q, q, block_m=16, block_n=16),\n"
            "                      fa.naive_attention(q, q, q), atol=1e-5)\n"
            "x, w, b = torch.randn(3, 20), torch.randn(20), torch.randn(20)\n"
            "assert torch.allclose(ln.fused_layernorm(x, w, b), ln.layernorm_reference(x, w, b),\n"
            "                      atol=1e-5)\n"
            "logits, t = torch.randn(4, 33), torch.tensor([0, 5, 32, 7])\n"
            "assert torch.allclose(ce.fused_cross_entropy(logits, t),\n"
            "                      ce.cross_entropy_reference(logits, t), atol=1e-5)\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# (B, nh, T, S, hs, block): T or S off the block grid, decode-like T < S, B > 1, nh > 1,
# head sizes that are not a power of two >= 16 (padded in the kernel), default blocks
SHAPES = [
    (1, 1, 17, 17, 32, 16),
    (2, 2, 3, 17, 32, 16),
    (2, 2, 1, 17, 32, 16),
    (2, 3, 40, 40, 24, 16),
    (1, 2, 20, 37, 8, 16),
    (2, 2, 64, 64, 32, None),
]


@needs_triton
@pytest.mark.parametrize("B,nh,T,S,hs,block", SHAPES)
def test_forward_and_gradients_agree_in_fp32(B, nh, T, S, hs, block):
    q, k, v, do = _qkv(B, nh, T, S, hs)
    ref = _out_and_grads(fa.naive_attention, q, k, v, do)
    triton_fn = lambda q, k, v: fa.flash_attention(q, k, v, block_m=block, block_n=block)  # noqa: E731
    for name, fn in (("sdpa", IMPL_FNS["sdpa"]), ("triton", triton_fn)):
        got = _out_and_grads(fn, q, k, v, do)
        for what, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
            assert a.shape == b.shape and a.dtype == b.dtype, (name, what)
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"{name} {what}")


# ----------------------------------------------------------------------------- blocked (plain torch)

@pytest.mark.parametrize("T,S,block", [(128, 128, 64), (150, 150, 64), (100, 170, 64),
                                       (1, 40, 64), (5, 9, 2), (64, 64, 64)])
def test_blocked_attention_is_naive_attention_to_rounding(T, S, block):
    q, k, v, do = _qkv(2, 3, T, S, 16)
    ref = _out_and_grads(fa.naive_attention, q, k, v, do)
    got = _out_and_grads(lambda q, k, v: att.blocked_attention(q, k, v, block), q, k, v, do)
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert a.shape == b.shape, what
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=what)


def test_causal_query_blocks_cover_every_row_and_only_the_keys_it_may_see():
    for T, S, block in [(128, 128, 64), (150, 150, 64), (100, 170, 64), (1, 40, 64), (5, 9, 2)]:
        blocks = att.causal_query_blocks(T, S, block)
        assert [a for a, _, _ in blocks] == list(range(0, T, block))  # in order, no gap
        assert blocks[-1][1] == T and blocks[-1][2] == S  # the last block sees every key
        for a, e, keys in blocks:
            assert 0 < e - a <= block
            assert keys == S - T + e  # the block's last row sees exactly keys 0..keys-1
    # T = S = 128 in blocks of 64: 64·64 + 64·128 scores, 3/4 of the full 128·128
    assert sum((e - a) * keys for a, e, keys in att.causal_query_blocks(128, 128, 64)) == \
        3 * 128 * 128 // 4


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_return_their_dtype_and_match_fp32(dtype):
    q, k, v, do = _qkv(2, 2, 33, 33, 32, dtype=dtype)
    got = _out_and_grads(lambda q, k, v: fa.flash_attention(q, k, v, block_m=16, block_n=16),
                         q, k, v, do)
    ref = _out_and_grads(fa.naive_attention, *(t.float() for t in (q, k, v, do)))
    tol = 3e-2 if dtype == torch.bfloat16 else 5e-3
    for a, b in zip(got, ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=tol, rtol=tol)


@needs_triton
def test_non_contiguous_inputs_are_accepted():
    q, k, v, do = _qkv(2, 2, 8, 8, 16)
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    assert not kt.is_contiguous()
    torch.testing.assert_close(fa.flash_attention(q, kt, v), fa.naive_attention(q, k, v),
                               atol=1e-5, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("bad,match", [
    (lambda q, k, v: (q[0], k, v), "4-D"),
    (lambda q, k, v: (q, k[:, :, :2], v[:, :, :2]), "T <= S"),
    (lambda q, k, v: (q, k, v[..., :8]), "same shape"),
    (lambda q, k, v: (q, k.double(), v.double()), "share a dtype"),
    (lambda q, k, v: (q.double(), k.double(), v.double()), "not supported"),
    (lambda q, k, v: tuple(torch.zeros(1, 1, 4, 512) for _ in range(3)), "head size 512"),
])
def test_clear_errors_for_inputs_the_kernel_cannot_take(bad, match):
    q, k, v, _ = _qkv(1, 1, 4, 4, 16)
    with pytest.raises(ValueError, match=match):
        fa.flash_attention(*bad(q, k, v))
    with pytest.raises(ValueError, match="powers of two"):
        fa.flash_attention(q, k, v, block_m=24)


def test_clear_errors_when_triton_is_missing_or_cannot_run_here(monkeypatch):
    q, k, v, _ = _qkv(1, 1, 4, 4, 16)
    if fa.TRITON_AVAILABLE:
        monkeypatch.setattr(fa, "INTERPRETED", False)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            fa.flash_attention(q, k, v)
    monkeypatch.setattr(fa, "TRITON_AVAILABLE", False)
    with pytest.raises(RuntimeError, match="triton.*not installed"):
        fa.flash_attention(q, k, v)
    monkeypatch.setattr(att, "TRITON_AVAILABLE", False)
    with pytest.raises(ConfigError, match="triton is not installed") as e:
        att.AttentionConfig("triton")
    assert e.value.field == "impl"


def test_importing_without_triton_does_not_crash():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch\n"
        "from efflab.kernels import flash_attention as fa\n"
        "assert fa.TRITON_AVAILABLE is False and fa.INTERPRETED is False\n"
        "q = torch.zeros(1, 1, 4, 16)\n"
        "try:\n"
        "    fa.flash_attention(q, q, q)\n"
        "except RuntimeError as e:\n"
        "    assert 'not installed' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "from efflab.techniques import AttentionConfig, apply_\n"
        "AttentionConfig('naive')\n"
        "print('ok')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# ----------------------------------------------------------------------------- the technique

def test_config_is_checked_frozen_and_hashable():
    assert att.AttentionConfig().impl == "sdpa"
    with pytest.raises(ConfigError, match="impl='flash' is not allowed") as e:
        att.AttentionConfig("flash")
    assert e.value.field == "impl" and "naive" in e.value.allowed
    cfg = att.AttentionConfig("naive")
    assert hash(cfg) == hash(att.AttentionConfig("naive"))
    with pytest.raises(AttributeError):
        cfg.impl = "sdpa"
    with pytest.raises(TypeError):
        apply_(build_model(get_preset("cpu-tiny")), "naive")


def _impls():
    return ["naive", "blocked", "sdpa"] + (["triton"] if fa.TRITON_AVAILABLE else [])


def test_set_attention_swaps_every_core_and_print_shows_it():
    model = build_model(get_preset("cpu-tiny"))
    for impl in _impls():
        assert apply_(model, att.AttentionConfig(impl)) is model
        cores = [block.attn.core for block in model.h]
        assert len(cores) == model.cfg.n_layer
        assert all(type(c) is att.CORES[impl] for c in cores)
        assert all(f"impl='{impl}'" in repr(c) for c in cores)
        assert f"impl='{impl}'" in str(model)  # print(model) shows the technique


def test_model_logits_and_gradients_equal_across_impls():
    cfg = get_preset("cpu-tiny")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, cfg.block_size), generator=g)  # (B, T) the full context
    y = torch.randint(0, 256, (2, cfg.block_size), generator=g)
    results = {}
    for impl in _impls():
        model = apply_(build_model(cfg, seed=1), att.AttentionConfig(impl))
        logits, loss = model(x, y)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        results[impl] = (logits.detach(), loss.detach(), grads)
    ref_logits, ref_loss, ref_grads = results["sdpa"]
    for impl, (logits, loss, grads) in results.items():
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4, msg=impl)
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5, msg=impl)
        for n in ref_grads:
            torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-4, rtol=1e-3,
                                       msg=f"{impl} {n}")


@needs_triton
def test_kv_cache_decode_with_the_triton_core_equals_full_recompute():
    model = apply_(build_model(get_preset("cpu-tiny"), seed=3).eval(),
                              att.AttentionConfig("triton"))
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(x)  # (B, T, V) in one pass
        cache = KVCache(model.cfg, 2, 12, "cpu", torch.float32)
        parts = [model(x[:, :5], cache=cache)[0]]  # prefill 5
        parts.append(model(x[:, 5:8], cache=cache)[0])  # a chunk of 3: T=3 < S=8
        for t in range(8, 12):  # then one token at a time: T=1
            parts.append(model(x[:, t:t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_memory_formula_orders_impls_and_matches_what_autograd_keeps():
    for T in (64, 128, 1024):
        naive = att.attention_memory_bytes("naive", 2, 4, T, T, 32)
        assert naive > att.attention_memory_bytes("sdpa", 2, 4, T, T, 32)
        assert naive > att.attention_memory_bytes("triton", 2, 4, T, T, 32)
    assert att.attention_memory_bytes("triton", 2, 4, 64, 64, 32) == 2 * 4 * 64 * 4
    # doubling T quadruples naive's T·S terms, doubles the logsumexp
    assert att.attention_memory_bytes("naive", 1, 1, 128, 128, 32) == \
        4 * att.attention_memory_bytes("naive", 1, 1, 64, 64, 32)
    assert att.attention_memory_bytes("sdpa", 1, 1, 128, 128, 32) == \
        2 * att.attention_memory_bytes("sdpa", 1, 1, 64, 64, 32)
    with pytest.raises(ConfigError):
        att.attention_memory_bytes("flash", 1, 1, 4, 4, 16)
    with pytest.raises(ConfigError):
        att.attention_memory_bytes("naive", 1, 1, 8, 4, 16)

    # measured: the bytes autograd saves beyond q, k, v, out (storages counted once)
    B, nh, T, S, hs = 2, 2, 64, 64, 32
    for impl in _impls():
        q, k, v, _ = _qkv(B, nh, T, S, hs)
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        saved = {}

        def pack(t, saved=saved):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = IMPL_FNS[impl](q, k, v)
        for t in (q, k, v, out):
            saved.pop(t.untyped_storage().data_ptr(), None)
        kept = sum(saved.values())
        predicted = att.attention_memory_bytes(impl, B, nh, T, S, hs)
        if impl in ("naive", "blocked"):  # the formula's peak adds two score gradients
            predicted -= 2 * B * nh * T * S * 4
        assert kept == predicted, impl

    # blocked, over several blocks: each block keeps its probabilities and mask; the peak adds
    # the largest block's two gradients
    B, nh, T, S, hs = 2, 2, 150, 170, 16
    q, k, v, _ = _qkv(B, nh, T, S, hs)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    saved = {}

    def pack_blocked(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_blocked, lambda t: t):
        out = att.blocked_attention(q, k, v)
    for t in (q, k, v, out):
        saved.pop(t.untyped_storage().data_ptr(), None)
    kept, transient = att.attention_kept_and_transient_bytes("blocked", B, nh, T, S)
    # rows 0-63 see 84 keys, 64-127 see 148, 128-149 see 170
    assert kept == sum(rows * keys * (B * nh * 4 + 1) for rows, keys in
                       ((64, 84), (64, 148), (22, 170)))
    assert sum(saved.values()) == kept
    assert transient == 2 * B * nh * 64 * 148 * 4
    assert att.attention_memory_bytes("blocked", B, nh, T, S, hs) == kept + transient
    assert att.attention_memory_bytes("blocked", B, nh, T, S, hs) < \
        att.attention_memory_bytes("naive", B, nh, T, S, hs)
    # one block (T <= 64) is exactly naive
    assert att.attention_memory_bytes("blocked", 2, 4, 64, 64, 32) == \
        att.attention_memory_bytes("naive", 2, 4, 64, 64, 32)
    assert att.model_attention_bytes("blocked", 4, 2, 2, 128, 16) == \
        4 * att.attention_kept_and_transient_bytes("blocked", 2, 2, 128, 128)[0] + \
        att.attention_kept_and_transient_bytes("blocked", 2, 2, 128, 128)[1]


# ----------------------------------------------------------------------------- the benchmark

def test_benchmark_is_declared_as_data():
    b = fa.BENCHMARK
    assert b.x_name == "seq_len" and b.x_vals[0] == 128 and b.x_vals[-1] == 4096
    assert b.line_vals == ("naive", "sdpa", "triton") and b.metric == "ms"
    with pytest.raises(ConfigError):
        fa.AttentionBenchmark(x_name="depth")
    with pytest.raises(ConfigError):
        fa.AttentionBenchmark(line_vals=("naive", "cudnn"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU labelling")
def test_benchmark_runs_on_cpu_and_labels_triton_correctness_only():
    bench = fa.AttentionBenchmark(x_vals=(16, 40), batch_size=1, n_head=2, head_dim=16)
    df = run_benchmark(bench, target_s=0.0, min_repeats=2)
    assert len(df) == 2 * 3 and set(df["provider"]) == {"naive", "sdpa", "triton"}
    assert list(df["seq_len"].unique()) == [16, 40]
    timed = df[df["provider"] != "triton"]
    assert timed["timed"].all() and (timed["ms"] > 0).all() and (timed["n"] >= 2).all()
    assert (timed["max_abs_err"] < 1e-4).all()
    tri = df[df["provider"] == "triton"]
    assert not tri["timed"].any() and tri["ms"].isna().all()
    if fa.TRITON_AVAILABLE:
        assert tri["note"].str.startswith(fa.INTERPRETED_NOTE).all()
        assert (tri["max_abs_err"] < 1e-4).all()  # it ran, for correctness
        small = run_benchmark(fa.AttentionBenchmark(x_vals=(40,), line_vals=("triton",),
                                                       batch_size=1, n_head=1, head_dim=16),
                                 check_max_len=32)
        assert "not run" in small["note"].iloc[0] and math.isnan(small["max_abs_err"].iloc[0])


# ----------------------------------------------------------------------------- CUDA

@pytest.mark.gpu
@needs_triton
@compiled_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("B,nh,T,S,hs", [(2, 4, 128, 128, 64), (2, 4, 77, 200, 64),
                                         (1, 2, 1, 129, 64), (2, 2, 300, 300, 32)])
def test_compiled_kernel_on_cuda_matches_naive(dtype, tol, B, nh, T, S, hs):
    q, k, v, do = _qkv(B, nh, T, S, hs, dtype=dtype, device="cuda")
    got = _out_and_grads(fa.flash_attention, q, k, v, do)
    ref = _out_and_grads(fa.naive_attention, *(t.float() for t in (q, k, v, do)))
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=tol, rtol=tol, msg=what)


@pytest.mark.gpu
@needs_triton
@compiled_triton
def test_benchmark_times_every_provider_on_cuda():
    bench = fa.AttentionBenchmark(x_vals=(128, 256), batch_size=1, n_head=2, head_dim=64)
    df = run_benchmark(bench, target_s=0.05, min_repeats=3)
    assert df["timed"].all() and (df["ms"] > 0).all()
    assert (df["max_abs_err"] < 1e-3).all()
    assert (df["peak_mem_bytes"] > 0).all()


def test_measure_labels_or_refuses_the_interpreted_kernel():
    from efflab.core.config import Knobs
    from efflab.measurement import measure

    if not fa.INTERPRETED:
        pytest.skip("compiled Triton: timings are real")
    small = measure(Knobs(batch_size=1, seq_len=16, attention="triton"), preset="cpu-tiny",
                    quality=False, memory=False)
    assert small["status"] == "ok"
    assert small["latency_ms"]["meaningful"] is False and small["latency_ms"]["n"] == 1
    big = measure(Knobs(batch_size=8, attention="triton"), preset="cpu-small")
    assert big["status"] == "refused" and "interpreted" in big["message"]


@needs_triton
def test_half_precision_tiles_reach_tl_dot_as_they_are_except_where_the_interpreter_is_wrong():
    # fp32 stays exact; fp16 goes to the tensor cores as fp16 (and is tested here, under the
    # interpreter, through the same path); bf16 too, except under the interpreter (wrong dots)
    assert fa._dot_f32(torch.float32) is True
    assert fa._dot_f32(torch.float16) is False
    assert fa._dot_f32(torch.bfloat16) is fa.INTERPRETED
