"""Text sampled from the model itself as a training domain."""
from __future__ import annotations

import math
import re

import pytest
import torch

from conftest import build, char_tokenizer
from shear_graph import ShearGraphError, domain_from_model
from shear_graph.data import DataError, make_blocks
from shear_graph.self_text import EMPTY_BATCHES, _lengths


def _sample(model, tok, **kw):
    kw = {"n_tokens": 40, "max_new_tokens": 16, "batch_size": 3, "progress": False, **kw}
    return domain_from_model(model, tok, **kw)


def _drawn(domain) -> int:
    return int(re.search(r"(\d+) tokens", domain.source).group(1))


def test_same_seed_same_text_and_nothing_of_the_callers_changed():
    model, tok = build("llama").train(), char_tokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = _sample(model, tok, seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream goes on as if nothing ran
    second = _sample(model, tok, seed=5)
    other = _sample(model, tok, seed=6)
    assert first.texts == second.texts and first.texts != other.texts
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert _drawn(first) >= 40 and "seed 5" in first.source and first.name == "dense_samples"


def test_sampling_runs_in_eval_mode_from_the_bos_token(monkeypatch):
    model, tok = build("llama").train(), char_tokenizer()
    tok.bos_token = "a"
    seen = []
    generate = type(model).generate

    def spy(self, ids, **kw):
        seen.append((self.training, ids[:, 0].tolist()))
        return generate(self, ids, **kw)

    monkeypatch.setattr(type(model), "generate", spy)
    _sample(model, tok)
    assert seen and all(not training and set(starts) == {tok.bos_token_id} for training, starts in seen)
    assert model.training


def test_the_last_batch_draws_only_the_rows_still_needed(monkeypatch):
    model, tok = build("llama"), char_tokenizer()
    letter = tok.convert_tokens_to_ids("a")
    rows = []

    def full_rows(self, ids, max_new_tokens, **kw):
        rows.append(len(ids))
        return torch.cat([ids, torch.full((len(ids), max_new_tokens), letter)], dim=1)

    monkeypatch.setattr(type(model), "generate", full_rows)
    domain = _sample(model, tok, n_tokens=100, max_new_tokens=16, batch_size=4)
    assert rows == [4, 3]  # 64 tokens, then ceil(36 / 16) rows
    assert _drawn(domain) == 112 and domain.texts == [tok.decode([letter] * 16)] * 7


def test_a_copy_samples_in_another_dtype_and_the_model_stays_as_it_was():
    model, tok = build("llama"), char_tokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    domain = _sample(model, tok, dtype=torch.float64)
    assert "float64" in domain.source
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_documents_end_at_the_first_stop_token():
    new = torch.tensor([[5, 6, 2, 7], [5, 6, 7, 8], [2, 9, 9, 9], [4, 3, 9, 2]])
    assert _lengths(new, {2, 3}).tolist() == [2, 4, 0, 1]
    assert _lengths(new, set()).tolist() == [4, 4, 4, 4]


def test_the_generation_configs_eos_ids_end_documents():
    model, tok = build("llama"), char_tokenizer()
    stop = tok.convert_tokens_to_ids("e")
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    domain = _sample(model, tok, n_tokens=200)
    assert domain.texts and not any("e" in t for t in domain.texts)


def test_a_model_that_samples_only_empty_documents_is_refused(monkeypatch):
    model, tok = build("llama"), char_tokenizer()
    calls = []

    def eos_first(self, ids, **kw):
        calls.append(1)
        return torch.cat([ids, torch.full_like(ids, tok.eos_token_id)], dim=1)

    monkeypatch.setattr(type(model), "generate", eos_first)
    with pytest.raises(DataError, match="only empty documents"):
        _sample(model, tok)
    assert len(calls) == EMPTY_BATCHES


def test_the_samples_make_a_domain_for_the_pipeline():
    model, tok = build("llama"), char_tokenizer()
    domain = _sample(model, tok, n_tokens=200, max_new_tokens=64, batch_size=4)
    blocks = make_blocks(tok, [domain], block_len=8, n_eval=2, n_calib=4)
    assert blocks.eval["dense_samples"].shape == (2, 8) and blocks.calib["dense_samples"].shape == (4, 8)
    assert blocks.split.domains["dense_samples"]["source"].startswith("samples:")


@pytest.mark.parametrize("kw, words", [({"n_tokens": 0}, "n_tokens"), ({"batch_size": True}, "batch_size"),
                                       ({"max_new_tokens": 2.5}, "max_new_tokens"), ({"top_p": 1.5}, "top_p"),
                                       ({"temperature": 0}, "temperature"), ({"temperature": math.inf}, "temperature")])
def test_bad_settings_are_refused_by_name(kw, words):
    with pytest.raises(ShearGraphError, match=words):
        _sample(build("llama"), char_tokenizer(), **kw)


def test_a_tokenizer_with_no_start_token_is_refused():
    tok = char_tokenizer()
    tok.eos_token = None
    with pytest.raises(DataError, match="neither a BOS nor an EOS"):
        _sample(build("llama"), tok)


def test_a_tokenizer_of_another_model_is_refused():
    model = build("llama")
    model.resize_token_embeddings(50)
    with pytest.raises(DataError, match="do not belong together"):
        _sample(model, char_tokenizer())


def test_documents_begin_with_the_start_text_which_is_not_part_of_them(monkeypatch):
    model, tok = build("llama"), char_tokenizer()
    prefixes = []
    generate = type(model).generate

    def spy(self, ids, **kw):
        prefixes.append(ids.tolist())
        return generate(self, ids, **kw)

    monkeypatch.setattr(type(model), "generate", spy)
    domain = _sample(model, tok, start="ab")
    assert prefixes and all(row == tok("ab", add_special_tokens=False).input_ids for p in prefixes for row in p)
    assert "start 'ab'" in domain.source
    with pytest.raises(DataError, match="encodes to no tokens"):
        _sample(model, tok, start="")


@pytest.mark.parametrize("model, tok, error, words", [
    (torch.nn.Linear(2, 2), "tok", ShearGraphError, "causal language model; got Linear"),
    ("llama", None, DataError, "needs the model's tokenizer"),
])
def test_what_is_not_a_language_model_and_its_tokenizer_is_refused(model, tok, error, words):
    model = build("llama") if model == "llama" else model
    with pytest.raises(error, match=words):
        _sample(model, char_tokenizer() if tok == "tok" else tok)
