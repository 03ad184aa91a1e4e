"""LoRA adaptors for training: which linear layers get one, and adding them."""
from __future__ import annotations

import re

from torch import nn

from .errors import ShearGraphError

_IN_LAYER = re.compile(r"\.\d+\.")


def lora_targets(model: nn.Module) -> list:
    """Names (last path component) of the ``nn.Linear`` modules inside the
    numbered decoder layers: attention and FFN projections, never ``lm_head``
    or the embeddings.

    Raises
    ------
    ShearGraphError
        The model has no linear layer inside numbered layers.
    """
    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                    if isinstance(m, nn.Linear) and _IN_LAYER.search(n)})
    if not names:
        raise ShearGraphError(f"{type(model).__name__} has no nn.Linear inside numbered layers to attach LoRA to; "
                              "pass target_modules explicitly")
    return names


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, target_modules=None):
    """Wrap ``model`` (in place) with a peft LoRA adaptor: ``W0 + (alpha / rank) B A``,
    ``A`` [rank, in] Kaiming-initialised and ``B`` [out, rank] zero (Hu et al. 2021,
    Eq. 3), so the wrapped model starts equal to ``model``; dropout 0.

    Raises
    ------
    ShearGraphError
        ``rank`` below 1.
    """
    from peft import LoraConfig, get_peft_model

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ShearGraphError(f"LoRA rank must be a positive integer, got {rank!r}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                        target_modules=list(target_modules or lora_targets(model)))
    return get_peft_model(model, config)
