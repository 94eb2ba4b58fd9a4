"""Lesson 15's parallel forms against the unsplit model, on 2 gloo ranks, and their formulas.

One launch runs every job (torch's start-up on each rank costs more than the jobs): tensor
parallelism, pipeline parallelism under both schedules and ring attention, each over 10 AdamW
steps beside the unsplit model trained in the same process on the same batches.
"""

import itertools
import math

import pytest
import torch

from efflab.core.config import ConfigError, get_preset
from efflab.core.model import build_model
from efflab.systems.parallel import pipeline, ring, tensor

STEPS = 10
TINY = get_preset("cpu-tiny")
B, T, M = 4, 32, 4
DEEPER = 3  # cpu-tiny has 2 blocks


@pytest.fixture(scope="module")
def launched():
    from efflab.systems.parallel.launching import launch_parallel

    jobs = [{"task": "tp", "steps": STEPS, "batch": B, "seq": T},
            {"task": "pp", "steps": STEPS, "batch": B, "seq": T, "micro_batches": M,
             "schedule": "gpipe"},
            {"task": "pp", "steps": STEPS, "batch": B, "seq": T, "micro_batches": M,
             "schedule": "1f1b"},
            {"task": "ring", "steps": STEPS, "batch": B, "seq": T},
            # the preset made deeper (3 blocks: an uneven pipeline split)
            {"task": "tp", "steps": 2, "batch": B, "seq": T, "n_layer": DEEPER},
            {"task": "pp", "steps": 2, "batch": B, "seq": T, "micro_batches": M,
             "schedule": "1f1b", "n_layer": DEEPER}]
    result = launch_parallel(jobs, nproc=2, timeout_s=240, on_progress=None, timing=False)
    return result.records


def _of(records, task, schedule=None, n_layer=None):
    out = [r for r in records if r["kind"] == task and r["knobs"]["n_layer"] == n_layer
           and (schedule is None or r["knobs"]["schedule"] == schedule)]
    assert len(out) == 2 and all(r["status"] == "ok" for r in out), out
    return sorted(out, key=lambda r: r["rank"])


def _same_losses(res):
    assert len(res["losses"]) == STEPS
    for a, b in zip(res["losses"], res["reference_losses"]):
        assert abs(a - b) <= 1e-5, (res["losses"], res["reference_losses"])


