import json

import numpy as np
import pytest
import torch

import shear_graph as sg
from conftest import build, input_ids, logits

from shear_graph.plan import keep_layer_shares


@pytest.fixture(scope="module")
def llama():
    model = build("llama")
    return model, sg.find_groups(sg.trace(model))


def test_json_round_trip(llama, tmp_path):
    model, groups = llama
    plan = sg.plan_by_magnitude(model, groups, 0.3)
    plan.save(tmp_path / "plan.json")
    again = sg.PrunePlan.load(tmp_path / "plan.json")
    assert again == plan
    assert torch.equal(logits(sg.apply_plan(model, again), input_ids()), logits(sg.apply_plan(model, plan), input_ids()))


def test_plan_reports_exactly_what_it_removes_and_skips_no_group(llama):
    """Torch-Pruning drops GQA head groups at 50% without a word; here every
    selected group appears, and the pruned shapes are the plan's numbers."""
    model, groups = llama
    plan = sg.plan_by_magnitude(model, groups, 0.5, kinds=["attention_head", "ffn"])
    assert {r.group for r in plan.removals} == {g.id for g in groups if g.kind in ("attention_head", "ffn")}
    pruned = sg.apply_plan(model, plan)
    before = dict(model.named_parameters())
    after = dict(pruned.named_parameters())
    for r in plan.removals:
        for s in r.slices:
            assert after[s["param"]].shape[s["dim"]] == before[s["param"]].shape[s["dim"]] - len(s["indices"])
    removed = 1 - sg.count_params(pruned) / sg.count_params(model)
    assert 0.5 <= removed < 0.56


def test_magnitude_removes_the_smallest_channels(llama):
    model, groups = llama
    ffn = next(g for g in groups if g.id == "ffn.L0")
    with torch.no_grad():
        model_ = build("llama")
        model_.model.layers[0].mlp.up_proj.weight[[5, 17]] *= 1e-3
        model_.model.layers[0].mlp.gate_proj.weight[[5, 17]] *= 1e-3
        model_.model.layers[0].mlp.down_proj.weight[:, [5, 17]] *= 1e-3
    plan = sg.plan_by_magnitude(model_, groups, 0.01, kinds=["ffn"])
    removal = next(r for r in plan.removals if r.group == ffn.id)
    assert {5, 17} <= set(removal.channels)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.2", None])
def test_ratio_outside_unit_interval_is_refused(llama, ratio):
    model, groups = llama
    with pytest.raises(sg.PlanError, match=r"ratio must be (a number )?in \[0, 1\)"):
        sg.plan_by_magnitude(model, groups, ratio)


def test_groups_of_another_model_are_refused(llama):
    """Bug: groups of a model with FFN width 96 planned another with 128 silently."""
    _, groups = llama
    from conftest import family_config

    cfg = family_config("llama")
    cfg.intermediate_size = 128
    other = build("llama", config=cfg)
    with pytest.raises(sg.PlanError, match="groups were found on another model"):
        sg.plan_by_magnitude(other, groups, 0.2)


def test_wrong_argument_types_say_what_was_expected(llama):
    model, _ = llama
    with pytest.raises(TypeError, match="find_groups takes the ShearGraph"):
        sg.find_groups(model)
    with pytest.raises(TypeError, match="expected a PrunePlan, got str"):
        sg.apply_plan(model, "plan.json")
    with pytest.raises(TypeError, match="expected a PrunePlan, got NoneType"):
        sg.mask_plan(model, None)


def test_unreachable_ratio_names_the_largest_reachable(llama):
    model, groups = llama
    with pytest.raises(sg.PlanError, match=r"at most 0\.138 of the parameters"):
        sg.plan_by_magnitude(model, groups, 0.9, kinds=["attention_head"])


