"""Slow tier: the real SmolLM2-135M (about 1-2 min on 2 CPU cores)."""
import numpy as np
import pytest
import torch

import shear_graph as sg
from test_checkpoint import reload_in_fresh_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from shear_graph.default_model import load_default_model

    model, tok = load_default_model()
    groups = sg.find_groups(sg.trace(model))
    return model, tok, groups


def test_groups_of_smollm2(smollm2):
    model, _, groups = smollm2
    counts = sg.group_counts(groups)
    assert counts == {"attention_head": {i: 3 for i in range(30)}, "ffn": {i: 1536 for i in range(30)},
                      "hidden": {None: 576}}
    ffn = next(g for g in groups if g.id == "ffn.L7")
    assert {(s.param.split(".", 3)[-1], s.dim) for s in ffn.slices} == {
        ("mlp.gate_proj.weight", 0), ("mlp.up_proj.weight", 0), ("mlp.down_proj.weight", 1)}
    assert all(s.param.startswith("model.layers.7.") for s in ffn.slices)
    assert all(s.indices.shape == (1536, 1) for s in ffn.slices)
    hidden = next(g for g in groups if g.kind == "hidden")
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(hidden.params)


def test_prune_20_percent_save_reload_generate(smollm2, tmp_path):
    model, tok, groups = smollm2
    plan = sg.plan_by_magnitude(model, groups, 0.2)
    pruned = sg.apply_plan(model, plan)
    removed = 1 - sg.count_params(pruned) / sg.count_params(model)
    assert 0.2 <= removed < 0.21
    ids = tok("The capital of Germany is", return_tensors="pt").input_ids
    with torch.no_grad():
        lp = pruned(ids).logits
        lm = sg.mask_plan(model, plan)(ids).logits
    # same algebra, different summation lengths: fp32 rounding only
    assert (lp - lm).abs().max() / lm.abs().max() < 2e-5
    sg.save_pruned(pruned, tmp_path / "m", tokenizer=tok)
    torch.testing.assert_close(reload_in_fresh_process(tmp_path / "m", ids, tmp_path), lp, atol=0, rtol=0)
    again = sg.load_pruned(tmp_path / "m")
    out = again.generate(ids, max_new_tokens=10, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 10
    assert again.lm_head.weight is again.model.embed_tokens.weight


def test_cli_main_job(tmp_path):
    from typer.testing import CliRunner

    from shear_graph.cli import app

    result = CliRunner().invoke(app, ["oneshot", "--ratio", "0.2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert '"reload_logits_identical": true' in result.output
    assert (tmp_path / "out" / "plan.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    assert np.isclose(sg.count_params(sg.load_pruned(tmp_path / "out")) / 134515008, 0.8, atol=0.01)


def test_default_model_first_layers(smollm2):
    from shear_graph.default_model import load_default_model
    from shear_graph.errors import ShearGraphError

    full, tok, _ = smollm2
    short, _ = load_default_model(n_layers=2)
    assert len(short.model.layers) == short.config.num_hidden_layers == 2
    assert sg.group_counts(sg.find_groups(sg.trace(short)))["ffn"] == {0: 1536, 1: 1536}
    ids = tok("def add(a, b):", return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = full(ids, output_hidden_states=True).hidden_states[2]
        expected = full.lm_head(full.model.norm(hidden))
        torch.testing.assert_close(short(ids).logits, expected, atol=1e-4, rtol=1e-4)
    for bad in (0, 31, 2.5):
        with pytest.raises(ShearGraphError, match="n_layers must be an integer from 1 to 30"):
            load_default_model(n_layers=bad)
