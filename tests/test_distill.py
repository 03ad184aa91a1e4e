"""Distillation from the dense model: the KL term, the teacher context, and
LHSPG trained toward the dense model's distributions."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import build, pattern_blocks, random_blocks

from shear_graph.distill import check_distill, distill_loss, frozen_teacher, teacher_logits
from shear_graph.errors import ShearGraphError
from shear_graph.progressive import lhspg_prune


def test_kl_is_zero_for_equal_logits_and_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    assert float(distill_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    p, log_q = torch.softmax(t, -1), torch.log_softmax(s, -1)
    by_hand = (p * (torch.log(p) - log_q)).sum(-1).mean()
    assert float(distill_loss(s, t)) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(distill_loss(s.bfloat16(), t.bfloat16())) == pytest.approx(float(by_hand), rel=3e-2)
    assert distill_loss(s.double(), t.double()).dtype == torch.float64


def test_kl_refuses_logits_of_other_vocabularies():
    with pytest.raises(ShearGraphError, match="same tokenizer and vocabulary"):
        distill_loss(torch.zeros(1, 3, 8), torch.zeros(1, 3, 9))


@pytest.mark.parametrize("weight", [-0.1, 1.5, "0.5", True, None, float("nan")])
def test_weights_outside_zero_to_one_are_refused(weight):
    with pytest.raises(ShearGraphError, match="distill must be a number from 0"):
        check_distill(weight)


def test_teacher_is_the_model_itself_when_it_fits_and_its_mode_is_restored():
    model = build("llama").train()
    with frozen_teacher(model, torch.device("cpu"), torch.float32) as teacher:
        assert teacher is model and not teacher.training
    assert model.training
    with frozen_teacher(model, "cpu", torch.float64) as teacher:
        assert teacher is not model and next(teacher.parameters()).dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float32 and model.training


def kl_to(teacher, student, blocks) -> float:
    with torch.no_grad():
        return float(distill_loss(student(input_ids=blocks).logits, teacher_logits(teacher, blocks)))


def test_distilled_lhspg_stays_closer_to_the_dense_model():
    """Same removal budget, batches and steps: LHSPG with the KL term ends nearer the
    dense model's distributions on held-out blocks than LHSPG on the LM loss alone.
    An untrained model's diffuse distributions are what the LM loss on random tokens
    pulls away from and the KL term holds on to; the input model is left as it was."""
    dense = build("llama").eval()
    train, held_out = random_blocks(32, 16, seed=0), random_blocks(8, 16, seed=1)
    before = copy.deepcopy(dense.state_dict())
    kw = dict(kinds=("ffn",), warmup_steps=2, n_periods=2, period_steps=4, final_steps=4, batch_size=4, lr=2e-3,
              lora_rank=4, progress=False)
    plain = lhspg_prune(dense, train, 0.2, **kw)
    distilled = lhspg_prune(dense, train, 0.2, distill=1.0, **kw)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    assert "distill_kl" in distilled.history[-1] and "distill_kl" not in plain.history[-1]
    assert distilled.settings["distill"] == 1.0
    assert kl_to(dense, distilled.model, held_out) < 0.9 * kl_to(dense, plain.model, held_out)


def test_lhspg_refuses_a_bad_weight():
    with pytest.raises(ShearGraphError, match="distill must be a number from 0"):
        lhspg_prune(build("llama"), pattern_blocks(8), 0.1, distill=2.0, progress=False)


def test_numpy_weights_are_numbers():
    check_distill(np.float32(0.5))
    check_distill(np.int64(1))


def test_the_training_flag_of_the_dense_model_is_restored():
    dense = build("llama").train()
    lhspg_prune(dense, random_blocks(8, 16), 0.1, kinds=("ffn",), warmup_steps=1, n_periods=1, period_steps=1,
                final_steps=0, batch_size=4, distill=0.5, progress=False)
    assert dense.training


def test_distilled_recovery_ends_closer_to_the_dense_teacher_which_stays_as_it_was():
    """Same model, data and steps: recovery on KL to the dense model ends nearer the
    dense model's distributions on held-out blocks than recovery on the LM loss; the
    teacher is neither changed nor left in eval mode."""
    import shear_graph as sg

    dense, student = build("llama", seed=0).train(), build("llama", seed=1)
    before = copy.deepcopy(dense.state_dict())
    train = {"random": random_blocks(16, 16, seed=0)}
    probe = {"random": random_blocks(4, 16, seed=1)}
    reference = {"random": sg.held_out_loss(dense, probe["random"])}
    kw = dict(steps=8, update_every=4, lr=1e-2, lora_rank=4, device="cpu", progress=False)
    plain = sg.recover(student, train, probe, reference, **kw)
    distilled = sg.recover(student, train, probe, reference, teacher=dense, distill=1.0, **kw)
    held_out = random_blocks(8, 16, seed=2)
    assert kl_to(dense, distilled.model, held_out) < 0.8 * kl_to(dense, plain.model, held_out)
    assert distilled.config["distill"] == 1.0 and "distill" not in plain.config
    assert dense.training and all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


@pytest.mark.parametrize("kw, match", [({"distill": 0.5}, "needs the dense model as teacher="),
                                       ({"distill": 1.5, "teacher": "dense"}, "distill must be a number from 0"),
                                       ({"distill": 0.5, "teacher": "linear"}, "got Linear"),
                                       ({"distill": 0.5, "teacher": "other vocabulary"}, "the same vocabulary")])
def test_recovery_refuses_distillation_without_a_teacher_or_with_a_bad_weight(kw, match):
    import shear_graph as sg

    blocks = {"d": random_blocks(4, 16)}
    other = build("llama")
    other.resize_token_embeddings(64)
    teachers = {"dense": build("llama"), "linear": torch.nn.Linear(2, 2), "other vocabulary": other}
    kw = {**kw, "teacher": teachers[kw["teacher"]]} if kw.get("teacher") else kw
    with pytest.raises(ShearGraphError, match=match):
        sg.recover(build("llama"), blocks, blocks, {"d": 1.0}, steps=1, device="cpu", progress=False, **kw)
