"""Export to a stock transformers Llama: one width for every layer.

Per-layer widths are padded with zero channels to the widest layer
(:func:`~shear_graph.formats.layout.pad_layer`), which is exact; the padding
costs the parameters and FLOPs of the zero channels (:func:`padding_cost`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .layout import ATTN, MLP, ExportError, LlamaLayout, pad_layer

DROPPED_KEYS = ("shear_graph", "_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype")


def uniform_widths(layout: LlamaLayout) -> tuple:
    """``(num_heads, num_kv_heads, intermediate_size)`` every layer is padded to.

    Raises
    ------
    ExportError
        A layer without attention heads (stock Llama has attention in every
        layer), or layers with different query-per-KV group sizes.
    """
    empty = [i for i, w in enumerate(layout.layers) if w.num_heads == 0 or w.num_kv_heads == 0]
    if empty:
        raise ExportError(f"layer {empty[0]} has no attention heads left; stock transformers Llama needs attention "
                          "in every layer: export --format gguf (llama.cpp's deci arch) instead")
    groups = {w.group_size for w in layout.layers}
    if len(groups) != 1:
        raise ExportError(f"layers have different query heads per KV head {sorted(groups)}; stock Llama has one "
                          "group size: export --format gguf instead")
    kv = max(w.num_kv_heads for w in layout.layers)
    return kv * groups.pop(), kv, max(w.intermediate_size for w in layout.layers)


def hf_config(layout: LlamaLayout, num_heads: int, num_kv_heads: int, intermediate_size: int):
    """A plain ``LlamaConfig`` for the padded model (no ``shear_graph`` record).

    Raises
    ------
    ExportError
        transformers rejects the widths (e.g. a pruned hidden size that is not a
        multiple of the query heads).
    """
    from transformers import LlamaConfig

    kept = {k: v for k, v in layout.config.to_dict().items() if k not in DROPPED_KEYS}
    kept.update(hidden_size=layout.hidden_size, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                intermediate_size=intermediate_size, head_dim=layout.head_dim, rms_norm_eps=layout.rms_norm_eps,
                num_hidden_layers=len(layout.layers), vocab_size=layout.vocab_size, tie_word_embeddings=layout.tied,
                attention_bias=bool(layout.biases & set(ATTN)), mlp_bias=bool(layout.biases & set(MLP)))
    try:
        config = LlamaConfig(**kept)
        if hasattr(config, "validate"):
            config.validate()
    except Exception as e:  # the strict-dataclass error type varies across transformers versions
        why = (f"hidden size {layout.hidden_size} is not a multiple of its {num_heads} query heads"
               if layout.hidden_size % num_heads else str(e).splitlines()[0])
        raise ExportError(f"stock transformers Llama rejects this model: {why}; export --format gguf or decilm "
                          "instead, or prune the hidden size to a multiple of the query heads") from None
    config.architectures = ["LlamaForCausalLM"]
    return config


def state_dict(layout: LlamaLayout, num_heads: int, num_kv_heads: int, intermediate_size: int,
               attention_bias: bool, mlp_bias: bool) -> dict:
    """Every parameter of the padded model; zero biases where the config asks for a
    bias the pruned projection lacks (Llama's flags cover q/k/v/o and gate/up/down)."""
    sd = {k: v for k, v in layout.state.items() if ".self_attn." not in k and ".mlp." not in k}
    for i in range(len(layout.layers)):
        for name, t in pad_layer(layout, i, num_heads, num_kv_heads, intermediate_size).items():
            part = "self_attn" if name in ATTN else "mlp"
            prefix = f"model.layers.{i}.{part}.{name}"
            sd[f"{prefix}.weight"] = t["weight"]
            if attention_bias if name in ATTN else mlp_bias:
                sd[f"{prefix}.bias"] = t.get("bias", t["weight"].new_zeros(t["weight"].shape[0]))
    return sd


def padding_cost(layout: LlamaLayout) -> dict:
    """Parameters of the exact per-layer model and of the padded uniform one."""
    num_heads, num_kv_heads, ffn = uniform_widths(layout)
    d, h = layout.head_dim, layout.hidden_size
    padded = sum(layout.state[k].numel() for k in layout.state if ".self_attn." not in k and ".mlp." not in k
                 and not (layout.tied and k == "lm_head.weight"))
    padded += len(layout.layers) * (2 * h * (num_heads + num_kv_heads) * d + 3 * h * ffn)
    return {"params_exact": layout.n_params(), "params_padded": padded,
            "padding_share": round(padded / layout.n_params() - 1, 4)}


def write(layout: LlamaLayout, out: Path, dtype: torch.dtype, tokenizer=None) -> None:
    """Write the padded model (safetensors, ``config.json``) and tokenizer into the folder ``out``."""
    from transformers import LlamaForCausalLM
    from transformers.initialization import no_init_weights

    widths = uniform_widths(layout)
    config = hf_config(layout, *widths)
    with no_init_weights():
        model = LlamaForCausalLM(config)
    model.load_state_dict(state_dict(layout, *widths, config.attention_bias, config.mlp_bias), strict=True)
    if config.tie_word_embeddings:  # one tensor again, so the output layer is not written twice
        model.tie_weights()
    model.to(dtype).save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
