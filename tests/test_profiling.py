"""Profiling one step, the memory timeline, and the compile knob (no compilation here: it costs
tens of seconds cold; the compile path is exercised by benchmarks/fusion.py)."""

import json

import pytest
import torch

import efflab
from efflab.core.config import ConfigError, get_preset
from efflab.core.model import build_model
from efflab.measurement.flops import attention_flops, count_flops
from efflab.measurement.memory_timeline import memory_timeline
from efflab.measurement.profiling import (
    adamw_cost,
    kernel_count,
    matmul_cost,
    op_cost,
    op_kind,
    profile_workload,
    roof_bound,
    roofline_points,
)
from efflab.techniques import compile as comp

TINY = get_preset("cpu-tiny")


# ----------------------------------------------------------------------------- costs from shapes

def test_matmul_costs_from_every_spelling_agree():
    want = matmul_cost(256, 64, 192, bias=True)
    assert want == (2 * 256 * 64 * 192 + 256 * 192, (256 * 64 + 64 * 192 + 256 * 192 + 192) * 4)
    assert op_cost("aten::addmm", [[192], [256, 64], [64, 192], [], []]) == want
    assert op_cost("aten::linear", [[4, 64, 64], [192, 64], [192]]) == want
    assert op_cost("aten::mm", [[256, 64], [64, 192]])[0] == 2 * 256 * 64 * 192
    # a matrix-vector product (decoding one token) has a far lower intensity than a batch
    f1, b1 = matmul_cost(1, 512, 512)
    f2, b2 = matmul_cost(512, 512, 512)
    assert f1 / b1 < 1 < 50 < f2 / b2


def test_attention_cost_matches_the_measurement_formula():
    flops, nbytes = op_cost("aten::scaled_dot_product_attention",
                            [[2, 2, 64, 32], [2, 2, 64, 32], [2, 2, 64, 32], [], [], []])
    assert flops * TINY.n_layer == attention_flops(TINY, 2, 64, 64, backward=False)
    assert nbytes == 4 * 2 * 2 * 64 * 32 * 4  # q, k, v read, out written; no T×T scores
    bwd, _ = op_cost("aten::_scaled_dot_product_flash_attention_for_cpu_backward",
                     [[2, 2, 64, 32]] * 5 + [[2, 2, 64]])
    assert bwd == 2 * flops


def test_elementwise_bytes_count_broadcast_and_in_place():
    # add of a (64, 64) position table to (4, 64, 64): reads both, writes the broadcast shape
    assert op_cost("aten::add", [[4, 64, 64], [64, 64], []]) == (4 * 64 * 64,
                                                                 (2 * 4 * 64 * 64 + 64 * 64) * 4)
    # in place: the output is the first input, written once
    assert op_cost("aten::add_", [[8, 8], [8, 8], []])[1] == 3 * 64 * 4
    assert op_cost("aten::gelu", [[4, 256], []]) == (8 * 1024, 2 * 1024 * 4)
    assert op_cost("aten::view", [[4, 4], []]) == (0, 0)
    assert op_cost("aten::_foreach_add_", [[], [], []]) == (None, None)


