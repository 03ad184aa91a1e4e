"""Removal groups: counts per family equal the config's numbers; groups are minimal."""
import numpy as np
import pytest
import torch
from transformers import LlamaConfig

import shear_graph as sg
from conftest import build, family_config


def expected_counts(name):
    cfg = family_config(name)
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    ffn = {"gpt2": 4 * cfg.hidden_size, "opt": getattr(cfg, "ffn_dim", None)}.get(name) or cfg.intermediate_size
    layers = cfg.num_hidden_layers
    return {"attention_head": {i: heads for i in range(layers)}, "ffn": {i: ffn for i in range(layers)},
            "hidden": {None: cfg.hidden_size}}


@pytest.mark.parametrize("lora", [False, True], ids=["dense", "lora"])
def test_group_counts_equal_config(family, lora):
    groups = sg.find_groups(sg.trace(build(family, lora=lora)))
    assert sg.group_counts(groups) == expected_counts(family)


@pytest.mark.parametrize("lora", [False, True], ids=["dense", "lora"])
def test_ffn_channel_is_exactly_gate_up_rows_and_down_column(lora):
    """Through RoPE's slice/cat/neg, groups stay minimal (Torch-Pruning's search
    grows through them and never finishes on SmolLM2)."""
    groups = sg.find_groups(sg.trace(build("llama", lora=lora)))
    ffn = next(g for g in groups if g.id == "ffn.L0")
    pre = "base_model.model." if lora else ""
    base = lambda n: f"{pre}model.layers.0.mlp.{n}" + (".base_layer.weight" if lora else ".weight")
    expected = {(base("gate_proj"), 0), (base("up_proj"), 0), (base("down_proj"), 1)}
    if lora:
        for n in ("gate_proj", "up_proj"):
            expected.add((f"{pre}model.layers.0.mlp.{n}.lora_B.default.weight", 0))
        expected.add((f"{pre}model.layers.0.mlp.down_proj.lora_A.default.weight", 1))
    assert {(s.param, s.dim) for s in ffn.slices} == expected
    for s in ffn.slices:
        assert s.indices.shape == (96, 1)
        assert np.array_equal(s.indices[:, 0], np.arange(96))


def test_attention_head_group_is_kv_head_with_its_query_heads():
    groups = sg.find_groups(sg.trace(build("llama")))
    g = next(g for g in groups if g.id == "attention_head.L1")
    assert g.n_channels == 2 and g.attention.num_heads == 8 and g.attention.head_dim == 8
    q = g.slice("model.layers.1.self_attn.q_proj.weight")
    k = g.slice("model.layers.1.self_attn.k_proj.weight")
    o = g.slice("model.layers.1.self_attn.o_proj.weight")
    assert np.array_equal(q.indices[1], np.arange(32, 64))  # query heads 4..7 share KV head 1
    assert np.array_equal(k.indices[1], np.arange(8, 16))
    assert o.dim == 1 and np.array_equal(o.indices, q.indices)


def test_gqa_24_query_8_kv_heads():
    cfg = LlamaConfig(hidden_size=96, intermediate_size=64, num_hidden_layers=1, num_attention_heads=24,
                      num_key_value_heads=8, head_dim=4, vocab_size=100)
    groups = sg.find_groups(sg.trace(cfg))
    g = next(g for g in groups if g.kind == "attention_head")
    assert g.n_channels == 8
    assert g.slice("model.layers.0.self_attn.q_proj.weight").indices.shape == (8, 12)
    assert g.slice("model.layers.0.self_attn.k_proj.weight").indices.shape == (8, 4)


def test_tied_embedding_and_lm_head_share_the_hidden_group():
    cfg = family_config("llama")
    cfg.tie_word_embeddings = True
    groups = sg.find_groups(sg.trace(build("llama", config=cfg)))
    hidden = next(g for g in groups if g.kind == "hidden")
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(hidden.params)
    assert np.array_equal(hidden.slice("lm_head.weight").indices, hidden.slice("model.embed_tokens.weight").indices)


def test_rms_norm_weights_are_found_for_the_hidden_group():
    hidden = next(g for g in sg.find_groups(sg.trace(build("gemma"))) if g.kind == "hidden")
    names = dict(hidden.rms_norm_weights)
    assert len(names) == 5 and names["model.norm.weight"] == 1.0  # Gemma scales by (1 + w)


def test_unsupported_op_names_op_and_module():
    class Sorter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.proj(x).sort(dim=-1).values

    program = torch.export.export(Sorter(), (torch.randn(2, 4),))
    graph = sg.ShearGraph(program, dict(program.graph_signature.inputs_to_parameters), {}, "Sorter", "x")
    with pytest.raises(sg.UnsupportedOpError, match=r"aten\.sort.*module '(proj|<top level>)'.*register_rule"):
        sg.find_groups(graph)


def test_a_failing_rule_is_reported_with_op_and_module(monkeypatch):
    from shear_graph import rules

    def broken(prop, node):
        raise ValueError("sizes disagree")

    monkeypatch.setitem(rules.RULES, "aten.silu", broken)
    with pytest.raises(sg.ShearGraphError, match=r"rule for aten\.silu failed .* module 'model\.layers\.0\.mlp"):
        sg.find_groups(sg.trace(build("llama")))
