"""Tiny seeded configs of real transformers classes, one per supported family."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM, BertConfig, BertForMaskedLM, GemmaConfig, GPT2Config, LlamaConfig,
    MistralConfig, OPTConfig, Phi3Config, Qwen2Config,
)

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
