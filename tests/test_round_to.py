"""round_to: plans that keep FFN widths in multiples of N channels (one-shot and LHSPG's periods)."""
from __future__ import annotations

import pytest

import shear_graph as sg
from shear_graph.progressive import saliency_selector

from conftest import build


@pytest.fixture(scope="module")
def llama():
    model = build("llama")
    return model, sg.find_groups(sg.trace(model))


@pytest.mark.parametrize("round_to", [8, 16, 32])
def test_one_shot_plans_keep_multiples_of_round_to(llama, round_to):
    model, groups = llama
    plan = sg.plan_by_magnitude(model, groups, 0.2, kinds=("ffn", "attention_head"), round_to=round_to)
    kept = plan.widths_after()
    ffn = [g for g in groups if g.kind == "ffn"]
    assert all(kept[g.id] % round_to == 0 for g in ffn)
    assert any(kept[g.id] < g.n_channels for g in ffn)  # it did prune
    assert 1 - sg.count_params(model, plan.removed_indices()) / sg.count_params(model) >= 0.2


def test_without_round_to_widths_are_not_multiples(llama):
    model, groups = llama
    kept = sg.plan_by_magnitude(model, groups, 0.2, kinds=("ffn",)).widths_after()
    assert any(kept[g.id] % 8 for g in groups if g.kind == "ffn")  # so the test above can fail


def test_pruned_model_has_the_rounded_widths(llama):
    model, groups = llama
    pruned = sg.apply_plan(model, sg.plan_by_magnitude(model, groups, 0.2, kinds=("ffn",), round_to=16))
    assert all(layer.mlp.gate_proj.out_features % 16 == 0 for layer in pruned.model.layers)


def test_lhspg_selection_rounds_every_period(llama):
    model, groups = llama
    select = saliency_selector(model, groups, 0.3, 2, method="magnitude", kinds=("ffn",), round_to=16,
                               progress=False)
    for period in (0, 1):
        removed = select(period, {})
        assert removed and all((g.n_channels - len(removed.get(g.id, []))) % 16 == 0
                               for g in groups if g.kind == "ffn")


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_bad_round_to_is_a_plan_error(llama, bad):
    model, groups = llama
    with pytest.raises(sg.PlanError, match="round_to must be a positive integer"):
        sg.plan_by_magnitude(model, groups, 0.2, round_to=bad)


def test_unreachable_ratio_with_rounding_says_so(llama):
    model, groups = llama
    with pytest.raises(sg.PlanError, match="round_to"):  # 96 channels rounded to 64 keep 64 or 96: at most 1/3 off
        sg.plan_by_magnitude(model, groups, 0.45, kinds=("ffn",), round_to=64)


def test_round_to_with_a_joint_allocation_is_refused(llama):
    model, groups = llama
    sal = sg.compute_saliency(model, groups, "magnitude")
    with pytest.raises(sg.PlanError, match="round_to rounds the uniform allocation"):
        sg.plan_by_saliency(model, groups, sal, 0.2, allocation="global", round_to=8)