@pytest.mark.parametrize("task", ["tp", "ring"])
def test_split_model_trains_like_the_whole_one(launched, task):
    for rec in _of(launched, task):
        _same_losses(rec["result"])
        assert rec["result"]["grad_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("name", pipeline.SCHEDULES)
def test_pipeline_trains_like_the_whole_model(launched, name):
    first, last = _of(launched, "pp", name)
    _same_losses(last["result"])
    assert first["result"]["losses"] is None  # only the last stage computes the loss
    for rec in (first, last):
        assert rec["result"]["grad_max_abs_diff"] <= 1e-5


def test_pipeline_holds_what_its_schedule_says(launched):
    gpipe, ofb = _of(launched, "pp", "gpipe"), _of(launched, "pp", "1f1b")
    for g, f in zip(gpipe, ofb):
        gs, fs = g["result"]["steps"][0], f["result"]["steps"][0]
        assert gs["saved_bytes_per_micro"] == fs["saved_bytes_per_micro"] > 0
        assert gs["saved_peak_bytes"] == M * gs["saved_bytes_per_micro"]
        assert fs["saved_peak_bytes"] == (2 - f["rank"]) * fs["saved_bytes_per_micro"]
        assert [s[0] for s in fs["spans"]] == [a for a, _ in pipeline.schedule("1f1b", f["rank"], 2, M)]
        assert 0 < fs["busy_cpu_s"] <= 1.05 * sum(e - a for _, _, a, e in fs["spans"]) + 1e-3


def test_tp_params_and_communication_match_their_formulas(launched):
    counts = tensor.tp_param_counts(TINY, 2)
    want = tensor.tp_comm_values(TINY, B, T)
    calls = tensor.tp_allreduces_per_step(TINY.n_layer)
    for rec in _of(launched, "tp"):
        res = rec["result"]
        assert res["params"] == counts["total"]
        assert res["comm"]["calls"] == {"forward": calls["forward"], "backward": calls["backward"]}
        assert res["comm"]["values"]["forward"] + res["comm"]["values"]["backward"] == want["total"]
        assert len(res["allreduce_seconds"]) == STEPS and min(res["allreduce_seconds"]) > 0
        assert res["allreduce_bytes"] == 4 * B * T * TINY.n_embd  # one block's activations
        assert res["fit"]["alpha_s"] >= 0 and res["fit"]["bandwidth"] > 0
    assert counts["full"] == build_model(TINY).num_params()


def test_ring_memory_and_traffic_match_their_formulas(launched):
    for rec in _of(launched, "ring"):
        res = rec["result"]
        assert res["score_values_peak"] * 4 == ring.score_bytes_per_rank(B, TINY.n_head, T, 2)
        assert res["sent_values_forward"] == ring.ring_sent_values(
            B, TINY.n_head, T, TINY.head_dim, 2, TINY.n_layer)


def test_a_deeper_preset_is_built_split_and_checked_against_its_own_formulas(launched):
    from efflab.studies import model_parallel as mp

    first, last = _of(launched, "pp", "1f1b", n_layer=DEEPER)
    assert first["result"]["layers"] == [0, 1] and last["result"]["layers"] == [2]
    assert all(abs(a - b) <= 1e-5 for a, b in zip(last["result"]["losses"],
                                                   last["result"]["reference_losses"]))
    deeper = [r for r in launched if r["knobs"]["n_layer"] == DEEPER]
    tp = mp.tp_table(deeper)
    assert len(tp) == 2 and (tp.params == tp.params_formula).all()
    assert (tp.allreduces == tp.allreduces_formula).all() and (tp["values"] == tp.values_formula).all()
    assert tp.params_formula.iloc[0] > tensor.tp_param_counts(TINY, 2)["total"]  # 3 blocks, not 2


@pytest.mark.parametrize("name,p,m", list(itertools.product(pipeline.SCHEDULES, (2, 3, 4),
                                                             (1, 2, 4, 8))))
def test_bubble_formula_is_the_ideal_schedules_idle_share(name, p, m):
    spans = pipeline.simulate(name, p, m, t_f=1.0, t_b=2.0)
    end = max(s[3] for stage in spans for s in stage)
    for stage in spans:
        assert math.isclose(pipeline.idle_fraction(stage, 0.0, end),
                            pipeline.bubble_fraction(p, m), rel_tol=1e-12)
    want = [m if name == "gpipe" else min(p - s, m) for s in range(p)]
    assert [pipeline.peak_in_flight(name, s, p, m) for s in range(p)] == want


def test_schedules_run_every_micro_batch_once_each_way():
    for name, p, m in itertools.product(pipeline.SCHEDULES, (2, 4), (1, 3, 8)):
        for s in range(p):
            acts = pipeline.schedule(name, s, p, m)
            assert sorted(acts) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
            for i in range(m):
                assert acts.index(("F", i)) < acts.index(("B", i))
    with pytest.raises(ValueError):
        pipeline.schedule("zigzag", 0, 2, 2)
    assert list(pipeline.stage_layers(5, 2, 0)) == [0, 1, 2]
    assert list(pipeline.stage_layers(5, 2, 1)) == [3, 4]


def test_block_merge_equals_attention_over_both_blocks():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    k2, v2 = (torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64) * 30 for _ in range(2))
    oa, la, _ = ring.block_attention(q, k, v, causal=False)
    ob, lb, _ = ring.block_attention(q, k2, v2, causal=False)
    out, lse = ring.merge(oa, la, ob, lb)
    full = torch.softmax(q @ torch.cat([k, k2], 2).transpose(-2, -1) / math.sqrt(8), -1)
    assert torch.allclose(out, full @ torch.cat([v, v2], 2), atol=1e-12)
    assert torch.isfinite(lse).all()


