"""Knowledge distribution analysis: masking inside the analysis equals physical pruning."""
import math

import pytest
import torch

import shear_graph as sg
from conftest import build, char_tokenizer, random_blocks


@pytest.fixture(scope="module")
def analysed():
    model = build("llama")
    groups = sg.find_groups(sg.trace(model))
    sal = sg.compute_saliency(model, groups, "taylor", random_blocks(seed=5))
    blocks = random_blocks(seed=9)
    km = sg.analyze_knowledge(model, groups, sal, blocks, fraction=0.25, unprunable_ratio=0.4)
    return model, groups, sal, blocks, km


def test_cluster_loss_equals_apply_plan_loss(analysed):
    model, groups, _, blocks, km = analysed
    assert sorted(c.id for c in km.clusters) == ["attention_head.L0", "attention_head.L1", "ffn.L0", "ffn.L1", "hidden"]
    assert math.isclose(km.base_loss, sg.held_out_loss(model, blocks), rel_tol=1e-6)
    for c in km.clusters:
        pruned = sg.apply_plan(model, km.cluster_plan(model, groups, c.id))
        assert math.isclose(sg.held_out_loss(pruned, blocks), c.loss, rel_tol=0, abs_tol=1e-5), c.id


def test_masks_the_lowest_saliency_fraction(analysed):
    _, groups, sal, _, km = analysed
    ffn = next(c for c in km.clusters if c.id == "ffn.L1")
    assert len(ffn.removed["ffn.L1"]) == 24  # ceil(0.25 * 96)
    assert set(ffn.removed["ffn.L1"]) == set(sal.scores["ffn.L1"].argsort()[:24].tolist())


def test_unprunable_are_the_largest_deltas_and_constrain_plans(analysed):
    model, groups, _, _, km = analysed
    fixed = [c for c in km.clusters if c.unprunable]
    assert len(fixed) == 2
    assert min(c.loss_delta for c in fixed) >= max(c.loss_delta for c in km.clusters if not c.unprunable)
    plan = sg.plan_by_magnitude(model, groups, 0.1, exclude=km)
    assert not {r.group for r in plan.removals} & set(km.unprunable_groups)
    with pytest.raises(sg.PlanError, match="groups excluded as unprunable: at most"):
        sg.plan_by_magnitude(model, groups, 0.9, exclude=km)


def test_input_model_unchanged_and_json_round_trip(analysed, tmp_path):
    model, _, _, blocks, km = analysed
    assert math.isclose(sg.held_out_loss(model, blocks), km.base_loss, rel_tol=1e-7)
    km.save(tmp_path / "k.json")
    assert sg.KnowledgeMap.load(tmp_path / "k.json") == km


def test_bad_arguments(analysed):
    model, groups, sal, blocks, _ = analysed
    with pytest.raises(sg.ShearGraphError, match=r"fraction must be in \(0, 1\)"):
        sg.analyze_knowledge(model, groups, sal, blocks, fraction=1.0)
    with pytest.raises(sg.ShearGraphError, match="computed on another model"):
        sg.analyze_knowledge(build("mistral"), groups, sal, blocks)


def test_blocks_split_never_overlap_and_record_the_split():
    tok = char_tokenizer()
    domains = [sg.Domain("a", ["abcdefghij" * 40], "test:a"), sg.Domain("b", ["0123456789" * 30], "test:b")]
    blocks = sg.make_blocks(tok, domains, block_len=16, n_eval=5, n_calib=100, seed=1)
    for name, d in blocks.split.domains.items():
        assert not set(d["eval_blocks"]) & set(d["calib_blocks"])
        assert len(d["eval_blocks"]) == 5 and len(d["calib_blocks"]) == d["n_blocks"] - 5
        assert blocks.eval[name].shape == (5, 16)


