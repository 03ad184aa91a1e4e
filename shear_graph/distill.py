"""Knowledge distillation from the dense model: the term that keeps a model being
pruned close to the dense model's next-token distributions.

Training a pruned model on the language-modelling loss alone fits it to the
training text; the dense model's full distribution at every position also
carries what it knows beyond that text (Hinton et al. 2015, arXiv 1503.02531;
Minitron, Muralidharan et al. 2024, arXiv 2407.14679, Sec. 3, for pruned LLMs).
"""
from __future__ import annotations

import copy
import numbers
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ShearGraphError


def check_distill(weight, name: str = "distill") -> None:
    """Raise :class:`ShearGraphError`, naming the setting ``name``, unless ``weight`` is a number in [0, 1]."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight <= 1:
        raise ShearGraphError(f"{name} must be a number from 0 (language-modelling loss only) to 1 (distillation "
                              f"only), got {weight!r}")


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL divergence KL(teacher || student) at temperature 1, in nats.

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        [batch, seq, vocab] (or any [..., vocab]) of the same shape; computed in
        at least float32, so bf16 logits do not lose the small terms. Memory: a few
        float32 tensors of [batch * seq, vocab] (about 100 MB each at 4 x 128
        tokens and a 49k vocabulary; not chunked).

    Returns
    -------
    torch.Tensor
        A scalar: sum over the vocabulary, mean over positions (Hinton et al. 2015,
        Sec. 2, at T = 1; the teacher's entropy included, so 0 means equal distributions).

    Raises
    ------
    ShearGraphError
        The shapes differ (e.g. a model whose vocabulary was changed).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ShearGraphError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                              f"{tuple(teacher_logits.shape)} differ; distillation needs the same tokenizer and "
                              "vocabulary")
    vocab = student_logits.shape[-1]
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    student = F.log_softmax(student_logits.to(dtype).reshape(-1, vocab), dim=-1)
    teacher = F.log_softmax(teacher_logits.to(dtype).reshape(-1, vocab), dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


@contextmanager
def frozen_teacher(model: nn.Module, device, dtype):
    """The dense ``model`` as a teacher, in eval mode.

    Parameters
    ----------
    model : nn.Module
        The dense model; never changed (its training flag is restored on exit).
    device, dtype
        Where the student trains and in what dtype.

    Yields
    ------
    nn.Module
        ``model`` itself when it already lives on ``device`` in ``dtype`` (no extra
        memory), else a copy moved there with ``requires_grad`` off.
    """
    param = next(model.parameters())
    device = torch.empty(0, device=device).device  # "cuda" and "cuda:0" name one place
    teacher = model if (param.device == device and param.dtype == dtype) else \
        copy.deepcopy(model).to(device=device, dtype=dtype).requires_grad_(False)
    was_training = model.training
    teacher.eval()
    try:
        yield teacher
    finally:
        model.train(was_training)


def teacher_logits(teacher: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The teacher's logits [batch, seq, vocab] for token ids int64 [batch, seq], without gradients."""
    with torch.no_grad():
        return teacher(input_ids=ids, use_cache=False).logits
