"""The per-layer widths of a pruned Llama-family model, read from its weights.

Every exporter reads a model through :class:`LlamaLayout`: the shapes come
from the parameters themselves (never from a config that could disagree with
them), and whatever a format cannot carry is refused here in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ExportError

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LayerWidths:
    """One decoder layer: query heads, KV heads and FFN intermediate size."""

    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    @property
    def group_size(self) -> int | None:
        """Query heads per KV head (None when the layer has no KV head)."""
        return self.num_heads // self.num_kv_heads if self.num_kv_heads else None


@dataclass
class LlamaLayout:
    """A Llama-family causal LM as plain tensors and per-layer widths.

    Attributes
    ----------
    config : transformers.PretrainedConfig
        The model's config (read for rope, vocabulary and special-token fields).
    hidden_size, head_dim, vocab_size : int
    rms_norm_eps : float
        The one epsilon every RMSNorm of the model uses.
    layers : list of LayerWidths
    state : dict
        Parameter name -> float32 CPU tensor, ``lm_head.weight`` included even when tied.
    tied : bool
        Whether ``lm_head`` shares the token embedding.
    """

    config: object
    hidden_size: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    layers: list
    state: dict
    tied: bool
    biases: set = field(default_factory=set)  # e.g. {"o_proj", "down_proj"}

    def layer(self, i: int, name: str, kind: str = "weight") -> torch.Tensor | None:
        """The tensor of layer ``i``'s projection ``name`` (``"q_proj"``, ``"down_proj"``, ...)."""
        part = "self_attn" if name in ATTN else "mlp"
        return self.state.get(f"model.layers.{i}.{part}.{name}.{kind}")

    def norm(self, i: int, name: str) -> torch.Tensor:
        return self.state[f"model.layers.{i}.{name}.weight"]

    @property
    def rope_theta(self) -> float:
        rope = getattr(self.config, "rope_parameters", None) or {}
        return float(rope.get("rope_theta", getattr(self.config, "rope_theta", 10000.0)))

    def n_params(self) -> int:
        """Parameters as the model counts them (a tied head once)."""
        return sum(t.numel() for k, t in self.state.items() if not (self.tied and k == "lm_head.weight"))


def read_layout(model: nn.Module) -> LlamaLayout:
    """Read ``model`` (a ``LlamaForCausalLM``, pruned or not) into a :class:`LlamaLayout`.

    Raises
    ------
    ExportError
        Not a Llama causal LM (the exporters write Llama-family formats); a rope
        scaling other than the default; RMSNorm epsilons that differ between norms
        (every format holds one); a peft model (merge it first).
    """
    if hasattr(model, "peft_config"):
        raise ExportError("export takes a merged model: call model.merge_and_unload() first")
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama" or not hasattr(model, "lm_head"):
        raise ExportError(f"export writes Llama-family formats; got a {type(model).__name__} "
                          f"(model_type {getattr(config, 'model_type', None)!r}); only LlamaForCausalLM models export")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"rope scaling {rope.get('rope_type')!r} is not exported yet; only the default rope is")
    eps = {float(m.variance_epsilon) for m in model.modules() if hasattr(m, "variance_epsilon")}
    if len(eps) != 1:
        raise ExportError(f"the model's RMSNorms use {len(eps)} different epsilons ({sorted(eps)[:3]}); the export "
                          "formats hold one: prune the hidden size of every norm alike")
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()
             if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    layers, biases = [], set()
    for i, block in enumerate(model.model.layers):
        attn = block.self_attn
        head_dim = int(attn.head_dim)
        widths = LayerWidths(attn.q_proj.weight.shape[0] // head_dim, attn.k_proj.weight.shape[0] // head_dim,
                             block.mlp.gate_proj.weight.shape[0])
        layers.append(widths)
        biases |= {n for n in ATTN if getattr(attn, n).bias is not None}
        biases |= {n for n in MLP if getattr(block.mlp, n).bias is not None}
    head_dims = {int(b.self_attn.head_dim) for b in model.model.layers}
    if len(head_dims) != 1:
        raise ExportError(f"layers have different head_dim {sorted(head_dims)}; the export formats hold one")
    embed = state["model.embed_tokens.weight"]
    return LlamaLayout(config=config, hidden_size=embed.shape[1], head_dim=head_dims.pop(), vocab_size=embed.shape[0],
                       rms_norm_eps=eps.pop(), layers=layers, state=state, tied=tied, biases=biases)


def pad_layer(layout: LlamaLayout, i: int, num_heads: int, num_kv_heads: int, intermediate_size: int) -> dict:
    """Layer ``i``'s projections padded with zero channels to the given widths.

    Zero rows of gate/up and zero columns of down add ``silu(0) * 0 = 0``; a padded
    query head has zero q rows and zero o columns, and a padded KV head zero k/v
    rows, so the padded layer computes exactly what the pruned one does. Real query
    head ``h`` keeps KV head ``h // group_size``: the padded layer must have the
    same query-per-KV group size.

    Returns
    -------
    dict
        ``{"q_proj": {"weight": ..., "bias": ...}, ...}``; a bias entry only for the
        projections that have one.

    Raises
    ------
    ExportError
        A width larger than the target, or a group size the target cannot keep.
    """
    w = layout.layers[i]
    d = layout.head_dim
    if w.num_heads > num_heads or w.num_kv_heads > num_kv_heads or w.intermediate_size > intermediate_size:
        raise ExportError(f"layer {i} is wider than the export target ({w} > {num_heads}/{num_kv_heads}/"
                          f"{intermediate_size})")
    if w.num_kv_heads and num_heads // num_kv_heads != w.group_size:
        raise ExportError(f"layer {i} has {w.group_size} query heads per KV head but the export has "
                          f"{num_heads // num_kv_heads}; the format cannot express it")
    rows = {"q_proj": num_heads * d, "k_proj": num_kv_heads * d, "v_proj": num_kv_heads * d,
            "gate_proj": intermediate_size, "up_proj": intermediate_size}
    cols = {"o_proj": num_heads * d, "down_proj": intermediate_size}
    out = {}
    for name in ATTN + MLP:
        weight, bias = layout.layer(i, name), layout.layer(i, name, "bias")
        if name in rows:
            weight = _pad(weight, 0, rows[name])
            bias = None if bias is None else _pad(bias, 0, rows[name])
        else:
            weight = _pad(weight, 1, cols[name])
        out[name] = {"weight": weight, **({"bias": bias} if bias is not None else {})}
    return out


def _pad(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if t.shape[dim] == size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)
