"""Export to GGUF, llama.cpp's ``deci`` arch, with exact per-layer widths.

llama.cpp's ``deci`` arch reads ``deci.attention.head_count``,
``deci.attention.head_count_kv`` and ``deci.feed_forward_length`` as arrays
(one entry per layer) and builds each layer with its own widths; the plain
``llama`` arch reads the arrays too but builds every layer with layer 0's, so
it cannot carry per-layer widths. ``key_length``/``value_length`` are written
explicitly (llama.cpp's default, hidden / heads of layer 0, is wrong once
heads or the hidden size are pruned).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .layout import ATTN, MLP, ExportError, LlamaLayout

ARCH = "deci"
# biases the deci arch loads, with the shapes it expects: q/k/v biases are
# declared {n_embd} there, so they fit only unpruned attention and are refused
LOADED_BIASES = {"o_proj", "down_proj", "gate_proj", "up_proj"}
REFERENCE_VOCAB_SIZE = 49152  # SmolLM2's tokenizer, embedded by the default model's GGUF


def _names():
    import gguf

    t = gguf.MODEL_TENSOR
    per_layer = {"q_proj": t.ATTN_Q, "k_proj": t.ATTN_K, "v_proj": t.ATTN_V, "o_proj": t.ATTN_OUT,
                 "gate_proj": t.FFN_GATE, "up_proj": t.FFN_UP, "down_proj": t.FFN_DOWN,
                 "input_layernorm": t.ATTN_NORM, "post_attention_layernorm": t.FFN_NORM}
    return {k: gguf.TENSOR_NAMES[v] for k, v in per_layer.items()}, {
        "model.embed_tokens.weight": gguf.TENSOR_NAMES[t.TOKEN_EMBD] + ".weight",
        "model.norm.weight": gguf.TENSOR_NAMES[t.OUTPUT_NORM] + ".weight",
        "lm_head.weight": gguf.TENSOR_NAMES[t.OUTPUT] + ".weight"}


def rope_pairs(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows from transformers' rotate-half rope (pairs ``i, i + d/2``) to
    llama.cpp's normal rope (pairs ``2i, 2i + 1``), head by head."""
    if n_heads == 0:
        return weight
    rest = weight.shape[1:]
    d = weight.shape[0] // n_heads
    return weight.reshape(n_heads, 2, d // 2, *rest).transpose(1, 2).reshape(weight.shape)


def tensors(layout: LlamaLayout) -> dict:
    """GGUF tensor name -> float32 tensor in transformers' ``(out, in)`` layout."""
    per_layer, top = _names()
    nonzero = [n for n in ("q_proj", "k_proj", "v_proj") for i in range(len(layout.layers))
               if layout.layer(i, n, "bias") is not None and layout.layer(i, n, "bias").abs().max() > 0]
    if nonzero:
        raise ExportError(f"the model has a non-zero {nonzero[0]} bias, which llama.cpp's deci arch cannot load "
                          "at pruned widths; export --format hf or decilm instead")
    out = {top[k]: layout.state[k] for k in ("model.embed_tokens.weight", "model.norm.weight")}
    if not layout.tied:
        out[top["lm_head.weight"]] = layout.state["lm_head.weight"]
    for i, w in enumerate(layout.layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[per_layer[norm].format(bid=i) + ".weight"] = layout.norm(i, norm)
        for name in ATTN + MLP:
            weight = layout.layer(i, name)
            if name == "q_proj":
                weight = rope_pairs(weight, w.num_heads)
            elif name == "k_proj":
                weight = rope_pairs(weight, w.num_kv_heads)
            out[per_layer[name].format(bid=i) + ".weight"] = weight
            bias = layout.layer(i, name, "bias")
            if bias is not None and name in LOADED_BIASES:
                out[per_layer[name].format(bid=i) + ".bias"] = bias
    return out


def write(layout: LlamaLayout, out: Path, dtype: torch.dtype, tokenizer=None) -> None:
    """Write the GGUF file ``out``: ``deci`` hyper-parameters with per-layer arrays,
    the tokenizer (:func:`tokenizer_fields`) and the weights (2-D ones in ``dtype``,
    1-D ones in f32)."""
    import gguf

    qtype = {torch.float32: gguf.GGMLQuantizationType.F32, torch.float16: gguf.GGMLQuantizationType.F16,
             torch.bfloat16: gguf.GGMLQuantizationType.BF16}[dtype]
    ftype = {torch.float32: gguf.LlamaFileType.ALL_F32, torch.float16: gguf.LlamaFileType.MOSTLY_F16,
             torch.bfloat16: gguf.LlamaFileType.MOSTLY_BF16}[dtype]
    fields = tokenizer_fields(tokenizer, layout.vocab_size)
    w = gguf.GGUFWriter(str(out), ARCH)
    try:
        w.add_name(Path(getattr(layout.config, "_name_or_path", "") or "pruned").name)
        w.add_file_type(int(ftype))
        w.add_block_count(len(layout.layers))
        w.add_context_length(getattr(layout.config, "max_position_embeddings", 2048))
        w.add_embedding_length(layout.hidden_size)
        w.add_feed_forward_length([x.intermediate_size for x in layout.layers])
        w.add_head_count([x.num_heads for x in layout.layers])
        w.add_head_count_kv([x.num_kv_heads for x in layout.layers])
        w.add_key_length(layout.head_dim)
        w.add_value_length(layout.head_dim)
        w.add_rope_dimension_count(layout.head_dim)
        w.add_rope_freq_base(layout.rope_theta)
        w.add_layer_norm_rms_eps(layout.rms_norm_eps)
        w.add_vocab_size(layout.vocab_size)
        for key, value, vtype, sub in fields:
            w.add_key_value(key, value, vtype, sub)
        for name, t in tensors(layout).items():
            a = t.contiguous().numpy()
            if a.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
                w.add_tensor(name, a.astype(np.float32))
            elif qtype == gguf.GGMLQuantizationType.F16:
                w.add_tensor(name, a.astype(np.float16))
            else:
                w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def tokenizer_fields(tokenizer, vocab_size: int) -> list:
    """The ``tokenizer.*`` GGUF fields for ``tokenizer``: ``[(key, value, type, sub_type)]``.

    - A tokenizer whose tokens equal those of the embedded SmolLM2 GGUF (the
      default model) gets that file's tokenizer fields verbatim: llama.cpp's own
      converter wrote them (``gpt2`` BPE, pre-tokenizer ``smollm``, merges,
      special ids, chat template).
    - Another byte-level BPE fast tokenizer gets ``gpt2`` fields built from its
      ``tokenizer.json`` with the ``default`` pre-tokenizer (llama.cpp names
      pre-tokenizers by a hash of their output, which only its converter computes).
    - No tokenizer: ``tokenizer.ggml.model = "none"`` (llama.cpp runs on token ids).

    Raises
    ------
    ExportError
        A tokenizer that is not byte-level BPE (llama.cpp's ``gpt2`` type), or whose
        size exceeds the embedding's rows.
    """
    import gguf

    v = gguf.GGUFValueType
    if tokenizer is None:
        return [(gguf.Keys.Tokenizer.MODEL, "none", v.STRING, None)]
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if len(tokens) > vocab_size:
        raise ExportError(f"the tokenizer has {len(tokens)} tokens but the model's embedding {vocab_size} rows")
    reference = _reference_fields(tokens)
    if reference is not None:
        return reference
    import json

    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ExportError(f"the tokenizer is {model.get('type') or type(tokenizer).__name__}, not byte-level BPE; "
                          "the gguf export embeds byte-level BPE (llama.cpp's gpt2 type) or no tokenizer "
                          "(pass tokenizer=None)")
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    added = {t["id"] for t in spec.get("added_tokens", [])}
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.USER_DEFINED if i in added
             else gguf.TokenType.UNUSED if i >= len(tokenizer) else gguf.TokenType.NORMAL for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    fields = [(gguf.Keys.Tokenizer.MODEL, "gpt2", v.STRING, None), (gguf.Keys.Tokenizer.PRE, "default", v.STRING, None),
              (gguf.Keys.Tokenizer.LIST, tokens, v.ARRAY, v.STRING),
              (gguf.Keys.Tokenizer.TOKEN_TYPE, [int(t) for t in types], v.ARRAY, v.INT32),
              (gguf.Keys.Tokenizer.MERGES, merges, v.ARRAY, v.STRING)]
    for key, attr in ((gguf.Keys.Tokenizer.BOS_ID, "bos_token_id"), (gguf.Keys.Tokenizer.EOS_ID, "eos_token_id"),
                      (gguf.Keys.Tokenizer.UNK_ID, "unk_token_id"), (gguf.Keys.Tokenizer.PAD_ID, "pad_token_id")):
        if getattr(tokenizer, attr, None) is not None:
            fields.append((key, int(getattr(tokenizer, attr)), v.UINT32, None))
    return fields


def _reference_fields(tokens: list) -> list | None:
    """The embedded SmolLM2 GGUF's tokenizer fields if its token list is ``tokens``."""
    import gguf

    from ..default_model import _gguf_path
    from ..errors import ShearGraphError

    if len(tokens) != REFERENCE_VOCAB_SIZE:  # reading the reference's 49k tokens takes seconds
        return None
    try:
        reader = gguf.GGUFReader(_gguf_path())
    except ShearGraphError:
        return None
    if reader.fields[gguf.Keys.Tokenizer.LIST].contents() != tokens:
        return None
    out = []
    for key, f in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = f.types[1] if len(f.types) > 1 else None
            out.append((key, f.contents(), f.types[0], sub))
    return out
