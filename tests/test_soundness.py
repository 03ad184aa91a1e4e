"""Engine soundness (issue 20): every offered group prunes exactly, or the
dims are frozen with a reason, or apply_plan refuses before anything changes.
One test per case seen outside the tested families."""
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig

import shear_graph as sg
from soundness_check import check_model, outputs, state, unchanged

V, H = 32, 20


class Program(nn.Module):
    """input_ids -> embedding -> ``body`` -> lm head; ``body`` is the case under test."""

    def __init__(self, body):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, H)
        self.body = body
        self.head = nn.Linear(H, V)

    def forward(self, input_ids):
        return self.head(self.body(self.embed(input_ids)))


IDS = {"input_ids": torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(0))}


class StepSlices(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(H // 2, H), nn.Linear(H // 2, H)

    def forward(self, h):
        return self.a(h[..., 1::2]) + self.b(h[..., ::2])


def test_slices_with_a_step_freeze_the_dim():
    model = Program(StepSlices())
    groups, outcome = check_model(model, IDS)
    assert all(o == "exact" for o in outcome.values())
    assert not any("embed.weight" in g.params for g in groups)  # the hidden dim is strided: no hidden group
    why = sg.explain(sg.trace(model, example_inputs=IDS), "embed.weight").dims[1].frozen
    assert any("step 2" in f["why"] and f["op"] == "aten.slice" for f in why)


class TorchRMSNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.RMSNorm(H)
        self.up, self.down = nn.Linear(H, 2 * H), nn.Linear(2 * H, H)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, h):
        return h + self.down(torch.relu(self.up(self.norm(h))))


def test_torch_rmsnorm_over_hidden_prunes_exactly():
    groups, outcome = check_model(Program(TorchRMSNorm()), IDS)
    hidden = next(g for g in groups if "embed.weight" in g.params)
    assert hidden.n_channels == H and outcome[hidden.id] == "exact"
    assert [w for w, _ in hidden.rms_norm_weights] == ["body.norm.weight"]


class LiteralSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(H, 10), nn.Linear(H, 10)
        self.c, self.d = nn.Linear(10, H), nn.Linear(10, H)

    def forward(self, h):
        x, y = torch.split(torch.cat([self.a(h), self.b(h)], -1), [10, 10], dim=-1)
        return self.c(torch.relu(x)) + self.d(torch.relu(y))


def test_split_with_literal_sizes_is_a_constant():
    model = Program(LiteralSplit())
    groups, outcome = check_model(model, IDS)
    assert not any(s.param == "body.a.weight" and s.dim == 0 for g in groups for s in g.slices)
    assert all(o == "exact" for o in outcome.values())
    why = sg.explain(sg.trace(model, example_inputs=IDS), "body.a.weight").dims[0].frozen
    assert why and "constant of the program" in why[0]["why"] and why[0]["module"] == "body"


def tiny_llama(**kw):
    cfg = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, vocab_size=V, initializer_range=0.1)
    cfg.update(kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(**cfg)).eval()


def test_single_query_head_does_not_free_head_dim():
    model = tiny_llama(num_attention_heads=1, num_key_value_heads=1, head_dim=16)
    groups, outcome = check_model(model, IDS)
    v = "model.layers.0.self_attn.v_proj.weight"
    assert all(g.kind != "ffn" or v not in g.params for g in groups), "head_dim rows offered as an FFN group"
    assert all(o == "exact" for o in outcome.values())
    assert sg.group_counts(groups)["ffn"] == {0: 48}


