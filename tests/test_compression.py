"""The claim machinery: quality ratio with a paired interval, the frontier, the verdict, and
candidates that really are smaller."""

import pandas as pd
import pytest

from efflab.core.config import ConfigError, ModelConfig
from efflab.core.model import build_model
from efflab.studies.compression import Recipe, build_candidate, claim, frontier, quality_ratio
from efflab.techniques.pruning import PruningConfig
from efflab.techniques.quantization import QuantizationConfig, model_bytes


def test_quality_ratio_is_one_for_the_same_model_and_below_for_a_worse_one():
    w = [2.0, 2.2, 1.8, 2.1, 1.9, 2.05]
    same = quality_ratio({"window_losses": w}, {"window_losses": w})
    assert same["quality"] == pytest.approx(1.0) and same["quality_lo"] == pytest.approx(1.0)
    worse = quality_ratio({"window_losses": w}, {"window_losses": [v * 1.05 for v in w]})
    assert worse["quality"] == pytest.approx(1 / 1.05)
    assert worse["quality_lo"] <= worse["quality"] <= worse["quality_hi"]


def _df():
    return pd.DataFrame([
        {"label": "teacher", "quality": 1.0, "quality_lo": 1.0, "quality_hi": 1.0, "speedup": 1.0, "shrink": 1.0},
        {"label": "a", "quality": 0.99, "quality_lo": 0.985, "quality_hi": 0.995, "speedup": 1.8, "shrink": 4.0},
        {"label": "b", "quality": 0.981, "quality_lo": 0.975, "quality_hi": 0.987, "speedup": 2.5, "shrink": 5.2},
        {"label": "c", "quality": 0.90, "quality_lo": 0.89, "quality_hi": 0.91, "speedup": 6.0, "shrink": 9.0},
        {"label": "d", "quality": 0.95, "quality_lo": 0.94, "quality_hi": 0.96, "speedup": 1.5, "shrink": 1.2},
    ])


def test_frontier_drops_dominated_points():
    labels = list(frontier(_df(), "speedup")["label"])
    assert "d" not in labels and {"teacher", "a", "b", "c"} <= set(labels)


def test_claim_verdicts():
    df = _df()
    s = claim(df, "speedup")
    assert s["best"] == "b" and not s["met"] and "NOT reached" in s["verdict"] and "2.0x short" in s["verdict"]
    b = claim(df, "shrink")
    assert b["best"] == "b" and b["met"] and not b["met_surely"] and "lower end" in b["verdict"]
    none = claim(df[df["label"].isin(["teacher", "c"])], "speedup")
    assert none["best"] is None and not none["met"]


def test_recipe_validates():
    with pytest.raises(ConfigError, match="base"):
        Recipe("x", base="nobody")


def test_candidates_are_smaller(corpus):
    cfg = ModelConfig("t", n_layer=2, n_head=2, n_embd=64, block_size=32)
    bases = {"teacher": build_model(cfg, 0)}
    full = model_bytes(bases["teacher"])
    pruned = build_candidate(Recipe("p", prune=PruningConfig("structured", sparsity=0.5)), bases, corpus)
    both = build_candidate(Recipe("pq", prune=PruningConfig("structured", sparsity=0.5, heads=1),
                                  quant=QuantizationConfig("int4-weight", 64)), bases, corpus)
    assert model_bytes(both) < model_bytes(pruned) < full
    assert model_bytes(bases["teacher"]) == full  # the base is copied, never changed


def test_sparsity_sweep_rows_and_theory(corpus):
    from efflab.studies.compression import sparsity_sweep

    cfg = ModelConfig("t", n_layer=2, n_head=2, n_embd=64, block_size=48)
    model = build_model(cfg, 0).eval()
    df = sparsity_sweep(model, corpus, [PruningConfig("none"), PruningConfig("unstructured", 0.5),
                                        PruningConfig("structured", 0.5)], windows=4, target_s=0.01)
    rows = {r["method"]: r for r in df.to_dict("records")}
    assert set(rows) == {"dense", "unstructured-global", "structured"}
    dense, unstr, struct = rows["dense"], rows["unstructured-global"], rows["structured"]
    assert unstr["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert struct["sparsity"] == pytest.approx(1 / 3, abs=1e-3)  # half the MLP = a third of a block
    assert dense["theory_tokens_per_s"] == pytest.approx(dense["tokens_per_s"])
    assert unstr["theory_tokens_per_s"] == pytest.approx(dense["tokens_per_s"])  # zeros still multiplied
    assert struct["theory_tokens_per_s"] > dense["tokens_per_s"]
    assert unstr["weight_bytes"] == dense["weight_bytes"] > struct["weight_bytes"]  # masks not counted
    assert unstr["bits_per_byte"] != dense["bits_per_byte"]
