"""Quantization invariants: every fast kernel equals its dequantize reference, the stored bytes
really shrink, the trained model's layers keep an SQNR floor, and a quantized GPT still decodes.

Floors were measured on the shipped cpu-small checkpoint (torch 2.13, AVX2 CPU) and set with a
margin: per-layer weight SQNR min int8 40.4 dB, int4 g32 21.2, g64 19.7, g128 18.5 dB.
"""

import copy
import math

import pytest
import torch
import torch.nn as nn

from efflab.core.config import GROUP_SIZES, PRESETS, ConfigError, Knobs
from efflab.core.model import KVCache, build_model
from efflab.core.weights import load_model
from efflab.techniques import apply_
from efflab.techniques.quantization import (
    Int4WeightOnlyLinear,
    Int8DynamicLinear,
    Int8WeightOnlyLinear,
    QuantizationConfig,
    QuantizedLinear,
    check_fits,
    kernels_available,
    layer_sqnr,
    model_bytes,
    pack_int4,
    sqnr_db,
    unpack_int4,
    weight_bytes_per_token,
)
from efflab.techniques.surgery import block_linears

MODULE_OF = {"int8-weight": Int8WeightOnlyLinear, "int4-weight": Int4WeightOnlyLinear,
             "int8-dynamic": Int8DynamicLinear}
QUANT_MODES = ["int8-weight", "int4-weight", "int8-dynamic"]
# the memory-bound preset proposed for the lesson: fp32 weights ~7x this CPU's 32 MiB L3
CPU_WIDE = PRESETS["cpu-wide"]  # the shipped preset itself, not a copy of its shape


@pytest.fixture(scope="module")
def small():
    """The shipped, trained cpu-small model (fp32); tests copy it before changing it."""
    return load_model("cpu-small").eval()


def _tiny(seed: int = 0):
    return build_model(PRESETS["cpu-tiny"], seed=seed).eval()


# ----------------------------------------------------------------------------- config

def test_config_validates_mode_and_group_size():
    assert QuantizationConfig() == QuantizationConfig("none", 64)
    assert hash(QuantizationConfig("int4-weight", 32)) == hash(QuantizationConfig("int4-weight", 32))
    with pytest.raises(ConfigError) as e:
        QuantizationConfig("int3-weight")
    assert e.value.field == "mode" and "int8-weight" in str(e.value)
    for bad in (48, 0, 512, True, 64.0):
        with pytest.raises(ConfigError) as e:
            QuantizationConfig("int4-weight", bad)
        assert e.value.field == "group_size"
        assert all(str(g) in str(e.value) for g in GROUP_SIZES)


def test_group_size_must_divide_every_in_features():
    tiny = PRESETS["cpu-tiny"]  # width 64: attn and c_fc read 64 features
    with pytest.raises(ConfigError) as e:
        check_fits(tiny, QuantizationConfig("int4-weight", 128))
    assert e.value.field == "group_size" and e.value.value == 128
    assert "32, 64" in str(e.value)  # the group sizes that would fit
    check_fits(tiny, QuantizationConfig("int4-weight", 64))
    check_fits(tiny, QuantizationConfig("int8-weight", 256))  # per-channel modes ignore group_size
    for g in GROUP_SIZES:
        check_fits(CPU_WIDE, QuantizationConfig("int4-weight", g))

    model = _tiny()
    before = [type(m) for _, m in block_linears(model)]
    with pytest.raises(ConfigError) as e:
        apply_(model, QuantizationConfig("int4-weight", 128))
    assert e.value.field == "group_size"
    assert [type(m) for _, m in block_linears(model)] == before  # refused before changing
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())


# ----------------------------------------------------------------------------- fast == reference

