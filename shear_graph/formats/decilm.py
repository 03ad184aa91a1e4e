"""Export to DeciLM (``nemotron-nas``), the per-layer format of Llama-3.1-Nemotron-51B.

vLLM (``nemotron_nas.py``), SGLang and TensorRT-LLM build layer ``i`` from
``block_configs[i]``: ``num_attention_heads`` query heads in every layer,
``num_attention_heads // n_heads_in_group`` KV heads, and an FFN of
``int(2 * ffn_mult * hidden_size / 3)`` rounded up to a multiple of 256.
So query heads are padded to the widest layer, KV heads to
``num_attention_heads // group_size`` and FFN widths to the next multiple of
256, all with zero channels (exact).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .layout import ATTN, MLP, ExportError, LlamaLayout, pad_layer

FFN_MULTIPLE = 256
# the config classes ship with NVIDIA's checkpoints, as remote code
REMOTE_CODE = "nvidia/Llama-3_1-Nemotron-51B-Instruct"


def intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """The FFN width DeciLM readers derive from ``ffn_mult`` (vLLM, llama.cpp's converter)."""
    width = int(2 * ffn_mult * hidden_size / 3)
    return -(-width // FFN_MULTIPLE) * FFN_MULTIPLE


def ffn_mult(width: int, hidden_size: int) -> float:
    """The ``ffn_mult`` from which :func:`intermediate_size` gives ``width`` rounded up to 256."""
    target = -(-width // FFN_MULTIPLE) * FFN_MULTIPLE
    mult = round(1.5 * target / hidden_size, 6)
    if intermediate_size(mult, hidden_size) != target:
        mult = 1.5 * target / hidden_size
    if intermediate_size(mult, hidden_size) != target:  # never expected: float rounding of the formula
        raise ExportError(f"no ffn_mult gives an FFN width of {target} at hidden size {hidden_size}")
    return mult


def block_configs(layout: LlamaLayout) -> tuple:
    """``(num_attention_heads, [block_config per layer])``.

    Raises
    ------
    ExportError
        A layer without KV heads, or whose query heads per KV head do not divide
        the model's query-head count (its KV heads cannot be expressed).
    """
    heads = max(w.num_heads for w in layout.layers)
    blocks = []
    for i, w in enumerate(layout.layers):
        if not w.num_kv_heads or heads % w.group_size:
            raise ExportError(f"layer {i} has {w.num_heads} query / {w.num_kv_heads} KV heads: DeciLM gives every "
                              f"layer {heads} query heads and num_attention_heads // n_heads_in_group KV heads, "
                              "which cannot express it; export --format gguf instead")
        blocks.append({
            "attention": {"no_op": False, "replace_with_linear": False, "n_heads_in_group": w.group_size,
                          "sparsify": None},
            "ffn": {"no_op": False, "replace_with_linear": False, "ffn_mult": ffn_mult(w.intermediate_size,
                                                                                       layout.hidden_size),
                    "sparsify": None},
        })
    return heads, blocks


def config_dict(layout: LlamaLayout, dtype: torch.dtype) -> dict:
    """The ``config.json`` of the export, every field DeciLM readers use written explicitly."""
    heads, blocks = block_configs(layout)
    c = layout.config
    rope = getattr(c, "rope_parameters", None) or {"rope_theta": layout.rope_theta, "rope_type": "default"}
    return {
        "architectures": ["DeciLMForCausalLM"],
        "model_type": "nemotron-nas",
        "auto_map": {"AutoConfig": f"{REMOTE_CODE}--configuration_decilm.DeciLMConfig",
                     "AutoModelForCausalLM": f"{REMOTE_CODE}--modeling_decilm.DeciLMForCausalLM"},
        "block_configs": blocks,
        "hidden_size": layout.hidden_size,
        "num_attention_heads": heads,
        "head_dim": layout.head_dim,
        "num_hidden_layers": len(layout.layers),
        "intermediate_size": max(intermediate_size(b["ffn"]["ffn_mult"], layout.hidden_size) for b in blocks),
        "vocab_size": layout.vocab_size,
        "hidden_act": getattr(c, "hidden_act", "silu"),
        "rms_norm_eps": layout.rms_norm_eps,
        "rope_theta": layout.rope_theta,
        "rope_scaling": None,
        "rope_parameters": rope,
        "max_position_embeddings": getattr(c, "max_position_embeddings", 2048),
        "tie_word_embeddings": layout.tied,
        "attention_bias": bool(layout.biases & set(ATTN)),
        "mlp_bias": bool(layout.biases & set(MLP)),
        "bos_token_id": getattr(c, "bos_token_id", None),
        "eos_token_id": getattr(c, "eos_token_id", None),
        "pad_token_id": getattr(c, "pad_token_id", None),
        "torch_dtype": str(dtype).removeprefix("torch."),
        "initializer_range": getattr(c, "initializer_range", 0.02),
        "use_cache": True,
    }


def state_dict(layout: LlamaLayout, config: dict) -> dict:
    """The weights under their DeciLM (= Llama) names, each layer padded to its block config."""
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    sd = {k: v for k, v in layout.state.items() if ".self_attn." not in k and ".mlp." not in k
          and not (layout.tied and k == "lm_head.weight")}
    for i, block in enumerate(config["block_configs"]):
        width = intermediate_size(block["ffn"]["ffn_mult"], hidden)
        padded = pad_layer(layout, i, heads, heads // block["attention"]["n_heads_in_group"], width)
        for name, t in padded.items():
            part = "self_attn" if name in ATTN else "mlp"
            sd[f"model.layers.{i}.{part}.{name}.weight"] = t["weight"]
            if config["attention_bias"] if name in ATTN else config["mlp_bias"]:  # vLLM: one flag per block
                sd[f"model.layers.{i}.{part}.{name}.bias"] = t.get("bias", t["weight"].new_zeros(t["weight"].shape[0]))
    return sd


def write(layout: LlamaLayout, out: Path, dtype: torch.dtype, tokenizer=None) -> None:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer into the folder ``out``."""
    from safetensors.torch import save_file

    config = config_dict(layout, dtype)
    sd = state_dict(layout, config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def padded_params(config: dict) -> int:
    """Parameters of a DeciLM model with this config (embeddings and norms included)."""
    h, d, heads = config["hidden_size"], config["head_dim"], config["num_attention_heads"]
    total = config["vocab_size"] * h * (1 if config["tie_word_embeddings"] else 2) + h
    for b in config["block_configs"]:
        kv = heads // b["attention"]["n_heads_in_group"]
        total += 2 * h * (heads + kv) * d + 3 * h * intermediate_size(b["ffn"]["ffn_mult"], h) + 2 * h
    return total


__all__ = ["write", "intermediate_size", "ffn_mult", "block_configs", "config_dict", "padded_params"]
