"""efflab.studies.fusion: stored benchmark results are labelled (stale on another machine) and turned into
the tables and chart frames lesson 09 shows."""

import json

from efflab.measurement.hardware import fingerprint
from efflab.studies import fusion


def _stored(tmp_path, fp):
    data = {"fingerprint": fp, "measured_at": "2026-01-01T00:00:00", "env": {"cpu": "X"},
            "host_shared": True,
            "training": {"recipes": {
                "efflab-eager": {"tokens_per_s": 1000.0, "step_ms": {"median": 2048.0, "p25": 2000.0,
                                                                    "p75": 2100.0, "n": 5},
                                 "max_loss_diff_vs_efflab_eager": 0.0},
                "compile-model": {"tokens_per_s": 1250.0, "step_ms": {"median": 1638.4, "p25": 1600.0,
                                                                     "p75": 1700.0, "n": 5},
                                  "max_loss_diff_vs_efflab_eager": 3e-6}}},
            "counts": {"efflab-eager": {"aten_ops_forward_backward": 120, "fused_kernels": 0},
                       "compile-model": {"aten_ops_forward_backward": 30, "fused_kernels": 25}}}
    p = tmp_path / "fusion.json"
    p.write_text(json.dumps(data))
    return p


def test_stored_results_say_where_they_come_from(tmp_path):
    here = fusion.stored_fusion(_stored(tmp_path, fingerprint()))
    assert not here["stale"] and "this machine" in here["label"] and "provisional" in here["label"]
    other = fusion.stored_fusion(_stored(tmp_path, "not-this-one"))
    assert other["stale"] and "stale" in other["label"]
    assert fusion.stored_fusion(tmp_path / "missing.json") is None


def test_tables_from_stored_results(tmp_path):
    s = fusion.stored_fusion(_stored(tmp_path, fingerprint()))
    t = fusion.recipes_frame(s).set_index("recipe")
    assert t.loc["compile-model", "tokens_per_s"] == 1250.0
    # the spread brackets the median: slower step (p75) -> fewer tokens/s
    assert t.loc["compile-model", "tokens_per_s_p25"] < 1250.0 < t.loc["compile-model", "tokens_per_s_p75"]
    f = fusion.counts_frame(s["counts"], "stored").set_index(["metric", "variant"])["value"]
    assert f[("kernels launched (fwd+bwd)", "eager")] == 120
    assert f[("kernels launched (fwd+bwd)", "compiled")] == 55
    assert f[("of which fused kernels", "compiled")] == 25