@pytest.mark.parametrize("mode", QUANT_MODES)
@pytest.mark.parametrize("layer", ["attn.c_attn", "mlp.c_proj"])
def test_fast_kernel_matches_dequantize_reference(small, mode, layer):
    linear = small.h[1].get_submodule(layer)
    q = MODULE_OF[mode].from_linear(linear, QuantizationConfig(mode, 64))
    needs = {"int8-weight": "int8pack", "int4-weight": "int4pack", "int8-dynamic": "int_mm"}[mode]
    if not kernels_available()[needs]:  # the fast path would be the reference itself
        pytest.skip(f"{needs} kernel unavailable here: {mode} runs its reference path only")
    if mode == "int8-weight":
        assert q.kernel.startswith("aten._weight_int8pack_mm")
    if mode == "int4-weight":
        assert q.kernel.startswith("aten._weight_int4pack_mm_for_cpu")
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 1, linear.in_features), (3, 17, linear.in_features)]:  # decode, prefill
        x = torch.randn(*shape, generator=g)
        y, ref = q(x), q.reference_forward(x)
        assert y.dtype == torch.float32 and y.shape == (*shape[:-1], linear.out_features)
        err = (y - ref).abs().max() / ref.abs().max()
        if mode == "int8-dynamic":  # integer matmul is exact; only the fp32 rescale rounds
            assert err < 1e-5
        else:  # the kernel reads bf16 activations and writes bf16: 8 significant bits
            assert err < 1e-2
            assert sqnr_db(ref, y) > 45  # measured ~52 dB


def test_kernels_without_bias_and_plain_int4_fallback():
    torch.manual_seed(0)
    x = torch.randn(4, 128)
    lin = nn.Linear(128, 48, bias=False)  # 48 rows: a partial block for the int4 kernel
    for mode in QUANT_MODES:
        q = MODULE_OF[mode].from_linear(lin, QuantizationConfig(mode, 32))
        y, ref = q(x), q.reference_forward(x)
        assert (y - ref).abs().max() <= 1e-2 * ref.abs().max()
    odd = nn.Linear(64, 40)  # 40 rows: not a multiple of 16, the int4 kernel cannot pack it
    q = Int4WeightOnlyLinear.from_linear(odd, QuantizationConfig("int4-weight", 32))
    assert q.layout == "plain" and q.kernel.startswith("reference")
    x = torch.randn(2, 5, 64)
    assert torch.equal(q(x), q.reference_forward(x))


def test_int8_dynamic_integer_fallback_equals_int_mm():
    if not kernels_available()["int_mm"]:
        pytest.skip("torch._int_mm unavailable here: the fallback is the only path")
    torch.manual_seed(0)
    q = Int8DynamicLinear.from_linear(nn.Linear(64, 32))
    assert q.use_int_mm
    x = torch.randn(6, 64)
    y = q(x)
    q.use_int_mm = False  # the int32 matmul fallback
    assert torch.equal(q(x), y)


@pytest.mark.parametrize("shape", [(48, 128), (64, 64), (96, 256), (384, 128)])
def test_int4_packed_layouts_round_trip(shape):
    codes = torch.randint(0, 16, shape, generator=torch.Generator().manual_seed(1),
                          dtype=torch.int32)
    plain = pack_int4(codes)
    assert plain.shape == (shape[0], shape[1] // 2) and plain.dtype == torch.uint8
    assert torch.equal(unpack_int4(plain, "plain"), codes.to(torch.uint8))
    if kernels_available()["int4pack"]:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        assert packed.shape == plain.shape
        assert torch.equal(unpack_int4(packed, "aten-cpu"), codes.to(torch.uint8))


# ----------------------------------------------------------------------------- quality

def test_sqnr_db_definition():
    ref = torch.ones(1000)
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)  # noise power 1/100 of the signal