def test_data_errors(tmp_path):
    tok = char_tokenizer()
    with pytest.raises(sg.DataError, match="domain 'short' has 10 tokens: at least 32 are needed"):
        sg.make_blocks(tok, [sg.Domain("short", ["0123456789"], "x")], block_len=16)
    with pytest.raises(sg.DataError, match="domain 'empty' has 0 tokens"):
        sg.make_blocks(tok, [sg.Domain("empty", [""], "x")], block_len=16)
    (tmp_path / "img.txt").write_bytes(b"\x89PNG\x00\x00\x01")
    with pytest.raises(sg.DataError, match="is not a text file"):
        sg.domain_from_file(tmp_path / "img.txt")
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(sg.DataError, match=r"d\.jsonl, line 2: expected a JSON object with a 'text' field"):
        sg.domain_from_file(tmp_path / "d.jsonl")
    with pytest.raises(sg.DataError, match="tokenizer has 97 tokens but the model's embedding has 16 rows"):
        from transformers import LlamaConfig, AutoModelForCausalLM
        small = AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=16, intermediate_size=8, num_hidden_layers=1,
                                                             num_attention_heads=2, vocab_size=16))
        sg.data.check_tokenizer(small, tok)


def test_domains_from_files_and_datasets(tmp_path):
    import datasets

    (tmp_path / "t.txt").write_text("hello world")
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert sg.domain_from_file(tmp_path / "t.txt").texts == ["hello world"]
    assert sg.domain_from_file(tmp_path / "d.jsonl", name="j").texts == ["a", "b"]
    ds = datasets.Dataset.from_dict({"text": ["x", "y"], "n": [1, 2]})
    assert sg.domain_from_dataset(ds, "hf").texts == ["x", "y"]
    with pytest.raises(sg.DataError, match="has no 'body' column"):
        sg.domain_from_dataset(ds, "hf", text_field="body")
    docs, code = sg.default_domains(max_chars=5000, general=False)
    assert docs.name == "python_docs" and len(docs.texts[0]) == 5000 and "def " in code.texts[0]


def test_prune_shares_give_cheap_clusters_more_of_the_cut():
    def cluster(cid, kind, delta, unprunable=False):
        return sg.Cluster(cid, kind, 0, 4, {cid: [0]}, 1.0 + delta, delta, unprunable)

    km = sg.KnowledgeMap("LlamaForCausalLM", "f", "taylor", 0.25, 0.2, 1.0, [
        cluster("ffn.L0", "ffn", 0.5, unprunable=True), cluster("ffn.L1", "ffn", 0.02),
        cluster("ffn.L2", "ffn", 0.01), cluster("ffn.L3", "ffn", -0.03), cluster("ffn.L4", "ffn", 0.5),
        cluster("attention_head.L1", "attention_head", 0.0), cluster("attention_head.L2", "attention_head", 0.0)])
    shares = km.prune_shares()
    assert "ffn.L0" not in shares  # unprunable: whole
    m = 0.015  # median of the prunable FFN deltas (0.02, 0.01, 0, 0.5)
    assert shares["ffn.L1"] == pytest.approx(2 * m / (0.02 + m))
    assert shares["ffn.L2"] == pytest.approx(2 * m / (0.01 + m))
    assert shares["ffn.L3"] == pytest.approx(2.0)  # masking lowered the loss: counts as 0
    assert shares["ffn.L4"] == 0.25  # 2m / (d + m) = 0.06, clipped: a noisy delta cannot freeze a layer
    assert shares["attention_head.L1"] == shares["attention_head.L2"] == 1.0  # median 0: uniform


def test_analysis_masks_in_place_and_restores_the_model_bit_for_bit_even_on_error(monkeypatch):
    """The analysis makes no copy of the model (memory: one model, issue 22) and a
    failure mid-way still leaves every weight as it was."""
    import copy

    import shear_graph.knowledge as knowledge

    model = build("llama")
    groups = sg.find_groups(sg.trace(model))
    sal = sg.compute_saliency(model, groups, "taylor", random_blocks(seed=5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: pytest.fail("the analysis copied the model"))
    sg.analyze_knowledge(model, groups, sal, random_blocks(seed=9), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    real, calls = knowledge.held_out_loss, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # inside the second cluster, its channels masked
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(knowledge, "held_out_loss", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        sg.analyze_knowledge(model, groups, sal, random_blocks(seed=9), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