def test_tp_shards_tile_the_full_weights():
    model = build_model(TINY)
    mlp, attn = model.h[0].mlp, model.h[0].attn
    parts = [tensor.mlp_shards(mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight,
                               mlp.c_proj.bias, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p["fc_w"] for p in parts]), mlp.c_fc.weight)
    assert torch.equal(torch.cat([p["proj_w"] for p in parts], 1), mlp.c_proj.weight)
    heads = [tensor.attention_shards(attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight,
                                     attn.c_proj.bias, r, 2) for r in range(2)]
    assert sum(h["qkv_w"].numel() for h in heads) == attn.c_attn.weight.numel()
    assert tensor.tp_bytes_per_rank(TINY, 1) == 4 * tensor.tp_param_counts(TINY, 1)["full"]


def test_launch_refuses_bad_jobs_and_oversubscription():
    from efflab.measurement.hardware import RefusedError
    from efflab.systems.parallel.launching import launch_parallel

    with pytest.raises(ConfigError):
        launch_parallel([{"task": "zz"}])
    with pytest.raises(ConfigError):
        launch_parallel([{"task": "tp", "bach": 4}])
    for bad in ({"task": "pp", "schedule": "zigzag"}, {"task": "tp", "seq": 10_000},
                {"task": "ring", "steps": 0}, {"task": "tp", "preset": "cpu-nothing"},
                {"task": "pp", "n_layer": 0}, {"task": "pp", "n_layer": True},
                {"task": "tp", "n_layer": "8"}, {"task": "tp", "n_layer": 65}):
        with pytest.raises(ConfigError):
            launch_parallel([bad])
    with pytest.raises(RefusedError, match="cores"):
        launch_parallel([{"task": "tp"}], nproc=2, threads_per_rank=64)


def _fit(alpha_s=1e-5, bandwidth=1e10):
    from efflab.systems.distributed.comm import AlphaBeta

    return AlphaBeta(alpha_s, bandwidth, 2)


