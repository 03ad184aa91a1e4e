"""LoRA adaptors for training: which linear layers get one, and adding them."""
from __future__ import annotations

import warnings

from torch import nn

from .errors import ShearGraphError


def lora_targets(model: nn.Module) -> list:
    """Full names of the ``nn.Linear`` modules inside ``nn.ModuleList`` s (the
    decoder layers): attention and FFN projections, never ``lm_head`` or the
    embeddings.

    Raises
    ------
    ShearGraphError
        The model has no such linear layer (GPT-2's ``Conv1D`` is not
        ``nn.Linear``: pass ``target_modules``).
    """
    lists = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    names = sorted(n for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and any(n.startswith(f"{prefix}.") for prefix in lists))
    if not names:
        raise ShearGraphError(f"{type(model).__name__} has no nn.Linear inside its decoder layers: pass "
                              "target_modules (e.g. ['c_attn', 'c_proj', 'c_fc'] for GPT-2's Conv1D)")
    return names


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16, target_modules=None):
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
    targets = target_modules or lora_targets(model)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                        target_modules=targets if isinstance(targets, str) else list(targets))
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias; the user can do nothing about it
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
