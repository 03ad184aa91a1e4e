"""Make a model's modules and config agree with its (pruned) parameter shapes.

Nothing here is hand-patched per architecture: shape attributes of the torch
building blocks are read back from their weights, attention modules take
their attributes from their own constructor run on a derived config, and the
config takes its widths from the pruned shapes.
"""
from __future__ import annotations

import copy
import re

import torch
from torch import nn

from .errors import PlanError

INTERMEDIATE_KEYS = ("intermediate_size", "ffn_dim", "n_inner")
_INDEX = re.compile(r"\.(\d+)(?:\.|$)")
# Layers whose shape attributes sync_shape_attributes reads back from their
# weights: sizes these modules hold are re-derived, not constants
# (prefixes of the qualified class names torch.export records).
SYNCED_MODULES = ("torch.nn.modules.linear.Linear", "torch.nn.modules.sparse.Embedding",
                  "torch.nn.modules.normalization.LayerNorm", "torch.nn.modules.normalization.RMSNorm",
                  "transformers.pytorch_utils.Conv1D", "peft.tuners.lora.layer.")


def sync_shape_attributes(model: nn.Module) -> None:
    """Set the size attributes of standard layers from their weight shapes
    (``nn.Linear``, ``nn.Embedding``, ``nn.LayerNorm``, ``nn.RMSNorm``, transformers ``Conv1D``,
    and peft LoRA wrappers, which read ``in_features``/``out_features``)."""
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = w.shape
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = w.shape
        elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and w is not None:
            m.normalized_shape = tuple(w.shape)
        elif type(m).__name__ == "Conv1D" and w is not None:
            m.nx, m.nf = w.shape
        base = getattr(m, "base_layer", None)
        if base is not None and hasattr(m, "in_features"):
            bw = base.weight
            m.out_features, m.in_features = (bw.shape if not type(base).__name__ == "Conv1D" else bw.shape[::-1])


def attention_config(config, num_heads: int, num_kv_heads: int, head_dim: int):
    """A copy of ``config`` describing one attention module after pruning.

    ``hidden_size`` is set to ``num_heads * head_dim``: models that derive the
    attention width from the hidden size (GPT-2, OPT, BERT) then build the
    right split sizes; models with an explicit ``head_dim`` only use it for
    ``nn.Linear`` shapes, which the weights override.
    """
    cfg = copy.deepcopy(config)
    cfg.num_attention_heads = num_heads
    cfg.head_dim = head_dim
    if hasattr(cfg, "num_key_value_heads") or num_kv_heads != num_heads:
        cfg.num_key_value_heads = num_kv_heads
    cfg.hidden_size = num_heads * head_dim
    return cfg


def _construct(cls, cfg, layer_idx):
    with torch.device("meta"):
        for args, kwargs in (((cfg,), {"layer_idx": layer_idx}), ((cfg, layer_idx), {}), ((cfg,), {})):
            try:
                return cls(*args, **kwargs)
            except TypeError:
                continue
    raise TypeError(f"cannot construct {cls.__name__} from a config")


def derive_module_attributes(module: nn.Module, cfg, layer_idx) -> None:
    """Give ``module`` the plain attributes (head counts, split sizes, scaling,
    config) its own constructor sets for ``cfg``; its parameters and children
    (LoRA wrappers included) stay as they are."""
    fresh = _construct(type(module), cfg, layer_idx)
    for key, value in vars(fresh).items():
        if key.startswith("_") or key == "training" or isinstance(value, (nn.Module, torch.Tensor)):
            continue
        setattr(module, key, value)


def layer_index(path: str):
    m = _INDEX.search(path)
    return int(m.group(1)) if m else None


def derive_attention(model: nn.Module, config, attention: dict) -> None:
    """Re-derive every attention module's attributes from ``attention``:
    ``{module path: {"num_heads", "num_kv_heads", "head_dim"}}``."""
    modules = dict(model.named_modules())
    for path, a in attention.items():
        cfg = attention_config(config, a["num_heads"], a["num_kv_heads"], a["head_dim"])
        try:
            derive_module_attributes(modules[path], cfg, layer_index(path))
        except Exception as e:  # any constructor error: the user needs the module, not the stack
            raise PlanError(
                f"attention module '{path}' ({type(modules[path]).__name__}) cannot be rebuilt for "
                f"{a['num_heads']} heads: {e}. Leave its attention_head group out of the plan (prune FFN and "
                "hidden groups only), or give the module a constructor taking (config, layer_idx)") from e


def intermediate_key(config, original: int):
    """The config key holding the FFN width (``intermediate_size``, ``ffn_dim`` or
    ``n_inner``), or None."""
    for key in INTERMEDIATE_KEYS:
        if getattr(config, key, None) == original:
            return key
    if hasattr(config, "n_inner") and config.n_inner is None and original == 4 * config.hidden_size:
        return "n_inner"
    return None
