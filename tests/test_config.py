import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from efflab.core.config import PRESETS, ConfigError, Knobs, get_preset, knob_fields


def test_knobs_are_frozen_and_hashable():
    k = Knobs(batch_size=4)
    assert hash(k) == hash(Knobs(batch_size=4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.batch_size = 8  # type: ignore[misc]


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=65537), st.floats(),
                 st.text(max_size=3), st.booleans(), st.none()))
def test_bad_batch_size_names_field_value_and_allowed(bad):
    with pytest.raises(ConfigError) as e:
        Knobs(batch_size=bad)
    msg = str(e.value)
    assert e.value.field == "batch_size"
    assert "batch_size" in msg and repr(bad) in msg and "[1, 65536]" in msg


@given(st.text(max_size=10).filter(lambda s: s not in ("train", "eval", "prefill", "decode")))
def test_bad_workload_lists_the_choices(bad):
    with pytest.raises(ConfigError) as e:
        Knobs(workload=bad)
    assert e.value.field == "workload"
    for choice in ("'train'", "'eval'", "'prefill'", "'decode'"):
        assert choice in str(e.value)


@given(field=st.sampled_from(["seq_len", "seed", "threads", "gen_tokens"]),
       bad=st.one_of(st.integers(max_value=-1), st.just(0), st.text(min_size=1, max_size=3)))
def test_every_int_field_is_checked(field, bad):
    if field == "seed" and bad == 0:
        return  # seed 0 is allowed
    with pytest.raises(ConfigError) as e:
        Knobs(**{field: bad})
    assert e.value.field == field and field in str(e.value)


