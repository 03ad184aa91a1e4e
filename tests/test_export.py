"""sg.export: hf, decilm and gguf exports of tiny Llama models with per-layer widths."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig

import shear_graph as sg
from shear_graph.formats import decilm as decilm_format
from shear_graph.formats.gguf import rope_pairs
from shear_graph.formats.hf import padding_cost
from shear_graph.formats.layout import read_layout

from conftest import _COMMON, build, input_ids, logits, random_blocks

# 3 layers of 8 query / 4 KV heads (2 per group): each layer keeps a different number of head
# groups and FFN channels, so every per-layer width differs
KV_REMOVED = {0: [1], 1: [0, 2], 2: []}
FFN_REMOVED = {0: list(range(0, 96, 9)), 1: list(range(0, 96, 3)), 2: [5, 50]}


def per_layer_model(hidden_removed=(), compensate=False):
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=8, num_key_value_heads=4,
                         head_dim=8, **{**_COMMON, "num_hidden_layers": 3})
    model = build("llama", config=config)
    groups = sg.find_groups(sg.trace(model))
    chans = {}
    for g in groups:
        if g.kind == "attention_head":
            chans[g.id] = KV_REMOVED[g.layer]
        elif g.kind == "ffn":
            chans[g.id] = FFN_REMOVED[g.layer]
        elif g.kind == "hidden":
            chans[g.id] = list(hidden_removed)
    plan = sg.PrunePlan.from_channels(model, groups, chans)
    comp = sg.compensate_plan(model, plan, random_blocks(4, 8), progress=False) if compensate else None
    return sg.apply_plan(model, plan, compensate=comp)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """(the per-layer model, its save_pruned folder)"""
    model = per_layer_model()
    path = tmp_path_factory.mktemp("export") / "pruned"
    sg.save_pruned(model, path)
    return model, path


@pytest.fixture
def pruned_dir(pruned):
    return pruned[1]


@pytest.fixture
def pruned_model(pruned):
    return copy.deepcopy(pruned[0])


def test_the_fixture_has_per_layer_widths(pruned_dir):
    layers = json.loads((pruned_dir / "config.json").read_text())["shear_graph"]["layers"]
    assert [v["num_key_value_heads"] for v in layers.values()] == [3, 2, 4]
    assert [v["intermediate_size"] for v in layers.values()] == [85, 64, 94]


def test_hf_export_loads_with_stock_from_pretrained_in_a_fresh_process(pruned_dir, tmp_path):
    out = sg.export(pruned_dir, tmp_path / "hf", format="hf")
    ids = input_ids()
    torch.save(ids, tmp_path / "ids.pt")
    script = ("import sys, torch; from transformers import AutoModelForCausalLM; "
              "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval(); "
              "torch.save(m(input_ids=torch.load(sys.argv[2])).logits.detach(), sys.argv[3])")
    subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "l.pt")],
                   check=True, capture_output=True)
    config = json.loads((out / "config.json").read_text())
    assert "shear_graph" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (8, 4, 94)
    expected = logits(sg.load_pruned(pruned_dir), ids)
    torch.testing.assert_close(torch.load(tmp_path / "l.pt"), expected, atol=1e-5, rtol=0)


def test_hf_export_of_tied_embeddings_writes_the_matrix_once(pruned_model, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model = copy.deepcopy(pruned_model)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    out = sg.export(model, tmp_path / "hf", format="hf")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.embed_tokens.weight" in f.keys()
    ids = input_ids()
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out).eval(), ids), logits(model, ids),
                               atol=1e-5, rtol=0)


def test_hf_padding_cost_counts_the_zero_channels(pruned_dir):
    cost = padding_cost(read_layout(sg.load_pruned(pruned_dir)))
    # per layer 2*64*(q+kv)*8 attention + 3*64*ffn FFN; padded every layer to 8 q / 4 kv heads, 94 channels
    exact_layers = sum(2 * 64 * (2 * kv + kv) * 8 + 3 * 64 * f for kv, f in ((3, 85), (2, 64), (4, 94)))
    padded_layers = 3 * (2 * 64 * 12 * 8 + 3 * 64 * 94)
    assert cost["params_padded"] - cost["params_exact"] == padded_layers - exact_layers


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate(x, theta):
    """transformers' rotate-half rope over the last dim of ``x`` (batch, heads, seq, d)."""
    d, n = x.shape[-1], x.shape[-2]
    freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.outer(torch.arange(n, dtype=torch.float32), freq)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + half * sin


