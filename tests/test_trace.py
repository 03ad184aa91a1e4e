import pytest
import torch
from transformers import LlamaConfig

import shear_graph as sg
from conftest import build, family_config


def test_trace_from_config_needs_no_weights():
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=100)
    g = sg.trace(cfg)
    params = [n for n in g.graph.nodes if n.name in g.param_names]
    assert params and all(n.meta["val"].device.type == "meta" for n in params)


def test_networkx_view_carries_op_module_shape_dtype_param():
    g = sg.trace(build("llama"))
    nxg = g.nx
    q = next(n for n, d in nxg.nodes(data=True) if d["param"] == "model.layers.0.self_attn.q_proj.weight")
    assert nxg.nodes[q]["shape"] == (64, 64) and nxg.nodes[q]["dtype"] == "torch.float32"
    users = [nxg.nodes[u] for u in nxg.successors(q)]
    assert any(u["op"] == "aten.linear" and u["module"] == "model.layers.0.self_attn.q_proj" for u in users)


def test_trace_peft_model():
    g = sg.trace(build("llama", lora=True))
    assert any(".lora_A." in n for n in g.param_names.values())


def test_model_whose_forward_returns_a_cache_traces():
    cfg = family_config("llama")
    cfg.use_cache = True
    model = build("llama", config=cfg)
    with torch.no_grad():
        assert model(input_ids=torch.ones(1, 3, dtype=torch.long)).past_key_values is not None
    assert sg.find_groups(sg.trace(model))


def test_trace_leaves_training_mode_alone():
    model = build("llama").train()
    sg.trace(model)
    assert model.training


def test_trace_rejects_non_models():
    with pytest.raises(TypeError, match="takes a transformers model or config"):
        sg.trace("meta-llama/Llama-2-7b")


def test_code_under_no_grad_and_autocast_is_traced_through(monkeypatch):
    """transformers before 5.2x runs its rotary embedding under ``torch.no_grad()``
    and ``autocast(enabled=False)``; torch.export wraps such code in higher-order
    ops that hid it from the rules (found on a GPU machine with transformers 5.17)."""
    from transformers.models.llama import modeling_llama

    plain = sg.find_groups(sg.trace(build("llama")))
    forward = modeling_llama.LlamaRotaryEmbedding.forward

    @torch.no_grad()
    def old_forward(self, x, position_ids):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return forward(self, x, position_ids)

    monkeypatch.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", old_forward)
    g = sg.trace(build("llama"))
    assert not any(n.op == "call_function" and getattr(n.target, "__name__", "").startswith("wrap_with")
                   for n in g.graph.nodes)

    def described(groups):
        return [(x.id, [(s.param, s.dim, s.indices.tolist()) for s in x.slices]) for x in groups]

    assert described(sg.find_groups(g)) == described(plain)