def test_kinds_and_roofs():
    assert op_kind("aten::addmm", "backward") == "matmul"
    assert op_kind("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "backward") \
        == "attention"
    assert op_kind("aten::native_layer_norm_backward", "backward") == "norm"
    assert op_kind("aten::nll_loss_backward", "backward") == "softmax"
    assert op_kind("aten::gelu", "forward") == "elementwise"
    assert op_kind("aten::mul", "optimizer") == "optimizer"
    assert op_kind("aten::copy_", "forward") == "copy"
    r = roof_bound(0.25, peak_flops=100e9, bandwidth=10e9)  # ridge at 10 FLOP/byte
    assert r == {"attainable_flops_per_s": 2.5e9, "ridge": 10.0, "bound": "memory"}
    assert roof_bound(40, 100e9, 10e9)["bound"] == "compute"
    f, b = adamw_cost(1000)
    assert adamw_cost(1000, fused=True)[1] * 20 == b * 7 and f == 14000


# ----------------------------------------------------------------------------- one profiled step

@pytest.fixture(scope="module")
def train_profile(tmp_path_factory):
    trace = tmp_path_factory.mktemp("trace") / "train.json"
    return profile_workload("cpu-tiny", efflab.Knobs(batch_size=2, seq_len=32), weights=None,
                            trace_path=trace, time_s=0.05, repeats=2)


def test_profile_covers_every_phase_and_kind(train_profile):
    p = train_profile
    assert set(p.ops["phase"]) == {"forward", "backward", "optimizer"}
    assert {"matmul", "attention", "norm", "softmax", "elementwise", "optimizer"} <= set(p.ops["kind"])
    assert p.ops["n"].min() == 2 and (p.ops["time_p25"] <= p.ops["time_p75"]).all()
    # top-level operators run one after another: their times cannot exceed the step's wall
    # time, and they account for most of it
    # the profiled operators' share of the step: a ratio, never above the step itself; how close
    # it comes is a timing, checked by benchmarks/fusion.py on a quiet machine, not here
    assert 0.0 < p.agreement() <= 1.01
    assert kernel_count(p) > 40


def test_profile_flops_agree_with_the_flop_counter(train_profile):
    """Matmul + attention FLOPs from shapes = PyTorch's counter (+ efflab's attention formula)."""
    model = build_model(TINY, 0)
    prep = efflab.measurement.workloads.prepare("train", model, efflab.core.data.load_corpus(),
                                    efflab.Knobs(batch_size=2, seq_len=32))
    counted = count_flops(prep.step, TINY, 2, 32, 32, backward=True)["per_step"]
    ops = train_profile.ops
    ours = (ops.loc[ops["kind"].isin(["matmul", "attention"]), "flops"]).sum()
    bias_adds = 2 * 32 * (3 * 64 + 64 + 4 * 64 + 64) * TINY.n_layer  # addmm's + b, not counted there
    assert ours == pytest.approx(counted + bias_adds, rel=1e-3)


def test_trace_is_chrome_json(train_profile):
    trace = json.loads(train_profile.trace.read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "aten::addmm" in names or "aten::linear" in names


def test_roofline_places_matmuls_above_elementwise(train_profile):
    pts = roofline_points(train_profile, peak_flops=100e9, bandwidth=10e9)
    mm = pts[pts["kind"] == "matmul"]["intensity"]
    ew = pts[pts["kind"] == "elementwise"]["intensity"]
    assert mm.min() > 5 * ew.max()
    assert set(pts.loc[pts["kind"] == "elementwise", "bound"]) == {"memory"}


def test_decode_matmuls_have_low_intensity():
    d = profile_workload("cpu-tiny", efflab.Knobs(batch_size=1, workload="decode"), weights=None,
                         time_s=0.0, repeats=1)
    assert "optimizer" not in set(d.ops["phase"])
    mm = d.ops[d.ops["kind"] == "matmul"]["intensity"]
    assert mm.max() < 1.0  # one token: every weight read for 2 FLOPs


# ----------------------------------------------------------------------------- memory timeline

@pytest.mark.parametrize("batch", [2, 4])
def test_memory_timeline_matches_the_formula(batch):
    tl = memory_timeline("cpu-tiny", efflab.Knobs(batch_size=batch), weights=None)
    pred = tl.predicted["by_category"]
    assert tl.max_by_category["parameters"] == pred["parameters"]  # exactly
    assert tl.max_by_category["optimizer"] == pred["optimizer"]
    assert tl.max_by_category["activations"] == pytest.approx(pred["activations"], rel=0.15)
    s = tl.phase_starts
    assert s["forward"] < s["backward"] < s["optimizer"]
    totals = tl.frame.groupby("event")["bytes"].sum()
    assert totals.max() == tl.peak_bytes
    acts = tl.frame[tl.frame["category"] == "activations"].set_index("event")["bytes"]
    # activations grow through forward and are freed by the end of backward
    assert acts.loc[s["backward"] - 1] == acts.max() or acts.loc[:s["backward"]].max() == acts.max()
    assert acts.iloc[-1] == 0


@pytest.mark.gpu
def test_cuda_snapshot(tmp_path):
    tl = memory_timeline("cpu-tiny", efflab.Knobs(batch_size=2), weights=None,
                         snapshot_path=tmp_path / "snap.pickle")
    assert tl.snapshot is not None and tl.snapshot.stat().st_size > 0


# ----------------------------------------------------------------------------- the compile knob

def test_compile_knob_is_validated():
    with pytest.raises(ConfigError, match="compile='fast'.*'none', 'default', 'max-autotune'"):
        efflab.Knobs(compile="fast")
    assert efflab.Knobs().compile == "none"


def test_compile_refused_without_a_compiler(monkeypatch):
    monkeypatch.setattr(comp, "_cxx_compiler", lambda: None)
    why = comp.compile_refusal(comp.CompileConfig("default"), "cpu")
    assert "C++ compiler" in why
    assert comp.compile_refusal(comp.CompileConfig("none"), "cpu") is None
    monkeypatch.setattr(efflab.measurement.core, "compile_refusal",
                        lambda c, d, q="none": comp.compile_refusal(c, d, q))
    rec = efflab.measure(efflab.Knobs(batch_size=1, compile="default"), preset="cpu-tiny",
                         weights=None, memory=False, quality=False, target_s=0.0)
    assert rec["status"] == "refused" and "C++ compiler" in rec["message"]


def test_compile_with_int4_weights_is_refused_on_cpu_before_any_work():
    why = comp.compile_refusal(comp.CompileConfig("default"), "cpu", "int4-weight")
    assert "int4" in why and "compile='none'" in why
    assert comp.compile_refusal(comp.CompileConfig("none"), "cpu", "int4-weight") is None
    assert comp.compile_refusal(comp.CompileConfig("default"), "cpu", "int8-dynamic") is None
    rec = efflab.measure(efflab.Knobs(batch_size=1, compile="default", quantization="int4-weight",
                                      workload="decode"),
                         preset="cpu-tiny", weights=None, memory=False, quality=False, target_s=0.0)
    assert rec["status"] == "refused" and "int4" in rec["message"]


def test_compile_config_compiles_the_model_in_place():
    model = build_model(TINY, 0)
    keys = list(model.state_dict())
    assert efflab.techniques.apply_(model, comp.CompileConfig("none")) is model
    assert model._compiled_call_impl is None  # eager
    # lazy: nothing compiles until the first call
    assert efflab.techniques.apply_(model, comp.CompileConfig("default")) is model
    assert model._compiled_call_impl is not None  # its calls now go through torch.compile
    assert list(model.state_dict()) == keys  # no "_orig_mod." prefix: the same object


def test_fused_bytes_saved():
    n = 8 * 128 * 512
    # bias add then GELU: eager reads/writes n values twice, fused once
    assert comp.fused_bytes_saved(n, 2) == 2 * n * 4
    assert comp.elementwise_chain_bytes(n, 3, fused=True) == 2 * n * 4
    assert comp.fused_bytes_saved(n, 1) == 0


def test_compile_knob_reaches_the_cli():
    import argparse

    from efflab.cli import _knobs_from

    assert _knobs_from(argparse.Namespace(compile="max-autotune")).compile == "max-autotune"
    with pytest.raises(ConfigError, match="compile"):
        _knobs_from(argparse.Namespace(compile="fastest"))


def test_compile_optimizer_compiles_only_when_asked():
    model = build_model(get_preset("cpu-tiny"))
    opt = torch.optim.AdamW(model.parameters())
    assert comp.compile_optimizer(opt, comp.CompileConfig("none")) is opt
    assert "step" not in vars(opt)  # eager: the class's own step
    assert comp.compile_optimizer(opt, comp.CompileConfig("default")) is opt
    assert "step" in vars(opt) and callable(opt.step)  # this instance's step is the compiled one
    other = torch.optim.AdamW(model.parameters())
    assert "step" not in vars(other)  # other optimizers are untouched


def test_inductor_options_ask_for_the_cpp_wrapper_on_cpu_except_around_checkpointed_blocks():
    model = build_model(get_preset("cpu-tiny"))
    assert comp.inductor_options(model, comp.CompileConfig("default")) == {"cpp_wrapper": True}
    assert comp.inductor_options(model, comp.CompileConfig("max-autotune")) is None
    assert comp.inductor_options(model, comp.CompileConfig("none")) is None
    assert comp.inductor_options(model, comp.CompileConfig("default", cpp_wrapper=False)) is None
    blocks = efflab.techniques.apply_techniques(build_model(get_preset("cpu-tiny")),
                                                efflab.Knobs(checkpointing="blocks"))
    assert comp.inductor_options(blocks, comp.CompileConfig("default")) is None
    selective = efflab.techniques.apply_techniques(build_model(get_preset("cpu-tiny")),
                                                   efflab.Knobs(checkpointing="selective"))
    assert comp.inductor_options(selective, comp.CompileConfig("default")) == {"cpp_wrapper": True}
