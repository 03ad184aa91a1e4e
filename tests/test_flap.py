"""FLAP (An et al., AAAI 2024): its fluctuation metric, Wanda-sp, the standardized
global allocation and bias compensation, each against a hand computation."""
import numpy as np
import pytest
import torch

import shear_graph as sg
from conftest import build, input_ids, logits, random_blocks, random_channels
from shear_graph.moments import InputMoments
from shear_graph.plan import max_removable, plan_adaptive, standardized_scores

KINDS = ("attention_head", "ffn")


@pytest.fixture(scope="module")
def llama():
    model = build("llama")
    return model, sg.find_groups(sg.trace(model))


def layer0_inputs(model, blocks, batch_size):
    """Every calibration token's input to layer 0's o_proj and down_proj, float64 [tokens, features]."""
    seen = {}
    layer = model.model.layers[0]
    hooks = [m.register_forward_hook(lambda mod, a, o, k=k: seen.setdefault(k, []).append(a[0].detach()))
             for k, m in (("o_proj", layer.self_attn.o_proj), ("down_proj", layer.mlp.down_proj))]
    with torch.no_grad():
        for ids in torch.split(blocks, batch_size):
            model(input_ids=ids)
    for h in hooks:
        h.remove()
    return {k: torch.cat([x.reshape(-1, x.shape[-1]) for x in v]).double() for k, v in seen.items()}


def test_flap_metric_by_hand(llama):
    model, groups = llama
    blocks = random_blocks()
    s = sg.compute_saliency(model, groups, "flap", blocks, batch_size=4, progress=False)
    x = layer0_inputs(model, blocks, 4)
    layer = model.model.layers[0]
    down, o = layer.mlp.down_proj.weight.detach().double(), layer.self_attn.o_proj.weight.detach().double()
    ffn = x["down_proj"].var(0) * down.pow(2).sum(0)
    np.testing.assert_allclose(s.scores["ffn.L0"], ffn.numpy(), rtol=1e-4)
    # GQA: 8 query heads of head_dim 8 over 2 KV heads; head group c owns o_proj columns 32c .. 32c + 31
    cols = (x["o_proj"].var(0) * o.pow(2).sum(0)).reshape(2, 32)
    np.testing.assert_allclose(s.index_scores["attention_head.L0"], cols.numpy(), rtol=1e-4)
    np.testing.assert_allclose(s.scores["attention_head.L0"], cols.sum(1).numpy(), rtol=1e-4)


def test_wanda_sp_scores_only_the_output_projection(llama):
    model, groups = llama
    blocks = random_blocks()
    s = sg.compute_saliency(model, groups, "wanda_sp", blocks, batch_size=3, progress=False)
    x = layer0_inputs(model, blocks, 3)
    down = model.model.layers[0].mlp.down_proj.weight.detach().double()
    hand = (down.abs() * x["down_proj"].pow(2).sum(0).sqrt()).sum(0)
    np.testing.assert_allclose(s.scores["ffn.L0"], hand.numpy(), rtol=1e-4)
    activation = sg.compute_saliency(model, groups, "activation", blocks, batch_size=3, progress=False)
    assert not np.allclose(activation.scores["ffn.L0"], s.scores["ffn.L0"]), "activation adds the gate/up rows"


def test_streaming_variance_survives_a_large_mean_in_float32():
    """E[x^2] - E[x]^2 in float32 loses every digit when the mean is 1e4 times the spread."""
    g = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(4000, 3, generator=g, dtype=torch.float64)
    m = InputMoments(0, torch.zeros(3), torch.zeros(3))
    for chunk in torch.split(x.float(), 333):
        m.add(chunk)
    torch.testing.assert_close(m.var.double(), x.var(0), rtol=2e-3, atol=0)
    torch.testing.assert_close(m.mean.double(), x.mean(0), rtol=1e-6, atol=0)
    torch.testing.assert_close(m.sq_norm.double(), x.pow(2).sum(0), rtol=1e-5, atol=0)