def test_planner_lists_every_layout_and_says_why_it_rejects_one():
    from efflab.systems.parallel.planner import plan_parallel

    cfg = get_preset("gpu-gpt2")  # 12 heads, 12 layers
    plan = plan_parallel(cfg, global_batch=16, seq=1024, devices=8, device_memory_bytes=80 * 2**30,
                         device_flops=100e12, fit=_fit())
    assert sorted(zip(plan.dp, plan.tp, plan.pp)) == sorted(
        (8 // (t * p), t, p) for t in (1, 2, 4, 8) for p in (1, 2, 4, 8) if 8 % (t * p) == 0)
    assert all(r.dp * r.tp * r.pp == 8 for r in plan.itertuples())
    eight = plan[plan.tp == 8].iloc[0]
    assert not eight.fits and "does not divide 12 heads" in eight.reason
    assert plan.iloc[0].fits and plan.step_s[plan.fits].is_monotonic_increasing


def test_planner_memory_and_its_trade_offs():
    from efflab.systems.parallel.planner import layout_memory, plan_parallel

    cfg = get_preset("cpu-small")
    assert layout_memory(cfg, 1, 1, 128, 1)["state_bytes"] == 16 * build_model(cfg).num_params()
    assert layout_memory(cfg, 2, 1, 128, 1)["state_bytes"] == 16 * tensor.tp_param_counts(cfg, 2)["total"]
    free = plan_parallel(cfg, global_batch=8, seq=128, devices=4, device_memory_bytes=1e12,
                         device_flops=1e9, fit=_fit(0.0, 1e18))
    best = free.iloc[0]  # free communication: no bubble beats any bubble
    assert best.pp == 1 and best.step_s == pytest.approx(free[free.pp == 1].step_s.min())
    assert (free[free.pp > 1].bubble > 0).all()
    state = layout_memory(cfg, 1, 1, 128, 1)["total_bytes"]
    tight = plan_parallel(cfg, global_batch=8, seq=128, devices=4, device_memory_bytes=0.6 * state,
                          device_flops=1e9, fit=_fit())
    dp_only = tight[(tight.tp == 1) & (tight.pp == 1)].iloc[0]
    assert not dp_only.fits and "GiB" in dp_only.reason
    assert tight.fits.any()  # splitting the model makes it fit


def test_plan_verdict_names_the_fastest_fitting_layout_and_what_rules_out_faster_ones():
    from efflab.studies.model_parallel import plan_verdict
    from efflab.systems.parallel.planner import plan_parallel

    cfg = get_preset("gpu-gpt2")
    memory = 2 * 2**30
    plan = plan_parallel(cfg, global_batch=16, seq=1024, devices=8, device_memory_bytes=memory,
                         device_flops=50e12, fit=_fit(2e-4, 2e9))
    said = plan_verdict(plan, memory)
    fits = plan[plan.fits]
    best = fits.loc[fits.step_s.idxmin()]
    assert said.startswith(f"The planner picks dp={best.dp} tp={best.tp} pp={best.pp}:")
    # neither the fastest layout overall (it does not fit) nor the leanest one is the pick
    fastest = plan.loc[plan.step_s.idxmin()]
    leanest = plan.loc[plan.memory_bytes.idxmin()]
    assert not fastest.fits and f"the faster dp={fastest.dp} tp={fastest.tp} pp={fastest.pp}" in said
    assert (leanest.dp, leanest.tp, leanest.pp) != (best.dp, best.tp, best.pp)
    assert f"{len(fits)} of {len(plan)} layouts fit" in said and "GiB on stage 0" in said


def test_plan_verdict_says_it_cannot_choose_when_nothing_fits():
    from efflab.studies.model_parallel import plan_verdict
    from efflab.systems.parallel.planner import plan_parallel

    tiny = 0.1 * 2**30
    plan = plan_parallel(get_preset("gpu-gpt2"), global_batch=16, seq=1024, devices=8,
                         device_memory_bytes=tiny, device_flops=50e12, fit=_fit())
    said = plan_verdict(plan, tiny)
    assert "cannot choose" in said and "picks" not in said and "0.10 GiB" in said


def test_run_fit_reads_the_tp_jobs_fit_and_refuses_without_one():
    from efflab.studies.model_parallel import run_fit

    rec = {"kind": "tp", "status": "ok", "result": {"fit": {"alpha_s": 3e-5, "bandwidth": 4e9,
                                                            "world_size": 2}}}
    fit = run_fit([{"kind": "pp", "status": "ok", "result": {}}, rec])
    assert (fit.alpha_s, fit.bandwidth, fit.world_size) == (3e-5, 4e9, 2)
    with pytest.raises(ValueError, match="no tensor-parallel record"):
        run_fit([{**rec, "status": "error"}])


def test_bubble_verdict_reports_the_stages_cpu_share_either_way():
    import pandas as pd

    from efflab.studies.model_parallel import bubble_verdict

    row = {"schedule": "gpipe", "m": 4, "idle": 0.21, "formula": 0.2, "error": 0.05, "loadavg_1m": 1.0}
    quiet = bubble_verdict(pd.DataFrame([{**row, "cpu_share": 0.97}]), cores=2)
    busy = bubble_verdict(pd.DataFrame([{**row, "cpu_share": 0.5}]), cores=2)
    assert "at least 97%" in quiet and "set aside" not in quiet
    assert "as little as 50%" in busy and "set aside" in busy



def test_bubble_verdict_counts_the_launchs_own_ranks_in_the_load():
    import pandas as pd

    from efflab.studies.model_parallel import bubble_verdict

    row = {"schedule": "gpipe", "m": 8, "idle": 0.12, "formula": 0.111, "error": 0.08,
           "cpu_share": 0.98, "p": 2}
    own = bubble_verdict(pd.DataFrame([{**row, "loadavg_1m": 2.2}]), cores=2)
    crowded = bubble_verdict(pd.DataFrame([{**row, "loadavg_1m": 3.1}]), cores=2)
    assert "took turns" not in own  # 2 ranks busy on 2 cores are a load of 2 by themselves
    assert "load average was 3.1 on 2 cores, 2 of it this launch's own ranks" in crowded


@pytest.mark.parametrize("m", (1, 2, 4, 8))
def test_unequal_stages_wait_on_the_slower_one(m):
    # stage 1 (the head and the loss) slower both ways: GPipe's step is stage 0's first forward,
    # m of stage 1's forwards and backwards, then stage 0's last backward
    f, b = [0.8, 1.0], [1.7, 2.0]
    spans = pipeline.simulate("gpipe", 2, m, t_f=f, t_b=b)
    end = max(s[3] for stage in spans for s in stage)
    assert math.isclose(end, f[0] + m * (f[1] + b[1]) + b[0], rel_tol=1e-12)
    assert math.isclose(pipeline.idle_fraction(spans[1], 0.0, end), (f[0] + b[0]) / end, rel_tol=1e-12)
    assert pipeline.idle_fraction(spans[0], 0.0, end) > pipeline.bubble_fraction(2, m) or m == 1
    same = pipeline.simulate("1f1b", 2, m, t_f=[1.0, 1.0], t_b=[2.0, 2.0])
    assert same == pipeline.simulate("1f1b", 2, m, t_f=1.0, t_b=2.0)
    with pytest.raises(ValueError, match="t_b has 3 durations"):
        pipeline.simulate("gpipe", 2, m, t_f=1.0, t_b=[1.0, 2.0, 3.0])


def _bubble_rows(f_ms, b_ms, idle, step_ms=100.0, m=4):
    return [{"schedule": "gpipe", "m": m, "stage": s, "p": 2, "idle": idle[s], "idle_p25": idle[s],
             "idle_p75": idle[s], "n": 7, "formula": pipeline.bubble_fraction(2, m), "cpu_share": 0.97,
             "f_ms": f_ms[s], "b_ms": b_ms[s], "step_ms": step_ms, "loadavg_1m": 0.5,
             "message_bytes": 2**18}
            for s in range(2)]


def test_bubble_summary_separates_unequal_stages_from_the_rest():
    import pandas as pd

    from efflab.studies.model_parallel import bubble_summary, bubble_verdict

    equal = bubble_summary(pd.DataFrame(_bubble_rows([10, 10], [20, 20], [0.2, 0.2])))
    assert math.isclose(equal.stage_sim[0], 0.2, rel_tol=1e-12) and abs(equal.unexplained_ms[0]) < 1e-9
    # stage 1 20 % slower: the ideal timeline with the stages' own times idles more than the formula
    rows = _bubble_rows([10, 12], [20, 24], [0.30, 0.26])
    got = bubble_summary(pd.DataFrame(rows)).iloc[0]
    spans = pipeline.simulate("gpipe", 2, 4, t_f=[10, 12], t_b=[20, 24])
    end = max(s[3] for stage in spans for s in stage)
    want = sum(pipeline.idle_fraction(st, 0.0, end) for st in spans) / 2
    assert math.isclose(got.stage_sim, want, rel_tol=1e-12) and got.stage_sim > got.formula
    assert math.isclose(got.unexplained_ms, (0.28 - want) * 100.0, rel_tol=1e-9)
    said = bubble_verdict(bubble_summary(pd.DataFrame(rows)), cores=2)
    part = (want - 0.2) / (0.28 - 0.2)
    assert f"predicts {want:.2f} there: unequal stages explain {part:.0%} of the gap" in said
    assert f"the other {(0.28 - want) * 100:.1f} ms of idle" in said
    # a measured bubble on the formula: nothing to explain, no clause
    assert "unequal stages" not in bubble_verdict(equal, cores=2)


def test_a_stage_posts_its_receives_ahead_but_no_further_than_it_keeps_in_flight(monkeypatch):
    posted = []

    class Request:
        def wait(self):
            return None

    def fake_irecv(buf, src):
        posted.append(src)
        return Request()

    monkeypatch.setattr(pipeline.dist, "irecv", fake_irecv)
    # 1F1B, stage 0 of 2: two micro-batches in flight, so two gradients posted ahead
    ahead = pipeline.peak_in_flight("1f1b", 0, 2, 8)
    box = pipeline._Inbox((2, 3), src=1, m=8, ahead=ahead)
    assert ahead == 2 and len(posted) == 2
    for i in range(8):
        buf = box.take(i)
        assert buf.shape == (2, 3)
        assert len(box.posted) <= ahead and len(posted) == min(8, i + 1 + ahead)
    assert posted == [1] * 8 and not box.posted