@pytest.mark.parametrize("mode,group_size,floor_db", [
    ("int8-weight", 64, 37.0),
    ("int8-dynamic", 64, 37.0),
    ("int4-weight", 32, 19.0),
    ("int4-weight", 64, 17.5),
    ("int4-weight", 128, 16.5),
])
def test_trained_layers_keep_sqnr_floor(small, mode, group_size, floor_db):
    before = {k: v.clone() for k, v in small.state_dict().items()}
    rows = layer_sqnr(small, QuantizationConfig(mode, group_size))
    assert len(rows) == 4 * small.cfg.n_layer
    assert {r["name"].rsplit(".", 2)[-2] + "." + r["name"].rsplit(".", 1)[-1] for r in rows} == {
        "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    worst = min(rows, key=lambda r: r["sqnr_db"])
    assert worst["sqnr_db"] >= floor_db, worst
    after = small.state_dict()  # layer_sqnr leaves the model alone
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_smaller_groups_track_weights_better(small):
    med = {g: sorted(r["sqnr_db"] for r in layer_sqnr(small, QuantizationConfig("int4-weight", g)))[8]
           for g in (32, 64, 128)}
    assert med[32] > med[64] > med[128]


# ----------------------------------------------------------------------------- bytes

@pytest.mark.parametrize("mode,code_ratio,layer_ratio", [
    ("int8-weight", 1 / 4, 0.26),  # int8 codes + a bf16 scale per row + fp32 bias
    ("int8-dynamic", 1 / 4, 0.27),
    ("int4-weight", 1 / 8, 0.15),  # two codes per byte + bf16 (scale, zero) per 64 + bias
])
def test_stored_bytes_shrink(small, mode, code_ratio, layer_ratio):
    fp32_layers = {n: lin.weight.numel() * 4 + lin.bias.numel() * 4
                   for n, lin in block_linears(small)}
    fp32_weights = {n: lin.weight.numel() * 4 for n, lin in block_linears(small)}
    m = apply_(copy.deepcopy(small), QuantizationConfig(mode, 64))
    q_layers = {n: m.get_submodule(n) for n in fp32_layers}
    for n, q in q_layers.items():
        assert q.qweight.numel() * q.qweight.element_size() == fp32_weights[n] * code_ratio
        assert q.nbytes() <= layer_ratio * fp32_layers[n]
    saved = sum(fp32_layers.values()) - sum(q.nbytes() for q in q_layers.values())
    assert model_bytes(small) - model_bytes(m) == saved  # nothing else changed size


def test_weight_bytes_per_token_counts_what_decoding_reads():
    model = _tiny()
    C = model.cfg.n_embd
    wpe = model.wpe.weight.numel() * 4
    # everything once (the tied wte/lm_head table in full), but only one row of positions
    assert weight_bytes_per_token(model) == model_bytes(model) - wpe + C * 4
    assert model_bytes(model) == model.num_params() * 4
    apply_(model, QuantizationConfig("int4-weight", 32))
    assert weight_bytes_per_token(model) == model_bytes(model) - wpe + C * 4
    assert model.lm_head.weight is model.wte.weight  # the tied head stays full precision


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("mode,group_size,max_rel_diff,floor_db", [
    ("int8-weight", 64, 0.02, 38.0),    # measured: max |diff| 0.0044 of max |logit| 0.96, 44.9 dB
    ("int8-dynamic", 64, 0.02, 36.0),   # 0.0068, 41.9 dB
    ("int4-weight", 32, 0.15, 19.0),    # 0.052, 23.3 dB
    ("int4-weight", 64, 0.15, 18.0),    # 0.062, 22.4 dB
])
def test_quantized_tiny_gpt_prints_and_stays_close(mode, group_size, max_rel_diff, floor_db):
    fp32 = _tiny()
    model = apply_(_tiny(), QuantizationConfig(mode, group_size))
    text = str(model)  # print() folds identical blocks ("2 x Block"): count one block's layers
    assert text.count(MODULE_OF[mode].__name__ + "(") == 4
    assert sum(isinstance(m, MODULE_OF[mode]) for m in model.modules()) == 4 * model.cfg.n_layer
    assert f"bits={8 if mode.startswith('int8') else 4}" in text and "bytes=" in text
    assert (f"group_size={group_size}" if mode == "int4-weight" else "group_size=per-channel") in text
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, QuantizedLinear)
    idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = fp32(idx)
        out, _ = model(idx)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() <= max_rel_diff * ref.abs().max()
    assert sqnr_db(ref, out) >= floor_db


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_quantized_model_decodes_with_kv_cache(mode):
    model = apply_(_tiny(seed=3), QuantizationConfig(mode, 32))
    prompt = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    out = model.generate(prompt, 12, temperature=0)  # greedy, through the KV cache
    assert out.shape == (2, 20) and torch.equal(out[:, :8], prompt)
    with torch.no_grad():  # the cache changes nothing: each step equals a full recompute
        cache = KVCache(model.cfg, 2, 20, "cpu", torch.float32)
        model(out[:, :8], cache=cache)
        for t in range(8, 20):
            step, _ = model(out[:, t:t + 1], cache=cache)
            full, _ = model(out[:, :t + 1])
            # bf16 activations inside the weight-only kernels: an fp32 difference in the last
            # bit (attention over a cache vs a full window) can move a bf16 rounding, ~1e-4 here
            torch.testing.assert_close(step[:, -1], full[:, -1], atol=2e-3, rtol=1e-2)
            if t < 19:
                assert torch.equal(step[:, -1].argmax(-1), out[:, t + 1])


