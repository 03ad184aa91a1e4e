"""LHSPG: exactly the chosen groups reach zero, progressively; the pruned model
equals the trained one; knowledge moves; bad input and resume."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import VOCAB, build, logits, pattern_blocks

import shear_graph as sg
from shear_graph.adapters import add_lora
from shear_graph.errors import PlanError, ShearGraphError, TrainingError
from shear_graph.lhspg import LHSPG, group_norms
from shear_graph.progressive import _batch_order, lhspg_prune


def lm_loss(model, blocks) -> float:
    with torch.no_grad():
        return float(model(input_ids=blocks, labels=blocks).loss)


def zero_channels(model, groups) -> dict:
    return {gid: sorted(i for i, v in enumerate(n) if v == 0) for gid, n in group_norms(model, groups).items()}


def test_optimizer_zeroes_exactly_the_chosen_channels_period_by_period():
    model = add_lora(build("llama"), rank=4)
    groups = sg.find_groups(sg.trace(model))
    chosen = [{"ffn.L0": [1, 5, 7]}, {"ffn.L0": [1, 5, 7, 9], "attention_head.L1": [0]}]
    calls = []

    def select(period, already):
        calls.append((period, already))
        return chosen[period]

    opt = LHSPG(model, groups, select, lr=1e-2, warmup_steps=2, n_periods=2, period_steps=3)
    data = torch.randint(0, VOCAB, (4, 12))
    seen = {}
    for step in range(1, opt.total_steps + 3):
        opt.zero_grad()
        model(input_ids=data, labels=data).loss.backward()
        opt.step()
        seen[step] = {g: c for g, c in zero_channels(model, groups).items() if c}
    assert calls == [(0, {}), (1, {"ffn.L0": [1, 5, 7]})]
    assert seen[2] == {} and seen[4] == {}  # warm-up, then decaying but not yet zero
    assert seen[5] == {"ffn.L0": [1, 5, 7]}  # end of period 0
    assert seen[8] == seen[10] == {"ffn.L0": [1, 5, 7, 9], "attention_head.L1": [0]}  # held after the last period
    decaying = group_norms(model, groups, {"ffn.L1": [0, 1]})["ffn.L1"]
    assert (decaying > 0).all()


def test_select_may_not_drop_earlier_channels():
    model = add_lora(build("llama"), rank=4)
    groups = sg.find_groups(sg.trace(model))
    opt = LHSPG(model, groups, lambda p, c: [{"ffn.L0": [1, 2]}, {"ffn.L0": [2]}][p], n_periods=2, period_steps=1)
    data = torch.randint(0, VOCAB, (2, 8))
    opt.zero_grad()
    model(input_ids=data, labels=data).loss.backward()
    opt.step()
    with pytest.raises(ShearGraphError, match="dropped channels of group ffn.L0"):
        opt.step()


def test_lhspg_prune_gives_a_plan_whose_physical_model_equals_the_trained_one(trained):
    before = copy.deepcopy(trained.state_dict())
    result = lhspg_prune(trained, pattern_blocks(64, seed=2), 0.2, warmup_steps=2, n_periods=2, period_steps=3,
                         batch_size=4, lr=1e-3, progress=False)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())  # input untouched
    groups = sg.find_groups(sg.trace(result.model))
    planned = {r.group: r.channels for r in result.plan.removals}
    assert planned and zero_channels(result.model, groups) == {g.id: planned.get(g.id, []) for g in groups}
    assert [p["ratio"] for p in result.periods] == pytest.approx([0.1, 0.2])
    small = sg.apply_plan(result.model, result.plan)
    removed = 1 - sg.count_params(small) / sg.count_params(trained)
    assert removed >= 0.2
    ids = pattern_blocks(3, seed=9)
    torch.testing.assert_close(logits(small, ids), logits(result.model, ids), atol=1e-4, rtol=0)


def test_knowledge_moves_into_the_kept_groups(trained):
    """After removal, LHSPG's model has a lower loss than one-shot pruning of the
    same groups (as many channels of each, lowest Taylor saliency on the dense
    model) followed by as many LoRA steps on the same batches."""
    train, held_out = pattern_blocks(96, seed=3), pattern_blocks(32, seed=4)
    steps, bs, lr = 24, 4, 2e-3
    result = lhspg_prune(trained, train, 0.3, kinds=("ffn",), warmup_steps=0, n_periods=2, period_steps=6,
                         final_steps=12, batch_size=bs, lr=lr, lora_rank=4, progress=False)
    lhspg_loss = lm_loss(sg.apply_plan(result.model, result.plan), held_out)

    groups = sg.find_groups(sg.trace(trained))
    taylor = sg.compute_saliency(trained, groups, "taylor", train[:16])
    oneshot = sg.apply_plan(trained, sg.PrunePlan.from_channels(trained, groups, {
        r.group: np.argsort(taylor.scores[r.group], kind="stable")[:len(r.channels)].tolist()
        for r in result.plan.removals}))
    peft_model = add_lora(oneshot, rank=4)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    order = _batch_order(len(train), steps, bs, seed=0)
    peft_model.train()
    for i in range(steps):
        opt.zero_grad()
        ids = train[order[i]]
        peft_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    oneshot_loss = lm_loss(peft_model.eval(), held_out)
    assert lhspg_loss < oneshot_loss, (lhspg_loss, oneshot_loss)


def test_shares_steer_which_layers_lose_channels(trained):
    result = lhspg_prune(trained, pattern_blocks(32, seed=2), 0.1, kinds=("ffn",), shares={"ffn.L0": 0.0},
                         warmup_steps=1, n_periods=1, period_steps=2, final_steps=1, batch_size=4, progress=False)
    assert [r.group for r in result.plan.removals] == ["ffn.L1"]
    assert result.settings["shares"] == {"ffn.L0": 0.0}


def test_unreachable_ratio_names_the_largest_reachable(trained):
    with pytest.raises(PlanError, match="at most 0.[0-9]+ of the parameters are removable"):
        lhspg_prune(trained, pattern_blocks(8), 0.9, kinds=("attention_head",), progress=False)


def test_nan_loss_halts_naming_the_step_and_keeps_the_checkpoint(trained, tmp_path, monkeypatch):
    real_step = LHSPG.step

    def poisoned_step(self, closure=None):
        out = real_step(self, closure)
        if self.schedule["step"] == 4:  # the update of step 4 goes bad: step 5's loss is NaN
            self.param_groups[0]["params"][0].data.fill_(float("nan"))
        return out

    monkeypatch.setattr(LHSPG, "step", poisoned_step)
    with pytest.raises(TrainingError, match=r"nan at step 5\b.*state \(step 4\) is in"):
        lhspg_prune(trained, pattern_blocks(16), 0.2, warmup_steps=2, n_periods=2, period_steps=2, batch_size=2,
                    checkpoint_dir=tmp_path, progress=False)
    assert torch.load(tmp_path / "lhspg_state.pt", weights_only=False)["optimizer"]["lhspg"]["step"] == 4


def test_killed_run_resumes_to_the_same_plan(trained, tmp_path, monkeypatch):
    kwargs = dict(warmup_steps=2, n_periods=2, period_steps=3, batch_size=4, lr=1e-3, progress=False)
    data = pattern_blocks(32, seed=5)
    whole = lhspg_prune(trained, data, 0.2, **kwargs)

    real_step, calls = LHSPG.step, []

    def dying_step(self, closure=None):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_step(self, closure)

    monkeypatch.setattr(LHSPG, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        lhspg_prune(trained, data, 0.2, checkpoint_dir=tmp_path, **kwargs)
    monkeypatch.setattr(LHSPG, "step", real_step)
    with pytest.raises(ShearGraphError, match=r"other settings \(distill=0.0, now 0.5; lr=0.001, now 0.002\)"):
        lhspg_prune(trained, data, 0.2, checkpoint_dir=tmp_path, **{**kwargs, "lr": 2e-3}, distill=0.5)
    resumed = lhspg_prune(trained, data, 0.2, checkpoint_dir=tmp_path, **kwargs)
    assert [r.channels for r in resumed.plan.removals] == [r.channels for r in whole.plan.removals]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-4)
    for k, v in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, atol=1e-5, rtol=0)


def test_bad_blocks_are_refused(trained):
    with pytest.raises(ShearGraphError, match="int64 tensor"):
        lhspg_prune(trained, torch.zeros(4, 8), 0.2, progress=False)


def test_adding_lora_shows_the_user_no_deprecation_noise():
    """peft reads transformers' deprecated ``is_gradient_checkpointing``; the
    FutureWarning it raised filled the prune command's output."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_lora(build("llama"), rank=4)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