def test_unknown_knob_in_replace_is_named():
    with pytest.raises(ConfigError) as e:
        Knobs().replace(batchsize=4)
    assert "batchsize" in str(e.value) and "batch_size" in str(e.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as e:
        get_preset("cpu-huge")
    for name in PRESETS:
        assert name in str(e.value)


def test_seq_len_longer_than_context_is_refused():
    cfg = get_preset("cpu-tiny")
    with pytest.raises(ConfigError) as e:
        Knobs(seq_len=cfg.block_size + 1).resolve_seq_len(cfg)
    assert e.value.field == "seq_len" and str(cfg.block_size) in str(e.value)


def test_decode_default_prompt_leaves_room_for_generation():
    cfg = get_preset("cpu-small")
    k = Knobs(workload="decode", gen_tokens=16)
    assert k.resolve_seq_len(cfg) + k.gen_tokens == cfg.block_size


def test_knob_fields_describe_every_field():
    names = [f["name"] for f in knob_fields()]
    assert names == [f.name for f in dataclasses.fields(Knobs)]
    wl = next(f for f in knob_fields() if f["name"] == "workload")
    assert wl["choices"] == ("train", "eval", "prefill", "decode")


def test_preset_sizes_match_the_promises():
    assert PRESETS["cpu-tiny"].n_params() < 300_000
    assert 0.7e6 < PRESETS["cpu-small"].n_params() < 1.3e6
    assert 4e6 < PRESETS["cpu-medium"].n_params() < 8e6
    assert 25e6 < PRESETS["gpu-small"].n_params() < 40e6
    g = PRESETS["gpu-gpt2"]
    assert (g.n_layer, g.n_embd, g.n_head, g.block_size) == (12, 768, 12, 1024)


def test_impossible_combinations_are_refused_naming_the_fields():
    with pytest.raises(ConfigError) as e:
        Knobs(moe_experts=2, moe_top_k=3)
    assert e.value.field == "moe_top_k" and "moe_experts=2" in str(e.value)
    with pytest.raises(ConfigError) as e:
        Knobs(quantization="int4-weight")  # workload defaults to train
    assert e.value.field == "quantization" and "workload" in str(e.value)
    with pytest.raises(ConfigError) as e:
        Knobs(workload="decode", quantization="int8-weight", precision="bf16")
    assert e.value.field == "precision"
    with pytest.raises(ConfigError) as e:
        Knobs(group_size=48)
    assert "32, 64, 128, 256" in str(e.value)


def test_group_size_that_does_not_divide_the_width_is_refused_before_work():
    from efflab.measurement import measure

    with pytest.raises(ConfigError) as e:  # cpu-tiny is 64 wide: groups of 128 cannot fit
        measure(Knobs(workload="decode", quantization="int4-weight", group_size=128),
                preset="cpu-tiny")
    assert e.value.field == "group_size" and "64" in str(e.value)


# ----------------------------------------------------------------------------- the public checks

@pytest.mark.parametrize("bad", [True, 2.0, "3", None, 0, 11])
def test_check_int_names_field_value_and_range(bad):
    from efflab.core.config import check_int

    assert check_int("n", 5, lo=1, hi=10) == 5
    with pytest.raises(ConfigError) as e:
        check_int("n", bad, lo=1, hi=10)
    assert e.value.field == "n" and e.value.value is bad
    assert str(e.value) == f"n={bad!r} is not allowed; n must be an integer in [1, 10]"


def test_check_int_bounds_optional_and_note():
    from efflab.core.config import check_int

    assert check_int("k", None, lo=1, optional=True) is None
    with pytest.raises(ConfigError, match=r"k must be None or an integer >= 1 \(a note\)$"):
        check_int("k", 0, lo=1, optional=True, note="a note")
    with pytest.raises(ConfigError, match="k must be an integer >= 1$"):
        check_int("k", None, lo=1)  # None only where optional
    with pytest.raises(ConfigError, match="an integer <= 3"):
        check_int("k", 4, hi=3)


@pytest.mark.parametrize("bad", [True, "0.5", None, float("nan"), float("inf"), 0, 1.0])
def test_check_real_names_field_value_and_interval(bad):
    from efflab.core.config import check_real

    assert check_real("p", 0.5, 0, 1, lo_open=True, hi_open=True) == 0.5
    with pytest.raises(ConfigError) as e:
        check_real("p", bad, 0, 1, lo_open=True, hi_open=True)
    assert e.value.field == "p" and "p must be a number in (0, 1)" in str(e.value)


def test_check_real_with_one_bound_asks_for_a_finite_number():
    from efflab.core.config import check_real

    assert check_real("c", 3, lo=0) == 3  # an int is a real number
    with pytest.raises(ConfigError, match=r"c must be a finite number > 0$"):
        check_real("c", float("inf"), lo=0, lo_open=True)
    with pytest.raises(ConfigError, match=r"c must be a finite number >= 0 \(seconds\)$"):
        check_real("c", -1, lo=0, note="seconds")


@pytest.mark.parametrize("bad", ["fp64", 64.0, True, None])
def test_check_choice_is_of_the_choices_own_type(bad):
    from efflab.core.config import check_choice

    assert check_choice("group_size", 64, (32, 64)) == 64
    with pytest.raises(ConfigError) as e:
        check_choice("group_size", bad, (32, 64))
    assert e.value.field == "group_size"
    assert str(e.value).endswith("group_size must be one of 32, 64")


def test_check_keys_names_the_unknown_key_and_the_known_ones():
    from efflab.core.config import check_keys

    check_keys("config", {"a": 1, "b": 2}, ("a", "b", "c"))
    with pytest.raises(ConfigError) as e:
        check_keys("config", {"a": 1, "zz": 2}, ("a", "b"))
    assert e.value.field == "config" and e.value.value == "zz"
    assert str(e.value).endswith("config must be one of a, b")


def test_each_choice_list_is_declared_once_and_shared():
    """Knobs, the technique configs and the UI read the Literals of efflab.core.config."""
    import typing

    from efflab.core import config as c
    from efflab.techniques import (
        AttentionConfig,
        CheckpointingConfig,
        CompileConfig,
        PrecisionConfig,
        PruningConfig,
        QuantizationConfig,
    )

    knobs = typing.get_type_hints(Knobs)
    pairs = [(PrecisionConfig, "precision", c.Precision, "precision"),
             (AttentionConfig, "impl", c.Attention, "attention"),
             (CheckpointingConfig, "mode", c.Checkpointing, "checkpointing"),
             (QuantizationConfig, "mode", c.Quantization, "quantization"),
             (CompileConfig, "mode", c.Compile, "compile")]
    for cls, field, literal, knob in pairs:
        assert typing.get_type_hints(cls)[field] is literal, cls
        assert knobs[knob] is literal, knob
    assert typing.get_type_hints(QuantizationConfig)["group_size"] is c.GroupSize
    assert typing.get_type_hints(PruningConfig)["method"] is c.Pruning
    assert typing.get_type_hints(PruningConfig)["scope"] is c.PruningScope
    fields = {f["name"]: f for f in knob_fields()}
    assert fields["quantization"]["choices"] == c.QUANTIZATIONS
    assert c.GROUP_SIZES == typing.get_args(c.GroupSize)