def test_kinds_as_a_bare_string_or_unknown_names_are_refused(llama):
    model, groups = llama
    with pytest.raises(sg.PlanError, match=r"kinds must be a list or tuple of group kinds such as \('ffn',\), got 'ffn'"):
        sg.plan_by_magnitude(model, groups, 0.2, kinds="ffn")
    with pytest.raises(sg.PlanError, match=r"unknown group kinds \['FFN', 'bogus'\]; the kinds are attention_head"):
        sg.plan_by_magnitude(model, groups, 0.2, kinds=("ffn", "bogus", "FFN"))


def test_unreachable_ratio_counts_only_the_exclusions_among_its_kinds(llama):
    model, groups = llama
    heads = [g.id for g in groups if g.kind == "attention_head"]
    ffn = [g.id for g in groups if g.kind == "ffn"]
    with pytest.raises(sg.PlanError, match=r"kinds \['ffn'\] and 1 groups excluded as unprunable"):
        sg.plan_by_magnitude(model, groups, 0.9, kinds=["ffn"], exclude=heads + ffn[:1])


def test_plan_for_another_model_is_refused(llama):
    model, groups = llama
    plan = sg.plan_by_magnitude(model, groups, 0.2)
    other = build("mistral")
    with pytest.raises(sg.PlanError, match="made for a LlamaForCausalLM"):
        sg.apply_plan(other, plan)
    with pytest.raises(sg.PlanError, match="made for a LlamaForCausalLM"):
        sg.mask_plan(other, plan)


def test_removing_every_head_of_a_layer_is_refused(llama):
    model, groups = llama
    with pytest.raises(sg.PlanError, match="removes all 2 channels of group attention_head.L0"):
        sg.PrunePlan.from_channels(model, groups, {"attention_head.L0": [0, 1]})


def test_hand_edited_plan_breaking_the_query_kv_ratio_is_refused(llama):
    model, groups = llama
    plan = sg.PrunePlan.from_channels(model, groups, {"attention_head.L0": [1]})
    data = json.loads(plan.to_json())
    q = next(s for s in data["removals"][0]["slices"] if s["param"].endswith("q_proj.weight"))
    q["indices"] = q["indices"][:8]  # one query head, not the KV head's four
    with pytest.raises(sg.PlanError, match="break the query/KV head ratio"):
        sg.apply_plan(model, sg.PrunePlan.from_json(json.dumps(data)))


def test_bad_channel_ids_and_unknown_groups(llama):
    model, groups = llama
    with pytest.raises(sg.PlanError, match="channels 0..95"):
        sg.PrunePlan.from_channels(model, groups, {"ffn.L0": [96]})
    with pytest.raises(sg.PlanError, match="unknown removal group 'ffn.L9'"):
        sg.PrunePlan.from_channels(model, groups, {"ffn.L9": [0]})
    with pytest.raises(sg.PlanError, match=r"not a shear-graph prune plan: missing field\(s\)"):
        sg.PrunePlan.from_json('{"a": 1}')


def test_inplace_changes_the_model_and_default_does_not(llama):
    model, groups = llama
    plan = sg.PrunePlan.from_channels(model, groups, {"ffn.L1": [0, 1, 2]})
    copy_ = build("llama")
    out = sg.apply_plan(copy_, plan)
    assert out is not copy_ and copy_.model.layers[1].mlp.up_proj.weight.shape[0] == 96
    out = sg.apply_plan(copy_, plan, inplace=True)
    assert out is copy_ and copy_.model.layers[1].mlp.up_proj.weight.shape[0] == 93


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_pruned_model_shares_no_tensor_with_the_input(family):
    """apply_plan copies only what it keeps unsliced; nothing of the result may
    alias the input (tied embeddings included), or training it would change the input."""
    model = build(family)
    groups = sg.find_groups(sg.trace(model))
    plan = sg.PrunePlan.from_channels(model, groups, {g.id: [0] for g in groups if g.kind in ("ffn", "hidden")})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = sg.apply_plan(model, plan)
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not [n for n, p in out.named_parameters() if p.untyped_storage().data_ptr() in storages]
    with torch.no_grad():
        for p in out.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if model.config.tie_word_embeddings:
        assert out.get_input_embeddings().weight is out.get_output_embeddings().weight


