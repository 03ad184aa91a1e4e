"""The oracle: physically removing channels == zeroing them (mask), per family,
per group kind, with and without LoRA."""
import pytest
import torch

import shear_graph as sg
from conftest import FAMILIES, RMSNORM_FAMILIES, build, input_ids, logits, random_channels

# LayerNorm re-centres over the kept channels, so removing hidden channels of
# GPT-2/OPT/BERT is not equal to zeroing them. Bound measured on these tiny
# random models with a third of the hidden channels removed: relative max logit
# error 0.23-0.39. Stated in README "Known limits".
LAYERNORM_HIDDEN_REL_BOUND = 0.5


@pytest.mark.parametrize("lora", [False, True], ids=["dense", "lora"])
@pytest.mark.parametrize("kind", ["attention_head", "ffn", "hidden"])
def test_apply_equals_mask(family, kind, lora):
    model = build(family, lora=lora)
    groups = sg.find_groups(sg.trace(model))
    plan = sg.PrunePlan.from_channels(model, groups, random_channels(groups, kind, seed=FAMILIES.index(family)))
    assert plan.removals, "the plan must remove something"
    ids = input_ids()
    before = logits(model, ids)
    pruned, masked = sg.apply_plan(model, plan), sg.mask_plan(model, plan)
    assert sg.count_params(pruned) < sg.count_params(model)
    lp, lm = logits(pruned, ids), logits(masked, ids)
    if kind != "hidden" or family in RMSNORM_FAMILIES:
        torch.testing.assert_close(lp, lm, atol=1e-5, rtol=0)
    else:
        assert (lp - lm).abs().max() / lm.abs().max() < LAYERNORM_HIDDEN_REL_BOUND
    assert torch.equal(logits(model, ids), before), "the input model must not change"