def decilm_reference_logits(folder, ids):
    """A forward over the written config and weights, shaped as vLLM's nemotron_nas.py builds the model:
    ``num_attention_heads`` query heads, ``num_attention_heads // n_heads_in_group`` KV heads and an FFN of
    ``int(2 * ffn_mult * hidden / 3)`` rounded up to 256 in each layer."""
    from safetensors.torch import load_file

    c = json.loads((folder / "config.json").read_text())
    w = load_file(str(folder / "model.safetensors"))
    h, heads, d, eps = c["hidden_size"], c["num_attention_heads"], c["head_dim"], c["rms_norm_eps"]
    x = w["model.embed_tokens.weight"][ids]
    b, n = ids.shape
    mask = torch.full((n, n), float("-inf")).triu(1)

    def lin(x, name):  # vLLM gives q/k/v/o biases with attention_bias, gate/up/down with mlp_bias
        flag = c["attention_bias"] if ".self_attn." in name else c["mlp_bias"]
        return x @ w[name + ".weight"].T + (w[name + ".bias"] if flag else 0)
    for i, block in enumerate(c["block_configs"]):
        kv = heads // block["attention"]["n_heads_in_group"]
        ffn = -(-int(2 * block["ffn"]["ffn_mult"] * h / 3) // 256) * 256
        p = f"model.layers.{i}."
        assert w[p + "self_attn.q_proj.weight"].shape == (heads * d, h)
        assert w[p + "self_attn.k_proj.weight"].shape == w[p + "self_attn.v_proj.weight"].shape == (kv * d, h)
        assert w[p + "mlp.gate_proj.weight"].shape == w[p + "mlp.up_proj.weight"].shape == (ffn, h)
        assert w[p + "mlp.down_proj.weight"].shape == (h, ffn)
        a = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = lin(a, p + "self_attn.q_proj").view(b, n, heads, d).transpose(1, 2)
        k = lin(a, p + "self_attn.k_proj").view(b, n, kv, d).transpose(1, 2)
        v = lin(a, p + "self_attn.v_proj").view(b, n, kv, d).transpose(1, 2)
        q, k = _rotate(q, c["rope_theta"]), _rotate(k, c["rope_theta"])
        k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5 + mask, -1) @ v
        x = x + lin(att.transpose(1, 2).reshape(b, n, heads * d), p + "self_attn.o_proj")
        m = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(F.silu(lin(m, p + "mlp.gate_proj")) * lin(m, p + "mlp.up_proj"), p + "mlp.down_proj")
    head = w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
    return _rms(x, w["model.norm.weight"], eps) @ head.T


