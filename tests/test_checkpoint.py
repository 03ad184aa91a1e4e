"""Pruned models save, reload in a fresh process, and generate; the peers'
known failures (stale config, GQA, tied weights, odd widths) each a test."""
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import shear_graph as sg
from conftest import build, family_config, input_ids, logits, random_channels


def reload_in_fresh_process(path, ids, tmp_path, plain=False):
    """Logits of the saved model computed by a new Python process."""
    out = tmp_path / "logits.pt"
    torch.save(ids, tmp_path / "ids.pt")
    load = (f"AutoModelForCausalLM.from_pretrained({str(path)!r}).eval()" if plain
            else f"shear_graph.load_pruned({str(path)!r})")
    code = textwrap.dedent(f"""
        import torch, shear_graph
        from transformers import AutoModelForCausalLM
        model = {load}
        ids = torch.load({str(tmp_path / 'ids.pt')!r})
        with torch.no_grad():
            torch.save(model(input_ids=ids).logits, {str(out)!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return torch.load(out)


def prune_all_kinds(model, seed=0):
    groups = sg.find_groups(sg.trace(model))
    channels = {}
    for kind in ("attention_head", "ffn", "hidden"):
        channels.update(random_channels(groups, kind, seed=seed))
    return sg.apply_plan(model, sg.PrunePlan.from_channels(model, groups, channels))


@pytest.mark.parametrize("name", ["llama", "phi3", "gemma", "gpt2", "opt", "bert"])
def test_per_layer_widths_reload_in_a_fresh_process(name, tmp_path):
    model = build(name)
    groups = sg.find_groups(sg.trace(model))
    # layer 0 loses one KV head and 10 FFN channels, layer 1 none and 20
    heads = {g.id: [0] for g in groups if g.kind == "attention_head" and g.layer == 0}
    ffn = {g.id: list(range(10 * (g.layer + 1))) for g in groups if g.kind == "ffn"}
    hidden = {g.id: [3, 7, 11] for g in groups if g.kind == "hidden"}
    pruned = sg.apply_plan(model, sg.PrunePlan.from_channels(model, groups, {**heads, **ffn, **hidden}))
    layers = pruned.config.shear_graph["layers"]
    assert layers["0"]["intermediate_size"] != layers["1"]["intermediate_size"]
    assert layers["0"]["num_attention_heads"] < layers["1"]["num_attention_heads"]
    sg.save_pruned(pruned, tmp_path / "m")
    ids = input_ids()
    torch.testing.assert_close(reload_in_fresh_process(tmp_path / "m", ids, tmp_path), logits(pruned, ids),
                               atol=0, rtol=0)


def test_uniform_widths_load_with_plain_from_pretrained(tmp_path):
    model = build("llama")
    groups = sg.find_groups(sg.trace(model))
    plan = sg.PrunePlan.from_channels(model, groups, {"attention_head.L0": [1], "attention_head.L1": [0],
                                                      "ffn.L0": [1, 2], "ffn.L1": [3, 4], "hidden": [0, 5, 9, 10]})
    pruned = sg.apply_plan(model, plan)
    # KV heads pruned: the config must say so, and the q/KV ratio must hold
    assert (pruned.config.num_key_value_heads, pruned.config.num_attention_heads) == (1, 4)
    assert (pruned.config.hidden_size, pruned.config.head_dim, pruned.config.intermediate_size) == (60, 8, 94)
    sg.save_pruned(pruned, tmp_path / "m")
    ids = input_ids()
    torch.testing.assert_close(reload_in_fresh_process(tmp_path / "m", ids, tmp_path, plain=True),
                               logits(pruned, ids), atol=0, rtol=0)


def test_hidden_size_not_divisible_by_head_count(tmp_path):
    model = build("llama")
    groups = sg.find_groups(sg.trace(model))
    plan = sg.PrunePlan.from_channels(model, groups, {"hidden": [1, 2, 3]})  # 61 channels, 8 heads
    pruned = sg.apply_plan(model, plan)
    ids = input_ids()
    torch.testing.assert_close(logits(pruned, ids), logits(sg.mask_plan(model, plan), ids), atol=1e-5, rtol=0)
    assert pruned.config.hidden_size == 61
    sg.save_pruned(pruned, tmp_path / "m")
    torch.testing.assert_close(reload_in_fresh_process(tmp_path / "m", ids, tmp_path), logits(pruned, ids),
                               atol=0, rtol=0)


def test_tied_embeddings_stay_tied(tmp_path):
    cfg = family_config("llama")
    cfg.tie_word_embeddings = True
    pruned = prune_all_kinds(build("llama", config=cfg))
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    sg.save_pruned(pruned, tmp_path / "m")
    again = sg.load_pruned(tmp_path / "m")
    assert again.lm_head.weight is again.model.embed_tokens.weight
    assert again.model.embed_tokens.weight.shape[1] < 64


def test_generate_works_on_pruned_models_with_a_cache():
    pruned = prune_all_kinds(build("llama"))
    out = pruned.generate(input_ids()[:, :4], max_new_tokens=6, do_sample=False, use_cache=True)
    assert out.shape == (2, 10)
    nocache = pruned.generate(input_ids()[:, :4], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(out, nocache)


def test_gqa_24_query_8_kv_heads_prunes_exactly():
    cfg = LlamaConfig(hidden_size=96, intermediate_size=64, num_hidden_layers=2, num_attention_heads=24,
                      num_key_value_heads=8, head_dim=4, vocab_size=128, initializer_range=0.1)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    groups = sg.find_groups(sg.trace(model))
    plan = sg.PrunePlan.from_channels(model, groups, random_channels(groups, "attention_head", fraction=0.4))
    pruned = sg.apply_plan(model, plan)
    # transformers' LlamaConfig refuses hidden 96 with 15 heads, so the counts live per layer
    for i in range(2):
        layer = pruned.config.shear_graph["layers"][str(i)]
        assert (layer["num_attention_heads"], layer["num_key_value_heads"]) == (15, 5)
        attn = pruned.model.layers[i].self_attn
        assert attn.num_key_value_groups == 3 and attn.config.num_key_value_heads == 5
    ids = input_ids()
    torch.testing.assert_close(logits(pruned, ids), logits(sg.mask_plan(model, plan), ids), atol=1e-5, rtol=0)


def test_save_refuses_existing_folder_and_is_atomic(tmp_path):
    pruned = prune_all_kinds(build("llama"))
    sg.save_pruned(pruned, tmp_path / "m")
    with pytest.raises(sg.CheckpointError, match="exists; pass overwrite=True"):
        sg.save_pruned(pruned, tmp_path / "m")
    sg.save_pruned(pruned, tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left


def test_missing_or_corrupted_checkpoint(tmp_path):
    with pytest.raises(sg.CheckpointError, match="no config.json"):
        sg.load_pruned(tmp_path / "nowhere")
    pruned = prune_all_kinds(build("llama"))
    sg.save_pruned(pruned, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(sg.CheckpointError, match="corrupted or incomplete"):
        sg.load_pruned(tmp_path / "m")
    weights.unlink()
    with pytest.raises(sg.CheckpointError, match="no model.safetensors"):
        sg.load_pruned(tmp_path / "m")


def test_single_kv_head_attention_prunes_query_heads(tmp_path):
    """MQA (one KV head; also a GQA layer pruned down to one): the groups are
    single query heads, and the config keeps num_key_value_heads at 1."""
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=1, head_dim=8, vocab_size=128, initializer_range=0.1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    groups = sg.find_groups(sg.trace(model))
    heads = next(g for g in groups if g.id == "attention_head.L0")
    assert heads.n_channels == 8 and heads.attention.num_kv_heads == 1
    assert heads.attention.kv_heads_per_channel == 0
    plan = sg.PrunePlan.from_channels(model, groups, {"attention_head.L0": [1, 2, 3], "attention_head.L1": [0]})
    pruned = sg.apply_plan(model, plan)
    layers = pruned.config.shear_graph["layers"]
    assert [(layers[i]["num_attention_heads"], layers[i]["num_key_value_heads"]) for i in "01"] == [(5, 1), (7, 1)]
    ids = input_ids()
    torch.testing.assert_close(logits(pruned, ids), logits(sg.mask_plan(model, plan), ids), atol=1e-5, rtol=0)
    sg.save_pruned(pruned, tmp_path / "m")
    torch.testing.assert_close(reload_in_fresh_process(tmp_path / "m", ids, tmp_path), logits(pruned, ids),
                               atol=0, rtol=0)
    regrouped = sg.find_groups(sg.trace(pruned))
    assert [g.n_channels for g in regrouped if g.kind == "attention_head"] == [5, 7]


def test_saving_into_the_working_directory_is_refused(tmp_path, monkeypatch):
    """Bug: --out . --overwrite died with 'Device or resource busy' and left a folder behind."""
    pruned = prune_all_kinds(build("llama"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(sg.CheckpointError, match="working directory"):
        sg.save_pruned(pruned, ".", overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_saved_model_but_never_other_files(tmp_path):
    pruned = prune_all_kinds(build("llama"))
    sg.save_pruned(pruned, tmp_path / "m")
    sg.save_pruned(pruned, tmp_path / "m", overwrite=True)  # an earlier save is ours to replace
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(sg.CheckpointError, match=r"holds files this tool did not write \(notes.txt\)"):
        sg.save_pruned(pruned, tmp_path / "mine", overwrite=True)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    build("llama").save_pretrained(tmp_path / "theirs")  # a model shear-graph did not save: never replaced
    with pytest.raises(sg.CheckpointError, match="holds files this tool did not write"):
        sg.save_pruned(pruned, tmp_path / "theirs", overwrite=True)
    assert sg.count_params(type(build("llama")).from_pretrained(tmp_path / "theirs")) > sg.count_params(pruned)


def test_saved_files_are_readable_by_others(tmp_path):
    """Bug: the output folder was 0700 and its files 0600."""
    import os
    old = os.umask(0o022)
    try:
        sg.save_pruned(prune_all_kinds(build("llama")), tmp_path / "m")
        plan_path = tmp_path / "p.json"
        sg.PrunePlan.from_json(sg.PrunePlan("X", "f", []).to_json()).save(plan_path)
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "m" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert plan_path.stat().st_mode & 0o777 == 0o644
