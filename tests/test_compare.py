"""compare_gradients: the tool lessons 03 and 04 use to show a fast path keeps the mathematics."""

import pytest

from efflab.core.config import Knobs
from efflab.studies.compare import compare_gradients


def test_the_same_configuration_twice_is_bit_identical():
    d = compare_gradients("cpu-tiny", Knobs(), Knobs(), batch_size=2, seq_len=16)
    assert d["loss_diff"] == 0.0 and d["max_abs_grad_diff"] == 0.0
    assert d["n_tensors"] > 10  # every parameter's gradient was compared


def test_checkpointing_and_sdpa_keep_the_gradients_and_bf16_visibly_does_not():
    same = compare_gradients("cpu-tiny", Knobs(), Knobs(checkpointing="blocks"), batch_size=2,
                             seq_len=16)
    assert same["max_rel_grad_diff"] < 1e-6
    other = compare_gradients("cpu-tiny", Knobs(), Knobs(attention="sdpa"), batch_size=2,
                              seq_len=16)
    assert other["max_rel_grad_diff"] < 1e-4  # same mathematics, other kernel: rounding only
    # the tool sees a real change: bf16 autocast rounds every matmul to 8 significant bits
    rounded = compare_gradients("cpu-tiny", Knobs(), Knobs(precision="bf16"), batch_size=2,
                                seq_len=16)
    assert rounded["max_rel_grad_diff"] > 1e-3 and rounded["loss_diff"] > 0


def test_a_technique_that_changes_the_parameters_is_refused():
    with pytest.raises(ValueError, match="different parameters"):
        compare_gradients("cpu-tiny", Knobs(), Knobs(moe_experts=2), batch_size=2, seq_len=16)