def test_bias_compensated_model_exports_exactly_to_every_format(tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    model = per_layer_model(compensate=True)  # FLAP's biases on o_proj / down_proj, zero ones on q/k/v, gate/up
    assert model.model.layers[0].mlp.down_proj.bias.abs().max() > 0
    ids = input_ids()
    expected = logits(model, ids)
    hf = AutoModelForCausalLM.from_pretrained(sg.export(model, tmp_path / "hf", format="hf")).eval()
    torch.testing.assert_close(logits(hf, ids), expected, atol=1e-5, rtol=0)
    decilm = sg.export(model, tmp_path / "decilm", format="decilm")
    torch.testing.assert_close(decilm_reference_logits(decilm, ids), expected, atol=1e-5, rtol=0)
    tensors = {t.name: t for t in gguf.GGUFReader(sg.export(model, tmp_path / "m.gguf", format="gguf")).tensors}
    for i, layer in enumerate(model.model.layers):
        for name, lin in (("attn_output", layer.self_attn.o_proj), ("ffn_down", layer.mlp.down_proj)):
            np.testing.assert_array_equal(tensors[f"blk.{i}.{name}.bias"].data, lin.bias.detach().numpy())
    assert "blk.0.attn_q.bias" not in tensors  # zero, and llama.cpp's deci arch would expect it {n_embd} wide


def test_decilm_export_read_as_vllm_does_reproduces_the_logits(pruned_dir, tmp_path):
    out = sg.export(pruned_dir, tmp_path / "decilm", format="decilm")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    for block in config["block_configs"]:  # llama.cpp's converter reads these without defaults
        assert {"no_op", "replace_with_linear", "n_heads_in_group"} <= set(block["attention"])
        assert {"no_op", "replace_with_linear", "ffn_mult"} <= set(block["ffn"])
    assert [b["attention"]["n_heads_in_group"] for b in config["block_configs"]] == [2, 2, 2]
    ids = input_ids()
    torch.testing.assert_close(decilm_reference_logits(out, ids), logits(sg.load_pruned(pruned_dir), ids),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("width,hidden", [(1, 64), (94, 64), (256, 64), (257, 576), (1229, 576), (8191, 4096)])
def test_ffn_mult_round_trips_through_the_decilm_formula(width, hidden):
    mult = decilm_format.ffn_mult(width, hidden)
    assert decilm_format.intermediate_size(mult, hidden) == -(-width // 256) * 256


def test_gguf_export_has_every_per_layer_array_and_tensor_shape(pruned_dir, tmp_path):
    import gguf

    out = sg.export(pruned_dir, tmp_path / "m.gguf", format="gguf", dtype="f16")
    r = gguf.GGUFReader(out)
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["general.architecture"] == "deci"
    assert f["deci.attention.head_count"] == [6, 4, 8]
    assert f["deci.attention.head_count_kv"] == [3, 2, 4]
    assert f["deci.feed_forward_length"] == [85, 64, 94]
    assert (f["deci.attention.key_length"], f["deci.attention.value_length"], f["deci.embedding_length"]) == (8, 8, 64)
    assert f["deci.block_count"] == 3 and f["tokenizer.ggml.model"] == "none"
    tensors = {t.name: t for t in r.tensors}
    expected = {"token_embd.weight": (64, 128), "output_norm.weight": (64,), "output.weight": (64, 128)}
    for i, (q, kv, ffn) in enumerate(((6, 3, 85), (4, 2, 64), (8, 4, 94))):
        expected.update({f"blk.{i}.attn_norm.weight": (64,), f"blk.{i}.ffn_norm.weight": (64,),
                         f"blk.{i}.attn_q.weight": (64, q * 8), f"blk.{i}.attn_k.weight": (64, kv * 8),
                         f"blk.{i}.attn_v.weight": (64, kv * 8), f"blk.{i}.attn_output.weight": (q * 8, 64),
                         f"blk.{i}.ffn_gate.weight": (64, ffn), f"blk.{i}.ffn_up.weight": (64, ffn),
                         f"blk.{i}.ffn_down.weight": (ffn, 64)})
    assert {k: tuple(int(x) for x in t.shape) for k, t in tensors.items()} == expected  # GGUF order: (in, out)
    assert {t.tensor_type.name for k, t in tensors.items() if len(t.shape) == 2} == {"F16"}
    assert {t.tensor_type.name for k, t in tensors.items() if len(t.shape) == 1} == {"F32"}
    model = sg.load_pruned(pruned_dir)
    q = torch.from_numpy(np.array(tensors["blk.1.attn_q.weight"].data, dtype=np.float32))
    np.testing.assert_allclose(q, rope_pairs(model.model.layers[1].self_attn.q_proj.weight.detach(), 4).half().float())
    down = torch.from_numpy(np.array(tensors["blk.2.ffn_down.weight"].data, dtype=np.float32))
    np.testing.assert_allclose(down, model.model.layers[2].mlp.down_proj.weight.detach().half().float())


def test_rope_pairs_moves_rotate_half_pairs_next_to_each_other():
    w = torch.arange(8.0).repeat_interleave(2).view(8, 2)  # one head of 8 rows: pairs (0, 4), (1, 5), ...
    assert rope_pairs(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_gguf_export_embeds_a_byte_level_bpe_tokenizer(pruned_dir, tmp_path):
    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<eos>"]))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    out = sg.export(pruned_dir, tmp_path / "m.gguf", format="gguf", tokenizer=hf_tok)
    f = {k: v.contents() for k, v in gguf.GGUFReader(out).fields.items()}
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.eos_token_id"] == 0
    assert f["tokenizer.ggml.tokens"][: len(hf_tok)] == hf_tok.convert_ids_to_tokens(list(range(len(hf_tok))))
    assert len(f["tokenizer.ggml.tokens"]) == len(f["tokenizer.ggml.token_type"]) == 128
    assert f["tokenizer.ggml.token_type"][0] == int(gguf.TokenType.CONTROL)
    assert f["tokenizer.ggml.merges"] and all(len(m.split(" ")) == 2 for m in f["tokenizer.ggml.merges"])


def _error_and_nothing_written(tmp_path, *args, **kw):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(sg.ExportError) as e:
        sg.export(*args, **kw)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary left behind
    return str(e.value)


def test_unknown_format_and_dtype_are_refused(pruned_dir, tmp_path):
    assert "hf, decilm, gguf" in _error_and_nothing_written(tmp_path, pruned_dir, tmp_path / "x", format="onnx")
    assert "f32, f16, bf16" in _error_and_nothing_written(tmp_path, pruned_dir, tmp_path / "x", dtype="int8")


def test_existing_output_is_refused_and_kept(pruned_dir, tmp_path):
    (tmp_path / "m.gguf").write_text("mine")
    assert "exists" in _error_and_nothing_written(tmp_path, pruned_dir, tmp_path / "m.gguf", format="gguf")
    assert (tmp_path / "m.gguf").read_text() == "mine"


def test_hf_refuses_a_hidden_size_stock_llama_rejects(tmp_path):
    model = per_layer_model(hidden_removed=range(4))  # hidden 60, not a multiple of 8 query heads
    message = _error_and_nothing_written(tmp_path, model, tmp_path / "hf", format="hf")
    assert "hidden size 60" in message and "gguf" in message
    sg.export(model, tmp_path / "m.gguf", format="gguf")  # llama.cpp takes it: key_length is explicit


def test_a_refused_export_leaves_no_new_folders(tmp_path):
    model = per_layer_model(hidden_removed=range(4))
    _error_and_nothing_written(tmp_path, model, tmp_path / "new" / "deeper" / "hf", format="hf")


def test_output_under_a_file_or_inside_the_input_is_refused(pruned_dir, tmp_path):
    (tmp_path / "afile").write_text("mine")
    assert "is a file" in _error_and_nothing_written(tmp_path, pruned_dir, tmp_path / "afile" / "m.gguf",
                                                     format="gguf")
    inside = sorted(p.name for p in Path(pruned_dir).iterdir())
    with pytest.raises(sg.ExportError, match="inside the input model folder"):
        sg.export(pruned_dir, Path(pruned_dir) / "hf", format="hf")
    assert sorted(p.name for p in Path(pruned_dir).iterdir()) == inside


def test_gguf_without_a_tokenizer_warns(pruned_model, tmp_path):
    with pytest.warns(UserWarning, match="no vocabulary"):
        sg.export(pruned_model, tmp_path / "m.gguf", format="gguf")


def test_hf_refuses_a_layer_without_attention_heads(pruned_model, tmp_path):
    model = pruned_model
    attn = model.model.layers[1].self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        getattr(attn, name).weight = torch.nn.Parameter(torch.zeros(0, 64))
    attn.o_proj.weight = torch.nn.Parameter(torch.zeros(64, 0))
    assert "layer 1 has no attention heads" in _error_and_nothing_written(tmp_path, model, tmp_path / "hf")
    assert "layer 1" in _error_and_nothing_written(tmp_path, model, tmp_path / "d", format="decilm")


def test_decilm_refuses_a_group_size_it_cannot_express(pruned_model, tmp_path):
    model = pruned_model
    attn = model.model.layers[0].self_attn  # 6 query heads over 1 KV head: 6 does not divide 8
    for name in ("k_proj", "v_proj"):
        lin = getattr(attn, name)
        lin.weight = torch.nn.Parameter(lin.weight[:8].detach())
    message = _error_and_nothing_written(tmp_path, model, tmp_path / "d", format="decilm")
    assert "layer 0 has 6 query / 1 KV heads" in message


def test_a_model_that_is_not_llama_is_refused(tmp_path):
    assert "LlamaForCausalLM" in _error_and_nothing_written(tmp_path, build("gpt2"), tmp_path / "x")


def test_cli_export_writes_and_refuses_in_one_line(pruned_dir, tmp_path):
    from typer.testing import CliRunner

    from shear_graph.cli import app

    ok = CliRunner().invoke(app, ["export", str(pruned_dir), str(tmp_path / "m.gguf"), "--format", "gguf"])
    assert ok.exit_code == 0 and (tmp_path / "m.gguf").is_file()
    bad = CliRunner().invoke(app, ["export", str(pruned_dir), str(tmp_path / "m.gguf"), "--format", "gguf"])
    assert bad.exit_code == 2 and "exists" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_prune_writes_the_asked_exports_beside_model(pruned_model, tmp_path):
    from shear_graph.pipeline import EXPORTS, _write_exports

    notes = []
    (tmp_path / "model.gguf").write_bytes(b"a previous run's export")
    _write_exports(pruned_model, None, tmp_path, ("hf", "gguf"), notes)
    assert notes == [] and (tmp_path / "model-hf" / "config.json").is_file()
    import gguf

    assert gguf.GGUFReader(tmp_path / EXPORTS["gguf"]).fields["deci.feed_forward_length"].contents() == [85, 64, 94]
    _write_exports(build("gpt2"), None, tmp_path / "gpt2", ("hf",), notes)  # noted, not fatal: model/ is saved
    assert len(notes) == 1 and notes[0].startswith("hf export skipped")


@pytest.mark.parametrize("bad", [("onnx",), "hf", (1,)])
def test_prune_settings_refuse_unknown_exports(bad):
    from conftest import tiny_job_settings

    with pytest.raises(sg.ShearGraphError, match="export must be"):
        tiny_job_settings(export=bad).check()
