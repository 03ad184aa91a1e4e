"""Saliency of every channel of every removal group: a registry of criteria.

A criterion maps a model (and, if it needs them, calibration batches) to an
element-wise importance tensor per base parameter; a channel's saliency is the
sum of those elements over the channel's slices (higher means keep). Add one
with :func:`register_saliency`::

    @register_saliency("abs", needs_data=False)
    def abs_weight(ctx):
        return {name: p.detach().abs() for name, p in ctx.params.items()}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ShearGraphError
from .trace import fingerprint, is_adapter_param


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: Callable
    needs_data: bool
    source: str


SALIENCY: dict = {}


def register_saliency(name: str, needs_data: bool = True, source: str = ""):
    """Decorator registering ``fn(ctx: SaliencyContext) -> {param: scores}``,
    scores of the parameter's shape."""
    def deco(fn):
        SALIENCY[name] = Criterion(name, fn, needs_data, source)
        return fn
    return deco


@dataclass
class SaliencyContext:
    """What a criterion sees: the model, its base parameters by name (those the
    groups slice), calibration batches (int64 [batch, block_len] each, on the
    model's device) and how to iterate them (with a tqdm bar when ``show``)."""

    model: nn.Module
    params: dict
    batches: list
    show: bool = True

    def progress(self, desc: str):
        return tqdm(self.batches, desc=desc, unit="batch", leave=False, disable=not self.show)


def _lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


@register_saliency("magnitude", needs_data=False, source="squared weight: channel score = squared L2 norm")
def magnitude(ctx: SaliencyContext) -> dict:
    return {n: p.detach().float().pow(2) for n, p in ctx.params.items()}


@register_saliency("taylor", source="LLM-Pruner (Ma et al. 2023) Eq. 3-4, Element1: |w * dL/dw| summed over "
                                    "the group; dL/dw accumulated over the calibration set")
def taylor(ctx: SaliencyContext) -> dict:
    params = ctx.params
    saved = {n: (p.requires_grad, p.grad) for n, p in params.items()}
    grads = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    try:
        for n, p in params.items():
            p.requires_grad_(True)
            p.grad = None
        for ids in ctx.progress("saliency: taylor"):
            _lm_loss(ctx.model, ids).backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] += p.grad.float()
                    p.grad = None
    finally:
        for n, p in params.items():
            p.requires_grad_(saved[n][0])
            p.grad = saved[n][1]
    return {n: (p.detach().float() * grads[n]).abs() for n, p in params.items()}


@register_saliency("activation", source="Wanda (Sun et al. 2023) Eq. 1, structured as Wanda-sp: |W_ij| * ||X_j||_2, "
                                        "X_j the j-th input feature over the calibration tokens")
def activation(ctx: SaliencyContext) -> dict:
    by_id = {id(p): n for n, p in ctx.params.items()}
    sq_norms: dict = {}
    hooks = []
    for module in ctx.model.modules():
        w = getattr(module, "weight", None)
        if w is None or id(w) not in by_id or w.dim() != 2 or isinstance(module, nn.Embedding):
            continue
        name = by_id[id(w)]

        def hook(mod, args, _out, name=name):
            x = args[0].detach().float()
            sq_norms[name] = sq_norms.get(name, 0) + x.reshape(-1, x.shape[-1]).pow(2).sum(0)
        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for ids in ctx.progress("saliency: activation"):
                ctx.model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, p in ctx.params.items():
        w = p.detach().float().abs()
        if n in sq_norms:
            norm = sq_norms[n].sqrt()
            # nn.Linear keeps inputs along dim 1; transformers' Conv1D along dim 0
            w = w * (norm[None, :] if w.shape[1] == norm.numel() else norm[:, None])
        out[n] = w
    return out


@register_saliency("lora", needs_data=False, source="LoRAShear (Chen et al. 2023) Sec. 3.3 / OTO: the LoRA update "
                                                    "scaling * B A stands in for the gradient: |W * (s B A)|")
