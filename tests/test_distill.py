"""Distillation: the soft-target loss against its formula, the same batches and start for both
students, and a teacher-initialised student that really holds the teacher's blocks."""

import math

import pytest
import torch
import torch.nn.functional as F

from efflab.core.config import ConfigError, ModelConfig
from efflab.core.model import build_model
from efflab.studies.distill import (
    compare_students,
    distillation_loss,
    init_from_teacher,
    paired_gap,
    soft_target_loss,
    student_config,
)


def _logits(seed, shape=(2, 5, 256)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_soft_target_loss_matches_the_formula_and_vanishes_on_equal_logits():
    s, t = _logits(0), _logits(1)
    for tau in (1.0, 2.0, 4.0):
        ps = F.softmax(s / tau, -1)
        pt = F.softmax(t / tau, -1)
        ref = (pt * (pt.log() - ps.log())).sum(-1).mean() * tau ** 2
        assert soft_target_loss(s, t, tau).item() == pytest.approx(ref.item(), rel=1e-4)
    assert soft_target_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    # direction matters: KL(teacher || student), not the reverse
    assert soft_target_loss(s, t, 2.0).item() != pytest.approx(soft_target_loss(t, s, 2.0).item(), rel=1e-3)
    with pytest.raises(ConfigError, match="temperature"):
        soft_target_loss(s, t, 0.0)


def test_distillation_loss_mixes_soft_and_hard():
    s, t = _logits(0), _logits(1)
    y = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(2))
    hard = F.cross_entropy(s.reshape(-1, 256), y.reshape(-1))
    assert distillation_loss(s, t, y, 2.0, 0.0).item() == pytest.approx(hard.item())
    mix = 0.3 * soft_target_loss(s, t, 2.0) + 0.7 * hard
    assert distillation_loss(s, t, y, 2.0, 0.3).item() == pytest.approx(mix.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="alpha"):
        distillation_loss(s, t, y, 2.0, 1.5)


def test_student_config_must_be_smaller():
    teacher = ModelConfig("t", n_layer=4, n_head=4, n_embd=64, block_size=32)
    assert student_config(teacher, n_layer=2).n_layer == 2
    assert student_config(teacher, n_embd=32).n_head == 2  # the teacher's head size, 16
    with pytest.raises(ConfigError, match="student"):
        student_config(teacher, n_layer=4)


def test_init_from_teacher_copies_the_first_and_last_blocks():
    tcfg = ModelConfig("t", n_layer=4, n_head=2, n_embd=32, block_size=16)
    teacher = build_model(tcfg, 1)
    student = init_from_teacher(build_model(student_config(tcfg, n_layer=2), 2), teacher)
    for i, j in ((0, 0), (1, 3)):
        for (n, a), (_, b) in zip(student.h[i].state_dict().items(), teacher.h[j].state_dict().items()):
            assert torch.equal(a, b), n
    assert torch.equal(student.wte.weight, teacher.wte.weight)


def test_compare_students_same_start_same_batches(corpus):
    tcfg = ModelConfig("t", n_layer=2, n_head=2, n_embd=32, block_size=32)
    teacher = build_model(tcfg, 3).eval()
    curves, final = compare_students(teacher, student_config(tcfg, n_layer=1), steps=4,
                                     batch_size=2, eval_every=2, eval_windows=8,
                                     final_windows=16, alpha=1.0)
    assert set(curves["variant"]) == {"distilled", "hard only"}
    # the hard-only student's first loss is plain CE of the shared initial weights on batch 1
    first = curves[(curves["variant"] == "hard only") & (curves["step"] == 1)]["train_loss"].item()
    assert math.isfinite(first) and 5.0 < first < 6.5  # ~ln 256 = 5.55 at initialisation
    assert len(final["teacher"]["window_losses"]) == 16
    gap = paired_gap(final["hard only"], final["distilled"])
    assert set(gap) >= {"gap", "ci95", "significant"}


def test_paired_gap_sign_and_interval():
    a = {"window_losses": [2.0, 2.1, 1.9, 2.2]}
    b = {"window_losses": [1.9, 2.0, 1.8, 2.1]}
    g = paired_gap(a, b)
    assert g["gap"] == pytest.approx(0.1) and g["ci95"] == pytest.approx(0.0, abs=1e-9)
    assert g["significant"]
