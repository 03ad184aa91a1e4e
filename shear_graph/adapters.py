"""LoRA adaptors for training: which linear layers get one, and adding them."""
from __future__ import annotations

import warnings
from contextlib import contextmanager

from torch import nn

from .errors import ShearGraphError

# Above this many parameters training recomputes each decoder layer's activations in
# the backward pass (gradient checkpointing): at 1 x 2048 tokens a 7B Llama's stored
# activations drop from about 9 GB to under 1 GB for about a third more compute;
# below it the activations are small beside the two copies of the weights.
CHECKPOINTING_ABOVE = 2_000_000_000


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


def wants_checkpointing(model: nn.Module, enabled: bool | None) -> bool:
    """``enabled``, or when None whether ``model`` has more than
    :data:`CHECKPOINTING_ABOVE` parameters and transformers can checkpoint it."""
    if enabled is None:
        enabled = sum(p.numel() for p in model.parameters()) > CHECKPOINTING_ABOVE
    return bool(enabled) and bool(getattr(model, "supports_gradient_checkpointing", False))


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool | None = None):
    """Turn transformers' gradient checkpointing on for ``model`` (a transformers
    model, before or after peft wraps it) for the block, off again after.

    ``enabled`` None: on above :data:`CHECKPOINTING_ABOVE` parameters. Non-reentrant
    checkpointing, so frozen embeddings need no ``enable_input_require_grads``.
    Yields whether it is on.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    on = wants_checkpointing(base, enabled)
    if on:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield on
    finally:
        if on:
            base.gradient_checkpointing_disable()