def test_quantizing_twice_is_idempotent_or_refused():
    model = apply_(_tiny(), QuantizationConfig("int8-weight"))
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert apply_(model, QuantizationConfig("int8-weight", 128)) is model  # same scheme: a no-op
    assert apply_(model, QuantizationConfig("none")) is model  # "none" never changes a model
    assert layers == [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    for other in (QuantizationConfig("int4-weight", 32), QuantizationConfig("int8-dynamic")):
        with pytest.raises(ConfigError) as e:
            apply_(model, other)
        assert e.value.field == "mode" and "int8-weight" in str(e.value)
    int4 = apply_(_tiny(), QuantizationConfig("int4-weight", 32))
    assert apply_(int4, QuantizationConfig("int4-weight", 32)) is int4
    with pytest.raises(ConfigError):
        apply_(int4, QuantizationConfig("int4-weight", 64))  # regrouping rounded weights: refused
    with pytest.raises(TypeError):
        apply_(_tiny(), "int8-weight")


def test_wide_preset_is_memory_bound_on_paper():
    llc = 32 << 20
    fp32_bytes = CPU_WIDE.n_params() * 4
    assert 4 * llc < fp32_bytes < 256e6  # several L3s of fp32 weights, still laptop-sized
    assert CPU_WIDE.head_dim == 128


@pytest.mark.parametrize("mode", ["int8-weight", "int4-weight", "int8-dynamic"])
@pytest.mark.parametrize("preset", ["cpu-tiny", "cpu-small"])
def test_predicted_weight_bytes_equal_the_built_model(mode, preset):
    """The technique's own formula (from its layout) predicts the stored bytes exactly — the
    number ``predict_for`` and the memory lesson use."""
    from efflab.core.config import Knobs
    from efflab.measurement.memory import predict_for
    from efflab.techniques.quantization import block_linear_shapes, predicted_weight_bytes

    cfg = PRESETS[preset]
    model = build_model(cfg, seed=0).eval()
    n_params = sum(p.numel() for p in model.parameters())
    apply_(model, QuantizationConfig(mode, 32))
    built = model_bytes(model)
    assert predicted_weight_bytes(block_linear_shapes(cfg), QuantizationConfig(mode, 32), n_params) == built
    knobs = Knobs(workload="eval", quantization=mode, group_size=32)
    assert predict_for(cfg, knobs)["by_category"]["parameters"] == built


# ---- the weights against this machine's cache (lesson 05, section 3) ----------------------------

def _fake_sysfs(tmp_path, sizes):
    for i, s in enumerate(sizes):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "size").write_text(s + "\n")
    return str(tmp_path)


