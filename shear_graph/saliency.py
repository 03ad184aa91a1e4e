"""Saliency of every channel of every removal group: a registry of criteria.

A criterion maps a model (and, if it needs them, calibration batches) to an
element-wise importance tensor per base parameter; a channel's saliency is the
sum of those elements over the channel's slices (higher means keep). A
criterion that scores a parameter along one dim only (FLAP and Wanda-sp score
the input columns of output projections, never the rows that feed a group)
keys its tensor by ``(param, dim)``: it then counts for the slices along that
dim alone, and the per-index scores are kept in :attr:`Saliency.index_scores`
for allocations that standardize them (:func:`shear_graph.plan.plan_adaptive`).
Add one with :func:`register_saliency`::

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
from .moments import collect_input_moments, input_dim
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
    # dL/dw accumulates in p.grad over the batches (in the parameter's dtype: float32
    # state the size of the model would double a bf16 model's memory), and the
    # float32 element scores are made one parameter at a time, on demand
    params = ctx.params
    saved = {n: (p.requires_grad, p.grad) for n, p in params.items()}
    try:
        for n, p in params.items():
            p.requires_grad_(True)
            p.grad = None
        for ids in ctx.progress("saliency: taylor"):
            _lm_loss(ctx.model, ids).backward()
        grads = {n: p.grad for n, p in params.items()}
    finally:
        for n, p in params.items():
            p.requires_grad_(saved[n][0])
            p.grad = saved[n][1]
    return _Lazy(params, lambda n, p: (p.detach().float() * grads[n].float()).abs() if grads[n] is not None
                 else torch.zeros_like(p, dtype=torch.float32))


class _Lazy(dict):
    """Element scores made when first read, one parameter at a time (see :func:`compute_saliency`)."""

    def __init__(self, params: dict, make):
        super().__init__()
        self._params, self._make = params, make

    def __contains__(self, name) -> bool:
        return name in self._params

    def __getitem__(self, name):
        return self._make(name, self._params[name])

    def __iter__(self):
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def keys(self):
        return self._params.keys()

    def items(self):
        return ((n, self[n]) for n in self._params)

    def values(self):
        return (self[n] for n in self._params)

    def get(self, name, default=None):
        return self[name] if name in self._params else default


@register_saliency("activation", source="Wanda (Sun et al. 2023) Eq. 1 per element, |W_ij| * ||X_j||_2 (X_j the "
                                        "j-th input feature over the calibration tokens), summed over every slice of "
                                        "the group (rows that feed it and columns it feeds); FLAP's Wanda-sp, which "
                                        "scores the output projection's columns only, is 'wanda_sp'")
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


def _input_columns(ctx: SaliencyContext, desc: str, column_score) -> dict:
    """``{(param, input dim): column_score(|weight| tensor, moments)}`` for every
    linear layer whose weight is a scored parameter; the element scores count
    only for the slices along the layer's input features."""
    by_id = {id(p): n for n, p in ctx.params.items()}
    modules, dims = {}, {}
    for module in ctx.model.modules():
        w = getattr(module, "weight", None)
        d = input_dim(module)
        if w is None or d is None or id(w) not in by_id or w.dim() != 2:
            continue
        modules[by_id[id(w)]], dims[by_id[id(w)]] = module, d
    moments = collect_input_moments(ctx.model, modules, ctx.batches, ctx.show, f"saliency: {desc}")
    out = {}
    for name, m in moments.items():
        w = ctx.params[name].detach().float()
        shape = [1, 1]
        shape[dims[name]] = -1
        out[(name, dims[name])] = column_score(w, m, shape)
    return out


@register_saliency("flap", source="FLAP (An et al., AAAI 2024, arXiv 2312.11983), fluctuation metric WIFV: "
                                  "S_j = Var_t(X_j) * ||W[:, j]||_2^2 over the input columns j of the output "
                                  "projection (down_proj for an FFN channel, o_proj summed over a head group's "
                                  "columns)")
def flap(ctx: SaliencyContext) -> dict:
    """FLAP's weighted input feature variance (WIFV).

    For every input feature ``j`` of a linear layer ``W`` [out, in]:
    ``S_j = 1/(N-1) sum_t (X_tj - mean_t X_tj)^2 * sum_i W_ij^2``, the
    fluctuation of ``X_j`` over the N calibration tokens weighted by the
    squared norm of the column it multiplies: the error of replacing ``X_j``
    by its mean (which bias compensation adds back). Only input columns are
    scored, so an FFN channel's saliency is its ``down_proj`` column's and a
    head group's the sum over its ``o_proj`` columns (FLAP, lib/prune.py,
    ``metrics['WIFV']``). The variance is the exact sample variance (FLAP's
    streaming update skips the first sample's spread).
    """
    return _input_columns(ctx, "flap", lambda w, m, shape: w.pow(2) * m.var.reshape(shape))


