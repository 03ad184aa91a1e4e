"""Tiny seeded configs of real transformers classes, one per supported family."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM, BertConfig, BertForMaskedLM, GemmaConfig, GPT2Config, LlamaConfig,
    MistralConfig, OPTConfig, Phi3Config, Qwen2Config,
)

from shear_graph.data import Domain
from shear_graph.pipeline import PruneSettings

VOCAB = 128
# initializer_range 0.1 keeps activations well above the norm eps, so fp32
# comparisons at atol 1e-5 test the algebra, not rounding of near-zero values.
_COMMON = dict(vocab_size=VOCAB, num_hidden_layers=2, initializer_range=0.1)


def family_config(name: str):
    gqa = dict(hidden_size=64, intermediate_size=96, num_attention_heads=8, num_key_value_heads=2, **_COMMON)
    return {
        "llama": lambda: LlamaConfig(head_dim=8, **gqa),
        "mistral": lambda: MistralConfig(**gqa),
        "qwen2": lambda: Qwen2Config(**gqa),
        "phi3": lambda: Phi3Config(pad_token_id=0, **gqa),
        "gemma": lambda: GemmaConfig(head_dim=8, **gqa),
        "gpt2": lambda: GPT2Config(n_embd=64, n_layer=2, n_head=8, n_positions=64, vocab_size=VOCAB,
                                   initializer_range=0.1),
        "opt": lambda: OPTConfig(hidden_size=64, ffn_dim=96, num_attention_heads=8, max_position_embeddings=64,
                                 word_embed_proj_dim=64, init_std=0.1, **{k: v for k, v in _COMMON.items()
                                                                          if k != "initializer_range"}),
        "bert": lambda: BertConfig(hidden_size=64, intermediate_size=96, num_attention_heads=8,
                                   max_position_embeddings=64, **_COMMON),
    }[name]()


FAMILIES = ["llama", "mistral", "qwen2", "phi3", "gemma", "gpt2", "opt", "bert"]
RMSNORM_FAMILIES = {"llama", "mistral", "qwen2", "phi3", "gemma"}
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "opt": ["q_proj", "v_proj", "fc1", "fc2"],
    "bert": ["query", "value", "dense"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(name: str, lora: bool = False, seed: int = 0, config=None):
    """A tiny model of family ``name`` in eval mode; with ``lora`` a peft LoRA
    adaptor (r=4, non-zero B so its slices matter)."""
    torch.manual_seed(seed)
    config = config or family_config(name)
    model = BertForMaskedLM(config) if name == "bert" else AutoModelForCausalLM.from_config(config)
    model.eval()
    if lora:
        from peft import LoraConfig, get_peft_model

        targets = LORA_TARGETS.get(name, DEFAULT_LORA_TARGETS)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False)).eval()
    return model


def input_ids(seed: int = 1, batch: int = 2, seq: int = 9):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=g)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def random_channels(groups, kind: str, seed: int = 0, fraction: float = 1 / 3) -> dict:
    rng = np.random.default_rng(seed)
    return {
        g.id: sorted(rng.choice(g.n_channels, size=max(1, int(g.n_channels * fraction)), replace=False).tolist())
        for g in groups if g.kind == kind
    }


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def char_tokenizer():
    """A real fast tokenizer (one token per character, 100 ids) for tiny models."""
    import string

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(string.printable[:95])
    vocab = {"<unk>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


def random_blocks(n: int = 6, block_len: int = 16, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, block_len), generator=g)


def tiny_domains():
    """Two small real text domains: pydoc topics and textwrap.py."""
    from pydoc_data.topics import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = "\n\n".join(topics[k] for k in sorted(topics))[:20_000]
    code = (stdlib / "textwrap.py").read_text()[:20_000]
    return [Domain("docs", [docs], "pydoc"), Domain("code", [code], "textwrap.py")]


def tiny_job_settings(**kw):
    """Main-job settings that run in seconds on a tiny model."""
    base = dict(ratio=0.2, block_len=32, n_eval=2, n_probe=2, n_train=12, warmup_steps=1, n_periods=2,
                period_steps=2, final_steps=1, recovery_steps=3, update_every=2, batch_size=2, lora_rank=4,
                eval_tasks=(), eval_limit=None)
    base.update(kw)
    return PruneSettings(**base)


def pattern_blocks(n: int, block_len: int = 24, seed: int = 0) -> torch.Tensor:
    """Learnable sequences: each block counts up from a random start with a step of 1, 2 or 3 (mod vocab)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    step = torch.randint(1, 4, (n, 1), generator=g)
    return (start + step * torch.arange(block_len)) % VOCAB


@pytest.fixture(scope="module")
def trained():
    """A tiny llama that has learnt the pattern (full fine-tuning), so pruning it loses knowledge."""
    model = build("llama")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = pattern_blocks(256, seed=1)
    for i in range(150):
        ids = data[(i * 8) % 256:(i * 8) % 256 + 8]
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture
def svg_renderer():
    """Skip a test that needs diagrams drawn when no graphviz renderer is
    installed; where SHEAR_GRAPH_REQUIRE_SVG=1 (CI) fail instead, so a green CI
    proves the diagram tests ran."""
    from viz.diagram import INSTALL_HINT, can_render

    if not can_render():
        message = f"no graphviz renderer to draw diagrams ({INSTALL_HINT})"
        if os.environ.get("SHEAR_GRAPH_REQUIRE_SVG") == "1":
            pytest.fail(message + "; SHEAR_GRAPH_REQUIRE_SVG=1 asks for one")
        pytest.skip(message)