def test_flap_runs_in_bfloat16_close_to_float32(llama):
    model, groups = llama
    blocks = random_blocks()
    ref = sg.compute_saliency(model, groups, "flap", blocks, progress=False)
    half = sg.compute_saliency(build("llama").to(torch.bfloat16), groups, "flap", blocks, progress=False)
    for gid in ("ffn.L1", "attention_head.L1"):
        np.testing.assert_allclose(half.scores[gid], ref.scores[gid], rtol=0.1)


def test_saliency_with_index_scores_round_trips_json(llama):
    model, groups = llama
    s = sg.compute_saliency(model, groups, "flap", random_blocks(), progress=False)
    again = sg.Saliency.from_json(s.to_json())
    assert again.index_scores.keys() == s.index_scores.keys()
    np.testing.assert_array_equal(again.index_scores["attention_head.L0"], s.index_scores["attention_head.L0"])


def fake_saliency(groups, fn, index=None):
    scores = {g.id: np.asarray(fn(g), dtype=np.float64) for g in groups}
    return sg.Saliency("fake", "", scores, index_scores=index or {})


def test_standardized_scores_by_hand(llama):
    _, groups = llama
    head = next(g for g in groups if g.id == "attention_head.L0")
    cols = np.arange(64, dtype=np.float64).reshape(2, 32) % 7 + 1
    s = fake_saliency(groups, lambda g: np.ones(g.n_channels), {head.id: cols})
    sq = cols ** 2  # FLAP squares the attention columns, standardizes them per layer, then averages per head
    hand = ((sq - sq.mean()) / sq.std(ddof=1)).mean(1)
    np.testing.assert_allclose(standardized_scores(s, head), hand)
    ffn = next(g for g in groups if g.id == "ffn.L0")
    raw = np.arange(ffn.n_channels, dtype=np.float64) ** 1.5
    s = fake_saliency(groups, lambda g: raw if g.id == ffn.id else np.ones(g.n_channels))
    np.testing.assert_allclose(standardized_scores(s, ffn), (raw - raw.mean()) / raw.std(ddof=1))
    assert not standardized_scores(s, next(g for g in groups if g.id == "ffn.L1")).any(), "flat scores: all zero"


def test_standardization_makes_layers_on_different_scales_comparable(llama):
    """Layer 1's scores are layer 0's times 1000: ranked raw, layer 0 takes the whole cut;
    standardized, both layers lose the same channels."""
    model, groups = llama
    rng = np.random.default_rng(0)
    base = rng.random(96)
    s = fake_saliency(groups, lambda g: base * (1000 if g.layer == 1 else 1) if g.kind == "ffn" else np.ones(g.n_channels))
    raw = plan_adaptive(model, groups, s, 0.15, kinds=["ffn"], standardize=False).widths_after()
    std = plan_adaptive(model, groups, s, 0.15, kinds=["ffn"]).widths_after()
    assert raw["ffn.L1"] == 96 and raw["ffn.L0"] < 96
    assert abs(std["ffn.L0"] - std["ffn.L1"]) <= 1


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_adaptive_allocation_reaches_the_ratio_with_the_fewest_channels(llama, ratio):
    model, groups = llama
    s = sg.compute_saliency(model, groups, "flap", random_blocks(), progress=False)
    plan = sg.plan_by_saliency(model, groups, s, ratio, kinds=KINDS, allocation="standardized")
    total = sg.count_params(model)
    removed = 1 - sg.count_params(sg.apply_plan(model, plan)) / total
    assert removed >= ratio
    # one channel fewer (the last one the ranking took) would fall short
    ranked = {g.id: standardized_scores(s, g) for g in groups if g.kind in KINDS}
    last = max(((r.group, c) for r in plan.removals for c in r.channels), key=lambda rc: ranked[rc[0]][rc[1]])
    fewer = {r.group: [c for c in r.channels if (r.group, c) != last] for r in plan.removals}
    short = sg.PrunePlan.from_channels(model, groups, fewer)
    assert 1 - sg.count_params(model, short.removed_indices()) / total < ratio
    assert all(w >= 1 for w in plan.widths_after().values())
    assert sg.PrunePlan.from_json(plan.to_json()) == plan
    assert "allocation=standardized" in plan.method