def test_last_level_cache_is_the_largest_level_linux_reports(tmp_path):
    from efflab.studies.quantization import last_level_cache_bytes
    sysfs = _fake_sysfs(tmp_path, ["48K", "32K", "2048K", "105M"])
    assert last_level_cache_bytes("cpu", sysfs=sysfs) == 105 * 1024 ** 2
    # not the first level, not the sum of all levels
    assert last_level_cache_bytes("cpu", sysfs=sysfs) not in (48 * 1024, (48 + 32 + 2048) * 1024
                                                               + 105 * 1024 ** 2)


def test_last_level_cache_is_unknown_where_nothing_is_reported(tmp_path):
    from efflab.studies.quantization import last_level_cache_bytes
    assert last_level_cache_bytes("cpu", sysfs=str(tmp_path / "absent")) is None
    assert last_level_cache_bytes("cpu", sysfs=_fake_sysfs(tmp_path, ["junk"])) is None


def test_cache_fit_verdict_says_fits_or_how_many_times_over():
    from efflab.studies.quantization import cache_fit_verdict
    sizes = {"cpu-small": {"none": 3.4e6, "int4-weight": 0.6e6},
             "cpu-wide": {"none": 229e6, "int4-weight": 30e6}}
    # a 32 MB cache: the small model fits, the wide one in fp32 is 7.2× it, its int4 fits
    v = cache_fit_verdict(sizes, 32_000_000)
    assert "holds 32.0 MB" in v
    assert "`cpu-small` reads none 3.4 MB, int4-weight 0.6 MB per token: none fits, int4-weight fits" in v
    assert "`cpu-wide` reads none 229.0 MB, int4-weight 30.0 MB per token: none is 7.2× it, " \
           "int4-weight fits" in v
    # a machine whose cache holds everything (another machine's honest report: a 260 MiB L3)
    big = cache_fit_verdict(sizes, 260 * 1024 ** 2)
    assert "none fits" in big.split("`cpu-wide`")[1] and "×" not in big
    # a cache size nobody reported: said so, nothing compared
    unknown = cache_fit_verdict(sizes, None)
    assert "unknown" in unknown and "fits" not in unknown and "×" not in unknown


def test_weight_bytes_shrink_with_the_scheme():
    from efflab.studies.quantization import weight_bytes
    b = weight_bytes("cpu-tiny", ("none", "int8-weight", "int4-weight"), 32)
    assert b["none"] > b["int8-weight"] > b["int4-weight"] > 0


# ---- fewer held-out windows (a smoke run's quality): faster, and its interval honestly wider ----

def test_quality_windows_sets_the_count_and_the_interval_widens_with_fewer():
    from efflab.measurement import measure
    from efflab.studies.analysis import quality_difference
    knobs = {"workload": "eval", "batch_size": 2}
    recs = {n: {s: measure(Knobs(quantization=s, group_size=32, **knobs), preset="cpu-tiny",
                           target_s=0.01, memory=False, quality_windows=n)
                for s in ("none", "int4-weight")} for n in (8, 128)}
    for n, by_scheme in recs.items():
        assert all(r["quality"]["windows"] == n == len(r["quality"]["window_losses"])
                   for r in by_scheme.values())
    few, many = (quality_difference(recs[n]["none"], recs[n]["int4-weight"]) for n in (8, 128))
    assert few["paired"] and many["paired"]
    assert few["ci95"] > many["ci95"]  # 16× fewer windows: about 4× wider, never narrower
    assert recs[8]["none"]["quality"]["val_loss_ci95"] > recs[128]["none"]["quality"]["val_loss_ci95"]


def test_quality_windows_default_and_bad_values():
    from efflab.measurement import measure
    from efflab.measurement.workloads import QUALITY_WINDOWS
    rec = measure(Knobs(workload="eval", batch_size=2), preset="cpu-tiny", target_s=0.01,
                  memory=False)
    assert rec["quality"]["windows"] == QUALITY_WINDOWS == 512  # the default is unchanged
    for bad in (1, 0, 2.5, True, "64"):
        with pytest.raises(ConfigError) as e:
            measure(Knobs(workload="eval"), preset="cpu-tiny", quality_windows=bad)
        assert e.value.field == "quality_windows"