def lora(ctx: SaliencyContext) -> dict:
    deltas = {}
    for path, module in ctx.model.named_modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "base_layer")):
            continue
        for adapter in module.lora_A:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            delta = (b.float() @ a.float()) * module.scaling[adapter]
            if type(module.base_layer).__name__ == "Conv1D":
                delta = delta.T
            name = f"{path}.base_layer.weight"
            deltas[name] = deltas.get(name, 0) + delta.detach()
    if not deltas:
        raise ShearGraphError("saliency 'lora' needs a peft LoRA model (peft.get_peft_model); this model has no adaptor")
    return {n: (p.detach().float() * deltas[n]).abs() if n in deltas else torch.zeros_like(p, dtype=torch.float32)
            for n, p in ctx.params.items()}


@dataclass
class Saliency:
    """Saliency per channel: ``scores[group id]`` is a float64 array [n_channels]."""

    method: str
    fingerprint: str
    scores: dict
    n_calib_tokens: int = 0
    split: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "fingerprint": self.fingerprint, "n_calib_tokens": self.n_calib_tokens,
                           "split": self.split, "scores": {k: v.tolist() for k, v in self.scores.items()}})

    @classmethod
    def from_json(cls, text: str) -> "Saliency":
        d = json.loads(text)
        d["scores"] = {k: np.asarray(v, dtype=np.float64) for k, v in d["scores"].items()}
        return cls(**d)


def compute_saliency(model: nn.Module, groups: list, method: str = "taylor", blocks=None, batch_size: int = 4,
                     split: dict | None = None, progress: bool = True) -> Saliency:
    """Score every channel of every group.

    Parameters
    ----------
    model : nn.Module
        On the device and in the dtype to compute in (bf16 on GPU works); not
        changed (gradients and ``requires_grad`` are restored).
    groups : list of RemovalGroup
    method : str
        A key of :data:`SALIENCY`: ``magnitude``, ``taylor``, ``activation``, ``lora``.
    blocks : torch.Tensor, optional
        Calibration tokens, int64 [n_blocks, block_len]; needed unless the
        criterion says otherwise.
    batch_size : int
        Blocks per forward.
    progress : bool
        Show a tqdm bar over the calibration batches.

    Returns
    -------
    Saliency
        ``scores[g.id]``: float64 [g.n_channels], the sum of the criterion's
        element scores over each channel's slices of base parameters.

    Raises
    ------
    ShearGraphError
        Unknown method, or no calibration blocks for a criterion that needs them.
    """
    if method not in SALIENCY:
        raise ShearGraphError(f"unknown saliency '{method}'; registered: {', '.join(sorted(SALIENCY))}")
    crit = SALIENCY[method]
    if blocks is not None and not isinstance(blocks, torch.Tensor):
        raise TypeError(f"blocks must be an int64 tensor [n_blocks, block_len] (Blocks.all_calib()), "
                        f"got {type(blocks).__name__}")
    if crit.needs_data and (blocks is None or len(blocks) == 0):
        raise ShearGraphError(f"saliency '{method}' needs calibration blocks (shear_graph.data.make_blocks)")
    named = dict(model.named_parameters(remove_duplicate=False))
    wanted = {s.param for g in groups for s in g.slices if not is_adapter_param(s.param)}
    params, seen = {}, set()
    for n in sorted(wanted):  # a tied tensor is scored once, under its first name
        if id(named[n]) not in seen:
            seen.add(id(named[n]))
            params[n] = named[n]
    device = next(model.parameters()).device
    batches = [] if blocks is None else [b.to(device) for b in torch.split(blocks, batch_size)]
    was_training = model.training
    model.eval()
    try:
        elem = crit.fn(SaliencyContext(model, params, batches, progress))
    finally:
        model.train(was_training)
    scores = {}
    for g in groups:
        total = np.zeros(g.n_channels)
        for s in g.slices:
            if s.param not in elem:
                continue
            e = elem[s.param]
            per_index = e.sum(dim=[d for d in range(e.dim()) if d != s.dim]) if e.dim() > 1 else e
            total += per_index.double().cpu().numpy()[s.indices].sum(1)
        scores[g.id] = total
    n_tokens = int(blocks.numel()) if blocks is not None and crit.needs_data else 0
    return Saliency(method, fingerprint(model), scores, n_tokens, split or {})