@register_saliency("wanda_sp", source="Wanda-sp as FLAP (An et al., AAAI 2024) builds its structured Wanda baseline "
                                      "(lib/prune.py, prune_wanda_sp): sum_i |W_ij| * ||X_j||_2 over the output "
                                      "projection's input columns j")
def wanda_sp(ctx: SaliencyContext) -> dict:
    """Wanda (Sun et al. 2023, Eq. 1) made structured as in FLAP's baseline.

    ``S_j = sum_i |W_ij| * ||X_j||_2`` over the input columns of the output
    projections only (``down_proj`` for FFN channels, ``o_proj`` summed over
    a head group's columns); FLAP takes the mean over ``i``, a constant factor
    for layers of one output width. The ``activation`` criterion differs: it
    also adds the rows of ``gate_proj``/``up_proj`` (``q/k/v_proj``) that feed
    the channel, scored with their own inputs.
    """
    return _input_columns(ctx, "wanda_sp", lambda w, m, shape: w.abs() * m.sq_norm.sqrt().reshape(shape))


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
    """Saliency per channel: ``scores[group id]`` is a float64 array [n_channels].

    ``index_scores[group id]``, for criteria that score one dim of a parameter
    (``flap``, ``wanda_sp``), is a float64 array [n_channels, width]: the score
    of each index a channel owns along those dims (a head group's ``o_proj``
    columns); its row sums are ``scores``.
    """

    method: str
    fingerprint: str
    scores: dict
    n_calib_tokens: int = 0
    split: dict = field(default_factory=dict)
    index_scores: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "fingerprint": self.fingerprint, "n_calib_tokens": self.n_calib_tokens,
                           "split": self.split, "scores": {k: v.tolist() for k, v in self.scores.items()},
                           "index_scores": {k: v.tolist() for k, v in self.index_scores.items()}})

    @classmethod
    def from_json(cls, text: str) -> "Saliency":
        d = json.loads(text)
        d["scores"] = {k: np.asarray(v, dtype=np.float64) for k, v in d["scores"].items()}
        d["index_scores"] = {k: np.asarray(v, dtype=np.float64) for k, v in d.get("index_scores", {}).items()}
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
        A key of :data:`SALIENCY`: ``magnitude``, ``taylor``, ``activation``, ``lora``,
        ``flap``, ``wanda_sp``.
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
    dims: dict = {}
    for g in groups:
        for sl in g.slices:
            dims.setdefault(sl.param, set()).add(sl.dim)

    def reduced(e: torch.Tensor, dim: int) -> np.ndarray:
        return (e.sum(dim=[d for d in range(e.dim()) if d != dim]) if e.dim() > 1 else e).double().cpu().numpy()

    # one element-score tensor alive at a time (a lazy criterion makes each when read): its per-dim sums
    per_index, one_dim = {}, set()
    for key in [k for k in elem if isinstance(k, tuple)]:  # scores of one dim of a parameter come first
        if key[1] in dims.get(key[0], ()):
            per_index[key] = reduced(elem[key], key[1])
            one_dim.add(key)
    for name in [k for k in elem if not isinstance(k, tuple)]:
        wanted = [d for d in dims.get(name, ()) if (name, d) not in per_index]
        if wanted:
            e = elem[name]
            for dim in wanted:
                per_index[name, dim] = reduced(e, dim)
            del e
    scores, index_scores = {}, {}
    for g in groups:
        total = np.zeros(g.n_channels)
        columns = []
        for sl in g.slices:
            values = per_index.get((sl.param, sl.dim))
            if values is None:
                continue
            per_channel = values[sl.indices]
            total += per_channel.sum(1)
            if (sl.param, sl.dim) in one_dim:
                columns.append(per_channel)
        scores[g.id] = total
        if columns:
            index_scores[g.id] = np.concatenate(columns, axis=1)
    n_tokens = int(blocks.numel()) if blocks is not None and crit.needs_data else 0
    return Saliency(method, fingerprint(model), scores, n_tokens, split or {}, index_scores)