def test_adaptive_allocation_keeps_a_channel_of_every_group_at_the_limit(llama):
    model, groups = llama
    s = sg.compute_saliency(model, groups, "wanda_sp", random_blocks(), progress=False)
    ratio = max_removable(model, groups, KINDS) - 1e-6
    plan = plan_adaptive(model, groups, s, ratio, kinds=KINDS)
    assert {gid: w for gid, w in plan.widths_after().items() if gid != "hidden"} == {
        g.id: 1 for g in groups if g.kind in KINDS}


def test_allocation_errors_are_one_line(llama):
    model, groups = llama
    s = sg.compute_saliency(model, groups, "magnitude")
    with pytest.raises(sg.PlanError, match="allocation must be one of"):
        sg.plan_by_saliency(model, groups, s, 0.2, allocation="flap")
    with pytest.raises(sg.PlanError, match="give one or the other"):
        sg.plan_by_saliency(model, groups, s, 0.2, shares={"ffn.L0": 2.0}, allocation="global")
    with pytest.raises(sg.PlanError, match="cannot be reached"):
        plan_adaptive(model, groups, s, 0.9, kinds=KINDS)
    partial = sg.Saliency("magnitude", "", {"ffn.L0": s.scores["ffn.L0"]})
    with pytest.raises(sg.PlanError, match="no scores for group"):
        plan_adaptive(model, groups, partial, 0.1, kinds=KINDS)


# -- bias compensation ----------------------------------------------------------------------------------------------

def ffn_and_head_plan(model, groups, seed=0, kinds=("ffn", "attention_head")):
    chans = {gid: c for kind in kinds for gid, c in random_channels(groups, kind, seed).items()}
    return sg.PrunePlan.from_channels(model, groups, chans)


def test_compensation_bias_equals_the_mean_of_the_removed_inputs_by_hand(llama):
    model, groups = llama
    plan = ffn_and_head_plan(model, groups)
    blocks = random_blocks()
    comp = sg.compensate_plan(model, plan, blocks, batch_size=4, progress=False)
    x = layer0_inputs(model, blocks, 4)
    layer = model.model.layers[0]
    for gid, proj, key in (("ffn.L0", layer.mlp.down_proj, "down_proj"),
                           ("attention_head.L0", layer.self_attn.o_proj, "o_proj")):
        removal = next(r for r in plan.removals if r.group == gid)
        cols = next(s["indices"] for s in removal.slices if s["param"].endswith(f"{key}.weight"))
        hand = proj.weight.detach().double()[:, cols] @ x[key][:, cols].mean(0)
        torch.testing.assert_close(comp.biases[f"model.layers.0.{'mlp' if key == 'down_proj' else 'self_attn'}.{key}"],
                                   hand.float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,lora,hidden", [("llama", False, False), ("llama", True, False), ("gpt2", False, False),
                                              ("llama", False, True)])
def test_compensated_apply_equals_compensated_mask(name, lora, hidden):
    """With hidden channels removed too, the new biases lose the rows of the removed hidden channels."""
    model = build(name, lora=lora)
    groups = sg.find_groups(sg.trace(model))
    plan = ffn_and_head_plan(model, groups, seed=1, kinds=("ffn", "attention_head") + (("hidden",) if hidden else ()))
    comp = sg.compensate_plan(model, plan, random_blocks(), progress=False)
    assert comp.skipped == (["hidden"] if hidden else [])
    ids = input_ids()
    before = logits(model, ids)
    pruned, masked = sg.apply_plan(model, plan, compensate=comp), sg.mask_plan(model, plan, compensate=comp)
    lp = logits(pruned, ids)
    torch.testing.assert_close(lp, logits(masked, ids), atol=1e-5, rtol=0)
    assert not torch.allclose(lp, logits(sg.apply_plan(model, plan), ids), atol=1e-3), "the biases change the output"
    assert torch.equal(logits(model, ids), before), "the input model must not change"
    assert not model.training and getattr(model.config, "mlp_bias", False) is False