@pytest.mark.parametrize("kv", [2, 1], ids=["gqa", "mqa"])
def test_eager_attention_gives_head_groups(kv, tmp_path):
    model = tiny_llama(num_attention_heads=4, num_key_value_heads=kv, head_dim=8, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    groups, outcome = check_model(model, IDS)
    counts = sg.group_counts(groups)
    assert counts["attention_head"] == {0: 4 if kv == 1 else kv} and counts["ffn"] == {0: 48}
    assert all(o == "exact" for o in outcome.values())
    head = next(g for g in groups if g.kind == "attention_head")
    plan = sg.PrunePlan.from_channels(model, groups, {head.id: [0], "ffn.L0": [1, 2]})
    pruned = sg.apply_plan(model, plan)
    torch.testing.assert_close(outputs(pruned, IDS), outputs(sg.mask_plan(model, plan), IDS), atol=1e-5, rtol=0)
    if kv > 1:  # uniform GQA config: plain from_pretrained loads it
        pruned.save_pretrained(tmp_path)
        again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert again.config.num_key_value_heads == kv - 1 and again.config.intermediate_size == 46
        torch.testing.assert_close(outputs(again, IDS), outputs(pruned, IDS), atol=1e-5, rtol=0)


class FusedQKV(nn.Module):
    """qkv = Linear(H, 3H) -> [B, S, 3, heads, d] -> permute -> q, k, v by indexing or unbind."""

    def __init__(self, by):
        super().__init__()
        self.by = by
        self.qkv, self.o = nn.Linear(H, 3 * H), nn.Linear(H, H)

    def forward(self, h):
        b, s, _ = h.shape
        qkv = self.qkv(h).view(b, s, 3, 4, H // 4).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv[0], qkv[1], qkv[2]) if self.by == "index" else qkv.unbind(0)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return h + self.o(a.transpose(1, 2).reshape(b, s, H))


@pytest.mark.parametrize("by", ["index", "unbind"])
def test_fused_qkv_split_by_indexing_is_explained(by):
    model = Program(FusedQKV(by))
    groups, outcome = check_model(model, IDS)
    assert not any(g.kind == "attention_head" for g in groups)
    assert all(o == "exact" for o in outcome.values())
    text = str(sg.explain(sg.trace(model, example_inputs=IDS), "body.qkv.weight"))
    assert ("aten.select" if by == "index" else "aten.unbind") in text, text


class OwnAttention(nn.Module):
    """Attention whose constructor takes no config: the rebuild cannot re-derive it."""

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q, self.k, self.v = (nn.Linear(H, heads * head_dim) for _ in range(3))
        self.o = nn.Linear(heads * head_dim, H)

    def forward(self, h):
        b, s, _ = h.shape
        split = lambda x: x.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        a = torch.nn.functional.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
        return h + self.o(a.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
def test_unrebuildable_attention_is_refused_and_the_model_is_unchanged(inplace):
    model = Program(OwnAttention(4, 5))
    model.config = PretrainedConfig(hidden_size=H, num_attention_heads=4, vocab_size=V)
    groups = sg.find_groups(sg.trace(model, example_inputs=IDS))
    head = next(g for g in groups if g.kind == "attention_head")
    plan = sg.PrunePlan.from_channels(model, groups, {head.id: [1]})
    before, cfg, ref = state(model), model.config.to_dict(), outputs(model, IDS)
    with pytest.raises(sg.PlanError, match=r"attention module 'body' \(OwnAttention\) cannot be rebuilt"):
        sg.apply_plan(model, plan, inplace=inplace)
    assert unchanged(model, before) and model.config.to_dict() == cfg
    assert model.body.q.out_features == 20 and model.body.q.weight.shape == (20, H)
    torch.testing.assert_close(outputs(model, IDS), ref, atol=0, rtol=0)


def test_inplace_apply_plan_is_atomic_on_any_error(monkeypatch):
    import importlib

    prune = importlib.import_module("shear_graph.prune")  # sg.prune is the pipeline function
    model = tiny_llama(num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    groups = sg.find_groups(sg.trace(model))
    plan = sg.PrunePlan.from_channels(model, groups, {"ffn.L0": [0, 3], "hidden": [1], "attention_head.L0": [0]})
    before, ref = state(model), outputs(model, IDS)

    def broken(*a, **k):
        raise RuntimeError("late failure")

    monkeypatch.setattr(prune, "derive_attention", broken)
    with pytest.raises(RuntimeError, match="late failure"):
        sg.apply_plan(model, plan, inplace=True)
    assert unchanged(model, before) and model.config.hidden_size == 32 and not hasattr(model.config, "shear_graph")
    assert model.model.layers[0].mlp.up_proj.out_features == 48
    torch.testing.assert_close(outputs(model, IDS), ref, atol=0, rtol=0)


def test_models_outside_the_supported_set_get_named_errors():
    class NoIds(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 12), nn.Linear(12, 6)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    model = NoIds()
    with pytest.raises(sg.ShearGraphError, match=r"takes no input_ids .* example_inputs="):
        sg.trace(model)
    x = torch.randn(3, 6)
    groups, outcome = check_model(model, {"x": x})
    assert [(g.n_channels, outcome[g.id]) for g in groups] == [(12, "exact")]
    assert sg.group_counts(sg.find_groups(sg.trace(model, (x,)))) == sg.group_counts(groups)
    assert sg.group_counts(sg.find_groups(sg.trace(model, x=x))) == sg.group_counts(groups)
    with pytest.raises(sg.ShearGraphError, match="example_inputs must be"):
        sg.trace(model, example_inputs=3)
    with pytest.raises(sg.ShearGraphError, match="no parameters"):
        sg.trace(nn.ReLU())


def test_explain_names_frozen_dims_and_groups():
    model = tiny_llama(num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    g = sg.trace(model)
    e = sg.explain(g, "model.layers.0.self_attn.k_proj.weight")
    rows, cols = e.dims
    assert rows.groups == ["attention_head.L0"] and rows.removable == 16 and not rows.frozen
    assert cols.groups == ["hidden"] and cols.removable == 32
    emb = sg.explain(g, "model.embed_tokens.weight").dims[0]
    assert emb.removable == 0 and emb.frozen[0]["indices"] == V and emb.frozen[0]["op"] == "aten.embedding"
    assert "frozen by aten.embedding in module 'model.embed_tokens'" in str(sg.explain(g, "model.embed_tokens.weight"))
    with pytest.raises(sg.ShearGraphError, match="not a parameter"):
        sg.explain(g, "model.layers.0.self_attn.k_proj")