def test_shares_set_each_groups_share_of_the_cut(llama):
    model, groups = llama
    sal = sg.compute_saliency(model, groups, "magnitude")
    removed = {r.group: len(r.channels) for r in sg.plan_by_saliency(
        model, groups, sal, 0.1, kinds=["ffn"], shares={"ffn.L0": 2.0, "ffn.L1": 1.0}).removals}
    assert abs(removed["ffn.L0"] - 2 * removed["ffn.L1"]) <= 1 and removed["ffn.L1"] > 0
    plan = sg.plan_by_saliency(model, groups, sal, 0.1, kinds=["ffn"], shares={"ffn.L0": 0.0})
    assert [r.group for r in plan.removals] == ["ffn.L1"]
    assert 1 - sg.count_params(sg.apply_plan(model, plan)) / sg.count_params(model) >= 0.1


def test_small_shares_still_reach_the_ratio_closely(llama):
    model, groups = llama
    sal = sg.compute_saliency(model, groups, "magnitude")
    plan = sg.plan_by_saliency(model, groups, sal, 0.2, kinds=["ffn"], shares={"ffn.L0": 1e-3, "ffn.L1": np.float32(1)})
    removed = 1 - sg.count_params(sg.apply_plan(model, plan)) / sg.count_params(model)
    assert 0.2 <= removed < 0.21


def test_bad_or_unreachable_shares_are_refused(llama):
    model, groups = llama
    sal = sg.compute_saliency(model, groups, "magnitude")
    for bad in (-1.0, float("nan"), 1e-9):
        with pytest.raises(sg.PlanError, match="shares must be 0 .* or finite numbers from 0.001"):
            sg.plan_by_saliency(model, groups, sal, 0.1, kinds=["ffn"], shares={"ffn.L0": bad})
    with pytest.raises(sg.PlanError, match="shares must be numbers; 'ffn.L0' has 'x'"):
        sg.plan_by_saliency(model, groups, sal, 0.1, kinds=["ffn"], shares={"ffn.L0": "x"})
    with pytest.raises(sg.PlanError, match=r"shares must be a dict"):
        sg.plan_by_saliency(model, groups, sal, 0.1, kinds=["ffn"], shares=[1, 2])
    with pytest.raises(sg.PlanError, match=r"shares name groups this model does not have: \['ffn.L9'\]"):
        sg.plan_by_saliency(model, groups, sal, 0.1, kinds=["ffn"], shares={"ffn.L9": 1.0})
    with pytest.raises(sg.PlanError, match="cannot be reached with these shares: at most 0.0000"):
        sg.plan_by_saliency(model, groups, sal, 0.1, kinds=["ffn"], shares={"ffn.L0": 0, "ffn.L1": 0})


def test_kept_layers_are_left_whole(llama):
    model, groups = llama
    assert keep_layer_shares(groups, [-1]) == {"attention_head.L1": 0.0, "ffn.L1": 0.0}
    assert keep_layer_shares(groups, []) == {}
    sal = sg.compute_saliency(model, groups, "magnitude")
    plan = sg.plan_by_saliency(model, groups, sal, 0.1, kinds=["ffn", "attention_head"],
                               shares=keep_layer_shares(groups, [0]))
    assert plan.removals and all(r.group.endswith(".L1") for r in plan.removals)
    for bad in (2, -3, 0.5, "0", True):
        with pytest.raises(sg.PlanError, match=r"keep_layers must be integers from -2 to 1 \(this model has 2"):
            keep_layer_shares(groups, [bad])
    with pytest.raises(sg.PlanError, match="keep_layers must be a list of decoder-layer indices, got 5"):
        keep_layer_shares(groups, 5)