def test_compensation_keeps_the_mean_output_of_the_pruned_layer(llama):
    """Only layer 1's FFN loses channels: over the calibration tokens, its down_proj output keeps its mean exactly."""
    model, groups = llama
    plan = sg.PrunePlan.from_channels(model, groups, {"ffn.L1": list(range(0, 96, 3))})
    blocks = random_blocks()
    comp = sg.compensate_plan(model, plan, blocks, progress=False)

    def mean_output(m):
        outs = []
        h = m.model.layers[1].mlp.down_proj.register_forward_hook(lambda mod, a, o: outs.append(o.detach()))
        with torch.no_grad():
            m(input_ids=blocks)
        h.remove()
        return outs[0].reshape(-1, outs[0].shape[-1]).double().mean(0)

    target = mean_output(model)
    torch.testing.assert_close(mean_output(sg.apply_plan(model, plan, compensate=comp)), target, atol=1e-5, rtol=0)
    assert (mean_output(sg.apply_plan(model, plan)) - target).abs().max() > 1e-3


def test_compensated_models_load_back_with_equal_logits(llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model, groups = llama
    blocks = random_blocks()
    s = sg.compute_saliency(model, groups, "flap", blocks, progress=False)
    uniform = sg.plan_by_saliency(model, groups, s, 0.3, kinds=KINDS)
    pruned = sg.apply_plan(model, uniform, compensate=sg.compensate_plan(model, uniform, blocks, progress=False))
    assert pruned.config.mlp_bias and pruned.config.attention_bias
    sg.save_pruned(pruned, tmp_path / "uniform")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "uniform").eval()
    torch.testing.assert_close(logits(plain, input_ids()), logits(pruned, input_ids()), atol=1e-5, rtol=0)
    adaptive = sg.plan_by_saliency(model, groups, s, 0.3, kinds=KINDS, allocation="standardized")
    pruned = sg.apply_plan(model, adaptive, compensate=sg.compensate_plan(model, adaptive, blocks, progress=False))
    sg.save_pruned(pruned, tmp_path / "adaptive")
    again = sg.load_pruned(tmp_path / "adaptive")
    torch.testing.assert_close(logits(again, input_ids()), logits(pruned, input_ids()), atol=1e-5, rtol=0)


def test_bad_compensation_input_is_one_line(llama):
    model, groups = llama
    plan = ffn_and_head_plan(model, groups)
    for blocks in (None, torch.zeros(0, 8, dtype=torch.long), random_blocks().float(), random_blocks()[0]):
        with pytest.raises(sg.ShearGraphError, match="needs calibration tokens") as e:
            sg.compensate_plan(model, plan, blocks, progress=False)
        assert "\n" not in str(e.value)
    with pytest.raises(sg.ShearGraphError, match="token ids must lie in"):
        sg.compensate_plan(model, plan, random_blocks() + 10_000, progress=False)
    with pytest.raises(sg.ShearGraphError, match="batch_size must be a positive integer"):
        sg.compensate_plan(model, plan, random_blocks(), batch_size=0, progress=False)
    with pytest.raises(sg.ShearGraphError, match="takes the Compensation from sg.compensate_plan"):
        sg.apply_plan(model, plan, compensate=random_blocks())
    other = sg.compensate_plan(model, ffn_and_head_plan(model, groups, seed=5), random_blocks(), progress=False)
    for fn in (sg.apply_plan, sg.mask_plan):
        with pytest.raises(sg.PlanError, match="computed for another plan"):
            fn(model, plan, compensate=other)
    mistral = build("mistral")
    mgroups = sg.find_groups(sg.trace(mistral))
    with pytest.raises(sg.ShearGraphError, match="no config switch"):
        sg.compensate_plan(mistral, ffn_and_head_plan(mistral, mgroups), random_blocks(), progress=False)
